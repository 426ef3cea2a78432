"""The ceilings: a bare aiohttp app that reads the body and answers 200, optionally + 1 verify.

With ``--public-key`` the same app also verifies ``X-GHL-Signature`` once (Ed25519).

It runs with the relay's own server options (:func:`relay.server.start`: no access log, no
decompression), so the only difference from the relay is what happens to the body.
``python -m bench.ceiling --port P [--public-key PEM]``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import signal
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.app import WEBHOOK_PATH
from relay.server import start


def create_app(key: Ed25519PublicKey | None) -> web.Application:
    """The bare app; with ``key``, each body is verified once (401 if it does not verify)."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if key is not None:
            try:
                signature = base64.b64decode(request.headers.get("X-GHL-Signature", ""))
                key.verify(signature, body)
            except (InvalidSignature, binascii.Error, ValueError):
                return web.Response(status=401)
        return web.Response(status=200)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(WEBHOOK_PATH, receive)
    app.router.add_get("/readyz", ready)
    return app


def load_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SystemExit(f"{path}: not an Ed25519 public key")
    return key


async def serve(port: int, key: Ed25519PublicKey | None) -> None:
    """Serve on 127.0.0.1:port until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await start(create_app(key), "127.0.0.1", port, shutdown_timeout=2.0)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-key", type=Path, help="verify each body with this key")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, load_key(args.public_key) if args.public_key else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
