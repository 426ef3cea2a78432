"""Running the applications on real sockets: for ``relay serve`` and for the tests."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from relay import appkeys
from relay.app import create_app, create_metrics_app
from relay.settings import Settings

log = logging.getLogger(__name__)


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on host:port (0 picks a free port; see ``runner.addresses``)."""
    # auto_decompress=False: the body must be the bytes on the wire, which the signature
    # covers; encoded bodies are refused with 415 before they are read.
    runner = web.AppRunner(app, auto_decompress=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve(settings: Settings) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await start(app, settings.http_host, settings.http_port)
    metrics_runner = await start(
        create_metrics_app(app[appkeys.METRICS]), settings.http_host, settings.metrics_port
    )
    log.info("listening on %s, metrics on %s", runner.addresses, metrics_runner.addresses)
    try:
        await stop.wait()
    finally:
        await metrics_runner.cleanup()
        await runner.cleanup()
