"""``python -m bench.floor``: ``relay serve`` with the least a Kafka client can do per record.

The benchmark's "relay with the floor client" target (issue 21): the relay's settings, app,
handler, metrics and server, with :class:`Floor` in the place of aiokafka. It batches as
the relay's producer does with no linger: one produce request in flight on its one
connection (``acks=all``), written from the turn of the record that found none in flight;
the records that arrive meanwhile go together in the next request, written from the turn
the answer is read in. Around that, nothing: no sender task, no accumulator, no metadata,
no retries, no idempotence, no timeout, a future per record. What the relay costs on it
is a bound on what any change to its Kafka client can reach at the same batching: the
batch encoding, a write and a read per request, and the wake-ups.

Bench-only, and only against one broker (it leads every partition): the first of
``RELAY_KAFKA_BOOTSTRAP_SERVERS``, in plaintext. The record goes to partition 0 of its
topic, whatever its key; the topics must exist and take writes (:func:`create_topics`). No
other Kafka setting reaches it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
from collections.abc import Callable, Sequence
from typing import Final, cast

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from relay import logs
from relay.delivery import Acked, Readiness
from relay.errors import PublishError
from relay.kafka.producer import ProduceResponseV7, ProduceV7
from relay.kafka.topics import ensure_topics
from relay.records import Record
from relay.server import run_event_loop, serve
from relay.settings import Settings

_I32: Final = struct.Struct(">i")
_ACKS_ALL: Final = -1
_TIMEOUT_MS: Final = 30_000
_CLIENT_ID: Final = "bench-floor"
_BATCH_BYTES: Final = 1 << 20

#: the records of one request, by topic, each with its waiting future, in offset order
_Sent = dict[str, list[tuple[Record, "asyncio.Future[Acked]"]]]


async def create_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Create those of ``topics`` that do not exist, as the relay would; wait for partition 0.

    The broker's default partitions and replication, as ``relay serve`` creates them. The
    floor client does not retry, and a partition just created answers "not the leader"
    until its broker has caught up. aiokafka's producer retries that: it writes one record,
    ``warm``, to partition 0 of each topic.
    """
    await ensure_topics({"bootstrap_servers": bootstrap}, topics, None, None)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic in topics:
            await producer.send_and_wait(topic, b"warm", partition=0)
    finally:
        await producer.stop()


class _Connection(asyncio.Protocol):
    """The socket: each answer's body (after its correlation id) to ``answered``."""

    def __init__(
        self, answered: Callable[[bytes], None], lost: Callable[[Exception | None], None]
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self._answered, self._lost = answered, lost
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
            body = bytes(self._buffer[8 : 4 + length])  # after the length and correlation id
            del self._buffer[: 4 + length]
            self._answered(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)


class Floor:
    """A :class:`relay.delivery.Delivery` with one produce request in flight, nothing else."""

    def __init__(self, bootstrap: str) -> None:
        self._host, _, port = bootstrap.rpartition(":")
        self._port = int(port)
        self._ids = itertools.count()
        self._connection = _Connection(self._answered, self._lost)
        self._waiting: list[tuple[Record, asyncio.Future[Acked]]] = []
        self._sent: _Sent | None = None

    async def connect(self) -> None:
        """Open the one connection to the broker."""
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self._connection, self._host, self._port)

    def close(self) -> None:
        """Close the connection; a record still waiting fails with PublishError."""
        if self._connection.transport is not None:
            self._connection.transport.close()

    async def deliver(self, record: Record, deadline: float) -> Acked:
        """Produce ``record`` to partition 0 of its topic; its offset once the broker acks."""
        if self.readiness().status != "ready":
            raise PublishError("not connected")
        acked: asyncio.Future[Acked] = asyncio.get_running_loop().create_future()
        self._waiting.append((record, acked))
        if self._sent is None:
            self._send()
        return await acked

    def _send(self) -> None:
        """Write every waiting record in one request: a batch per topic, to partition 0."""
        sent: _Sent = {}
        for record, acked in self._waiting:
            sent.setdefault(record.topic, []).append((record, acked))
        self._waiting = []
        topics = []
        for topic, records in sent.items():
            batch = DefaultRecordBatchBuilder(
                magic=2,
                compression_type=0,
                is_transactional=0,
                producer_id=-1,
                producer_epoch=-1,
                base_sequence=-1,
                batch_size=_BATCH_BYTES,
            )
            for offset, (record, _) in enumerate(records):
                headers = list(record.headers)
                batch.append(
                    offset, timestamp=None, key=record.key, value=record.value, headers=headers
                )
            topics.append((topic, [(0, bytes(batch.build()))]))
        request = ProduceV7(
            transactional_id=None, required_acks=_ACKS_ALL, timeout=_TIMEOUT_MS, topics=topics
        )
        header = request.build_request_header(next(self._ids) & 0x7FFFFFFF, _CLIENT_ID).encode()
        message = header + request.encode()
        self._sent = sent
        cast(asyncio.Transport, self._connection.transport).write(_I32.pack(len(message)) + message)

    def _answered(self, body: bytes) -> None:
        """Settle the records of the request in flight; send those that waited meanwhile."""
        sent, self._sent = self._sent or {}, None
        for topic, partitions in ProduceResponseV7.decode(body).topics:
            _, error, base, _, _ = partitions[0]
            for n, (_, acked) in enumerate(sent.pop(topic, ())):
                if acked.done():  # its handler gave up waiting
                    continue
                if error:
                    acked.set_exception(PublishError(f"produce error code {error}"))
                else:
                    acked.set_result(Acked(topic, 0, base + n))
        for records in sent.values():  # the broker's answer left a topic out
            for _, acked in records:
                if not acked.done():
                    acked.set_exception(PublishError("no answer for the record's topic"))
        if self._waiting:
            self._send()

    def _lost(self, exc: Exception | None) -> None:
        sent, self._sent = self._sent or {}, None
        for _, acked in [*itertools.chain(*sent.values()), *self._waiting]:
            if not acked.done():
                acked.set_exception(PublishError(f"broker connection lost: {exc}"))
        self._waiting = []

    def readiness(self) -> Readiness:
        """Ready while the connection is open."""
        transport = self._connection.transport
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
