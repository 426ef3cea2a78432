"""The in-process tier: the real application over a real socket, with no Kafka behind it.

:func:`create_app` is given a :class:`RecordingDelivery` in place of the producer and the
spool, and ``relay.server.start`` serves it on 127.0.0.1 exactly as ``relay serve`` does
(idle timeout, header limits, answers counted). Not aiohttp's ``TestServer``: it forces
``handler_cancellation=True``, which ``relay serve`` does not use, and a peer leaving
mid-body would then cancel the handler instead of showing as ``incomplete_body``.
HTTP edge cases run here in seconds, with no Java; every Kafka behaviour is proven by the
real-broker tier instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from relay import appkeys, server
from relay.app import create_app
from relay.delivery import Acked, Readiness
from relay.records import Record
from relay.settings import Settings
from tests.relayutil import RunningRelay


class RecordingDelivery:
    """A :class:`~relay.delivery.Delivery` that keeps what it was given and acks at once."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def deliver(self, record: Record, deadline: float) -> Acked:
        """Keep ``record``; its "offset" is its position in :attr:`records`."""
        self.records.append(record)
        return Acked(record.topic, 0, len(self.records) - 1)

    def readiness(self) -> Readiness:
        """Always ready."""
        return Readiness("ready")


def delivered(relay: RunningRelay) -> list[Record]:
    """What an in-process relay's delivery was given, in order."""
    delivery = relay.app[appkeys.DELIVERY]
    assert isinstance(delivery, RecordingDelivery)
    return delivery.records


@asynccontextmanager
async def serve_inprocess(settings: Settings) -> AsyncIterator[RunningRelay]:
    """Serve ``create_app(settings)`` with a recording delivery until the block ends."""
    app = create_app(settings, RecordingDelivery())
    runner = await server.start(app, settings.http_host, settings.http_port)
    try:
        host, port = runner.addresses[0][:2]
        yield RunningRelay(f"http://{host}:{port}", app, settings)
    finally:
        await runner.cleanup()
