"""Helpers for tests that run the relay on a real socket."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay import appkeys, server
from relay.app import create_metrics_app
from relay.settings import Settings
from relay.tools.deliveries import sign_ed25519
from relay.tools.samples import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = SAMPLES


def serve_env(
    bootstrap: str, public_keys: Sequence[Path], prefix: str, **variables: str
) -> dict[str, str]:
    """The environment of a ``relay serve`` on 127.0.0.1 (ports 0) against ``bootstrap``.

    ``variables`` (``RELAY_*`` names) are added, or replace these.
    """
    return {
        "PATH": os.environ.get("PATH", ""),
        "RELAY_HTTP_HOST": "127.0.0.1",
        "RELAY_HTTP_PORT": "0",
        "RELAY_METRICS_PORT": "0",
        "RELAY_PUBLIC_KEYS": ",".join(str(p) for p in public_keys),
        "RELAY_ROUTES_FILE": str(ROOT / "config" / "routes.toml"),
        "RELAY_TOPIC_PREFIX": prefix,
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        **variables,
    }


@dataclass(frozen=True)
class RunningRelay:
    """A relay served on 127.0.0.1 for one test."""

    url: str
    app: web.Application
    settings: Settings

    @property
    def webhook_url(self) -> str:
        """Where HoopAI would POST."""
        return f"{self.url}/webhooks/hoopai"

    def topic(self, family: str) -> str:
        """The full name of one of this relay's topics."""
        return f"{self.settings.topic_prefix}.{family}"


class StartRelay(Protocol):
    """The ``start_relay`` fixture: start a relay with settings overridden."""

    async def __call__(self, wait_connected: bool = True, **overrides: Any) -> RunningRelay:
        """Start a relay; wait until its producer has reached Kafka unless told not to."""


async def scrape(http: aiohttp.ClientSession, relay: RunningRelay) -> str:
    """The relay's /metrics text, served on a port of its own as ``relay serve`` does."""
    runner = await server.start(
        create_metrics_app(relay.app[appkeys.METRICS].registry), "127.0.0.1", 0
    )
    try:
        host, port = runner.addresses[0][:2]
        async with http.get(f"http://{host}:{port}/metrics") as response:
            assert response.status == 200
            return await response.text()
    finally:
        await runner.cleanup()


async def post(
    http: aiohttp.ClientSession, relay: RunningRelay, body: bytes, **headers: str
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    """POST a body with the given headers (underscores become dashes)."""
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    # BytesIO: aiohttp warns about large raw bytes bodies; the bytes sent are the same.
    async with http.post(relay.webhook_url, data=io.BytesIO(body), headers=sent) as response:
        return response.status, await response.json(), response


async def post_signed(
    http: aiohttp.ClientSession, relay: RunningRelay, key: Ed25519PrivateKey, body: bytes
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    """POST a body with a valid X-GHL-Signature."""
    return await post(http, relay, body, X_GHL_Signature=sign_ed25519(key, body))


def free_port() -> int:
    """A port nothing listens on now; the workers bind it together, so 0 would not do."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port() -> str:
    """``127.0.0.1:<port>`` where nothing listens: Kafka unreachable, at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"
