"""The ceilings: a bare aiohttp app that reads the body and answers 200, optionally + 1 verify.

With ``--public-key`` the same app also verifies ``X-GHL-Signature`` once (Ed25519), with
the relay's own :func:`relay.ingress.signatures.verify`.

It runs with the relay's own server options (:func:`relay.server.start`: no access log, no
decompression) on the relay's event loop (:func:`relay.server.run_event_loop`: uvloop), so
the only difference from the relay is what happens to the body.
``python -m bench.ceiling --port P [--public-key PEM]``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.app import WEBHOOK_PATH
from relay.ingress.signatures import KeySet, Rejected, load_public_keys, verify
from relay.server import run_event_loop, start


def create_app(keys: KeySet | None) -> web.Application:
    """The bare app; with ``keys``, each body is verified once (401 if it does not verify)."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if keys is not None:
            signature = request.headers.get("X-GHL-Signature")
            if isinstance(verify(body, signature, None, keys, accept_legacy_rsa=False), Rejected):
                return web.Response(status=401)
        return web.Response(status=200)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(WEBHOOK_PATH, receive)
    app.router.add_get("/readyz", ready)
    return app


def load_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (for the FastAPI peer, which uses cryptography)."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SystemExit(f"{path}: not an Ed25519 public key")
    return key


async def serve(port: int, keys: KeySet | None) -> None:
    """Serve on 127.0.0.1:port until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await start(create_app(keys), "127.0.0.1", port, shutdown_timeout=2.0)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-key", type=Path, help="verify each body with this key")
    args = parser.parse_args(argv)
    keys = load_public_keys([args.public_key]) if args.public_key else None
    run_event_loop(serve(args.port, keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
