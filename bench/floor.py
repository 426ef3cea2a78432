"""``python -m bench.floor``: ``relay serve`` with the least a Kafka client can do per record.

The benchmark's "relay with the floor client" target (issue 21). The relay's settings, app,
handler, metrics and server, with :class:`Floor` in the place of aiokafka: each record is
one produce request (``acks=all``), written from the handler's own turn on one connection,
and its answer read by a protocol callback that wakes the handler. No sender task, no
accumulator, no metadata, no retries, no idempotence, no timeout: a lower bound on what a
produce round trip per record costs the relay's process (the batch encoding, a write, a
read, the wake-ups), which no client, aiokafka or another, can go below without putting
several records in one request.

Bench-only, and only against one broker (it leads every partition): the first of
``RELAY_KAFKA_BOOTSTRAP_SERVERS``, in plaintext. The record goes to partition 0 of its
topic, whatever its key; the topics must exist. No other Kafka setting reaches it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
from collections.abc import Sequence
from typing import Final, cast

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from relay import logs
from relay.delivery import Acked, Readiness
from relay.errors import PublishError
from relay.kafka.producer import ProduceV7, _decode_answer, _Header
from relay.records import Record
from relay.server import run_event_loop, serve
from relay.settings import Settings

_I32: Final = struct.Struct(">i")
_ANSWER_HEADER: Final = struct.Struct(">ii")  # frame length, correlation id
_ACKS_ALL: Final = -1
_TIMEOUT_MS: Final = 30_000
_CLIENT_ID: Final = "bench-floor"


class _Answers(asyncio.Protocol):
    """The connection: writes framed requests, resolves each answer's future by its id."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's; this one is a TCP transport
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            (length,) = _I32.unpack_from(self._buffer, 0)
            if len(self._buffer) < 4 + length:
                return
            _, correlation_id = _ANSWER_HEADER.unpack_from(self._buffer, 0)
            body = bytes(self._buffer[8 : 4 + length])
            del self._buffer[: 4 + length]
            waiter = self.waiting.pop(correlation_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(PublishError(f"broker connection lost: {exc}"))
        self.waiting.clear()


class Floor:
    """A :class:`relay.delivery.Delivery` that produces each record as its own request."""

    def __init__(self, bootstrap: str) -> None:
        self._host, _, port = bootstrap.rpartition(":")
        self._port = int(port)
        self._ids = itertools.count()
        self._answers = _Answers()

    async def connect(self) -> None:
        """Open the one connection to the broker."""
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self._answers, self._host, self._port)

    def close(self) -> None:
        """Close the connection; a record still waiting fails with PublishError."""
        if self._answers.transport is not None:
            self._answers.transport.close()

    async def deliver(self, record: Record, deadline: float) -> Acked:
        """Produce ``record`` to partition 0 of its topic; its offset once the broker acks."""
        batch = DefaultRecordBatchBuilder(
            magic=2,
            compression_type=0,
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=-1,
            batch_size=1 << 20,
        )
        batch.append(
            0, timestamp=None, key=record.key, value=record.value, headers=list(record.headers)
        )
        request = ProduceV7(
            transactional_id=None,
            required_acks=_ACKS_ALL,
            timeout=_TIMEOUT_MS,
            topics=[(record.topic, [(0, bytes(batch.build()))])],
        )
        correlation_id = next(self._ids) & 0x7FFFFFFF
        message = _Header(correlation_id, _CLIENT_ID).encode() + request.encode()
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._answers.waiting[correlation_id] = answer
        transport = self._answers.transport
        if transport is None or transport.is_closing():
            raise PublishError("not connected")
        transport.write(_I32.pack(len(message)) + message)
        topics, _ = _decode_answer(await answer)
        _, partitions = topics[0]
        _, error, offset, _, _ = partitions[0]
        if error:
            raise PublishError(f"produce error code {error}")
        return Acked(record.topic, 0, offset)

    def readiness(self) -> Readiness:
        """Ready while the connection is open."""
        transport = self._answers.transport
        if transport is None or transport.is_closing():
            return Readiness("unavailable", ("not connected",))
        return Readiness("ready")


async def _serve(settings: Settings) -> None:
    floor = Floor(settings.kafka_bootstrap_servers[0])
    await floor.connect()
    try:
        await serve(settings, delivery=floor)
    finally:
        floor.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve with the ``RELAY_*`` settings of the environment, records to the floor client."""
    settings = Settings.load(os.environ)
    logs.configure(settings.log_level)
    run_event_loop(_serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
