"""aiokafka's producer, with three of its per-request costs cut: codec, waits, request task.

At low rates every record is its own produce request (the sender sends as soon as the
previous one is answered), so whatever a produce request costs, a delivery costs.
Measured with ``python -m bench.glue --kafka`` (docs/benchmarks.md, issue 21), three things
of aiokafka's were the largest there that the relay can change without a fork:

- **The codec.** aiokafka encodes the request and decodes the response with its generic
  ``Schema`` walker, about 30 µs a round trip. :class:`ProduceV7` and
  :class:`ProduceResponseV7` write and read the same bytes with a few ``struct`` calls
  (7.6% fewer of a delivery's instructions). Only version 7 is done by hand, the newest aiokafka
  speaks and one every broker since Kafka 2.1 offers; against an older broker
  :meth:`ProduceRequest.prepare` falls back to aiokafka's own classes.
- **The sender's waits.** Its loop waits with ``asyncio.wait`` (about 50,000 instructions
  each) twice per record: for the record, then for its answer. :class:`_Sender` wakes one
  future by done-callbacks instead, and awaits the accumulator alone when nothing is in
  flight (3% fewer).
- **The request's task.** aiokafka runs each produce request as a task, through
  ``client.send`` and three more coroutines and a timeout context per request.
  :meth:`_ProduceHandler.start` writes it at once and handles the answer in a done-callback
  with one timer (2.5% fewer, and one loop turn less).

All three sit on aiokafka's private sender and connection (``Producer._sender``, the
handler's ``create_request`` and ``handle_response``, the sender's ``_sender_routine``, the
client's ``_conns``, the connection's ``_requests`` and ``_writer``). The version is held to
0.14.x in pyproject.toml, and tests/test_producer.py checks the codec byte for byte against
aiokafka's and each private name this module uses, so an upgrade that moves them fails
there, not in production.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from io import BytesIO
from typing import Any, Final, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.client import ConnectionGroup
from aiokafka.conn import CloseReason
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RequestTimedOutError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.producer.sender import Sender, SendProduceReqHandler
from aiokafka.protocol import produce
from aiokafka.util import create_task

log = logging.getLogger(__name__)

_API_KEY: Final = 0  # Produce
_VERSION: Final = 7
_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_HEADER: Final = struct.Struct(">hhih")  # api key, version, correlation id, client id length
_ACKS_TIMEOUT_COUNT: Final = struct.Struct(">hii")  # then the number of topics
_PARTITION: Final = struct.Struct(">ii")  # partition, length of its records
_PARTITION_ANSWER: Final = struct.Struct(">ihqqq")  # partition, error, offset, time, start


def _string(value: str | None) -> bytes:
    if value is None:
        return _I16.pack(-1)
    raw = value.encode()
    return _I16.pack(len(raw)) + raw


class _Header(NamedTuple):
    """RequestHeader v1, what :meth:`ProduceV7.build_request_header` gives conn.send."""

    correlation_id: int
    client_id: str

    def encode(self) -> bytes:
        raw = self.client_id.encode()
        return _HEADER.pack(_API_KEY, _VERSION, self.correlation_id, len(raw)) + raw


class _AnswerHeader(NamedTuple):
    """ResponseHeader v0: the only field conn reads."""

    correlation_id: int


class ProduceResponseV7(produce.ProduceResponse_v7):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's response struct, decoded without the generic walker."""

    @classmethod
    def decode(cls, data: BytesIO | bytes) -> ProduceResponseV7:
        """The response after its header (conn has read that), as aiokafka's decoder gives it."""
        raw = data if isinstance(data, bytes) else data.read()
        try:
            return cls(*_decode_answer(raw))
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            # aiokafka's own decoder says ValueError for a short frame; keep its contract
            raise ValueError(f"malformed ProduceResponse v{_VERSION}: {exc}") from exc


def _decode_answer(raw: bytes) -> tuple[list[tuple[str, list[tuple[int, ...]]]], int]:
    (topic_count,) = _I32.unpack_from(raw, 0)
    at, topics = 4, []
    for _ in range(topic_count):
        (length,) = _I16.unpack_from(raw, at)
        at += 2
        topic = raw[at : at + length].decode()
        at += length
        (count,) = _I32.unpack_from(raw, at)
        at += 4
        partitions = []
        for _ in range(count):
            partitions.append(_PARTITION_ANSWER.unpack_from(raw, at))
            at += _PARTITION_ANSWER.size
        topics.append((topic, partitions))
    (throttle_ms,) = _I32.unpack_from(raw, at)
    return topics, throttle_ms


class ProduceV7(produce.ProduceRequest_v7):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's v7 request struct, encoded without the generic walker."""

    RESPONSE_TYPE = ProduceResponseV7

    def encode(self) -> bytes:
        """The body: transactional id, acks, timeout, then each topic's partitions' batches."""
        fields: dict[str, Any] = self.__dict__
        topics = fields["topics"]
        parts = [
            _string(fields["transactional_id"]),
            _ACKS_TIMEOUT_COUNT.pack(fields["required_acks"], fields["timeout"], len(topics)),
        ]
        for topic, partitions in topics:
            parts.append(_string(topic))
            parts.append(_I32.pack(len(partitions)))
            for partition, records in partitions:
                if records is None:
                    parts.append(_PARTITION.pack(partition, -1))
                else:
                    parts.append(_PARTITION.pack(partition, len(records)))
                    parts.append(records)
        return b"".join(parts)

    def build_request_header(self, correlation_id: int, client_id: str) -> Any:
        """A header whose ``encode`` packs in one call (conn.send only encodes it)."""
        return _Header(correlation_id, client_id)

    def parse_response_header(self, read_buffer: BytesIO | bytes) -> Any:
        """The correlation id, the only field of v0's header."""
        raw = read_buffer if isinstance(read_buffer, bytes) else read_buffer.read(4)
        return _AnswerHeader(_I32.unpack_from(raw, 0)[0])


class ProduceRequest(produce.ProduceRequest):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's builder, building :class:`ProduceV7` where the broker speaks v7."""

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        """Version 7 when the connection allows it, else aiokafka's choice."""
        low, high = versions.get(self.API_KEY, (0, -1))
        if low <= _VERSION <= high:
            return self.build(ProduceV7)
        return super().prepare(versions)


class _Expired(Exception):
    """A produce request's answer did not come within the connection's request timeout."""


def _expire(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_exception(_Expired())


def _end(ended: asyncio.Future[None], error: BaseException | None = None) -> None:
    # Already done only if the sender's stop cancelled its wait for this request.
    if ended.done():
        return
    if error is None:
        ended.set_result(None)
    else:
        ended.set_exception(error)


def _pass_on(ended: asyncio.Future[None], retry: asyncio.Task[None]) -> None:
    if retry.cancelled():
        ended.cancel()
    else:
        _end(ended, retry.exception())


class _ProduceHandler(SendProduceReqHandler):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's produce handler, building :class:`ProduceRequest`, answered by a callback.

    aiokafka runs each produce request as a task (``do``): the task's first turn writes
    the request, through ``client.send``, three more coroutines (``ready``, ``_get_conn``
    and the connection's ``wait_for``) and a timeout context armed and disarmed for each
    request. :meth:`start` writes it at once, as ``conn.send`` writes it, and handles the
    answer in a done-callback with one timer: no task, one loop turn less per record.
    What aiokafka does with the answer, this does: ``handle_response`` is aiokafka's, an
    error is handled as in ``do``, and so is a timeout (the connection is closed, the error
    is RequestTimedOutError). Without a connection (the first request, a broker gone) and
    for ``acks=0``, it is aiokafka's own ``do``, which connects.
    """

    def start(self, node_id: int) -> asyncio.Future[None]:
        """Send the request to ``node_id``; done when it has ended and its batches are settled.

        Settled: delivered, failed, or put back in the accumulator to be retried.
        """
        request = self.create_request()
        conn = self._client._conns.get((node_id, ConnectionGroup.DEFAULT))
        if conn is None or not conn.connected() or request.required_acks == 0:
            task: asyncio.Task[None] = create_task(self.do(node_id))
            return task
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        prepared = request.prepare(conn._versions)
        correlation_id = conn._next_correlation_id()
        header = prepared.build_request_header(
            correlation_id=correlation_id, client_id=conn._client_id
        )
        message = header.encode() + prepared.encode()
        try:
            conn._writer.write(_I32.pack(len(message)) + message)
        except OSError as err:
            conn.close(reason=CloseReason.CONNECTION_BROKEN)
            self._failed(
                KafkaConnectionError(f"Connection at {conn.host}:{conn.port} broken: {err}")
            )
            self._settle(ended)
            return ended
        answer: asyncio.Future[Any] = loop.create_future()
        conn._requests.append((correlation_id, prepared, answer))
        timer = loop.call_later(conn._request_timeout, _expire, answer)
        answer.add_done_callback(functools.partial(self._answered, conn, timer, ended))
        return ended

    def _answered(
        self, conn: Any, timer: asyncio.TimerHandle, ended: asyncio.Future[None], answer: Any
    ) -> None:
        timer.cancel()
        try:
            self._handle(conn, answer)
        except Exception as exc:  # as a task's error would: the sender loop raises it
            _end(ended, exc)
        else:
            self._settle(ended)

    def _handle(self, conn: Any, answer: asyncio.Future[Any]) -> None:
        """What aiokafka's ``do`` does with the answer, or with its error."""
        if answer.cancelled():  # nothing cancels it today; if aiokafka ever does, retry
            self._failed(KafkaConnectionError(f"request to {conn.host}:{conn.port} cancelled"))
            return
        error = answer.exception()
        if error is None:
            self.handle_response(answer.result())
        elif isinstance(error, _Expired):
            conn.close(reason=CloseReason.CONNECTION_TIMEOUT)
            self._failed(RequestTimedOutError())
        elif isinstance(error, KafkaError):
            self._failed(error)
        else:
            raise error

    def _failed(self, err: KafkaError) -> None:
        """What aiokafka's ``do`` does when the request failed as a whole."""
        log.warning("Got error produce response: %s", err)
        if getattr(err, "invalid_metadata", False):
            self._client.force_metadata_update()
        for batch in self._batches.values():
            if not self._can_retry(err, batch):
                batch.failure(exception=err)
            else:
                self._to_reenqueue.append(batch)

    def _settle(self, ended: asyncio.Future[None]) -> None:
        """End ``ended`` now, or after the backoff when batches are to be retried."""
        if not self._to_reenqueue:
            _end(ended)
            return
        retry: asyncio.Task[None] = create_task(self._retry())
        retry.add_done_callback(functools.partial(_pass_on, ended))

    async def _retry(self) -> None:
        """As aiokafka's ``do``: back off, put the batches back, wait for metadata asked for."""
        await asyncio.sleep(self._default_backoff)
        for batch in self._to_reenqueue:
            self._sender._message_accumulator.reenqueue(batch)
        await self._client._maybe_wait_metadata()

    def create_request(self) -> ProduceRequest:
        topics: dict[str, list[tuple[int, bytes]]] = {}
        for tp, batch in self._batches.items():
            topics.setdefault(tp.topic, []).append((tp.partition, batch.get_data_buffer()))
        txn = self._sender._txn_manager
        return ProduceRequest(
            transactional_id=None if txn is None else txn.transactional_id,
            required_acks=self._sender._acks,
            timeout=self._sender._request_timeout_ms,
            topics=list(topics.items()),
        )


class _Sender(Sender):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's sender with :class:`_ProduceHandler`, and a leaner wait between sends.

    The loop is aiokafka's, with one future woken by done-callbacks (on the accumulator's
    waiter and on each produce request in flight) where aiokafka calls ``asyncio.wait``,
    and without the transaction steps: a transactional producer, which the relay never
    makes, keeps aiokafka's own loop.
    """

    async def _sender_routine(self) -> None:
        txn = self._txn_manager
        if txn is not None and txn.transactional_id is not None:
            await super()._sender_routine()
            return
        loop = asyncio.get_running_loop()
        requests: set[asyncio.Future[None]] = set()  # the produce requests in flight
        finished: list[asyncio.Future[None]] = []
        wake: asyncio.Future[None] = loop.create_future()

        def woken(_: object) -> None:
            if not wake.done():
                wake.set_result(None)

        def answered(node_id: int, batches: Any, ended: asyncio.Future[None]) -> None:
            self._in_flight.remove(node_id)
            for tp in batches:
                self._muted_partitions.remove(tp)
            requests.discard(ended)
            finished.append(ended)
            woken(ended)

        try:
            while True:
                # the idempotent producer needs its id before any produce request
                await self._maybe_wait_for_pid()
                batches, unknown_leaders = self._message_accumulator.drain_by_nodes(
                    ignore_nodes=self._in_flight, muted_partitions=self._muted_partitions
                )
                for node_id, node_batches in batches.items():
                    self._in_flight.add(node_id)
                    self._muted_partitions.update(node_batches)
                    ended = _ProduceHandler(self, node_batches).start(node_id)
                    requests.add(ended)
                    ended.add_done_callback(functools.partial(answered, node_id, node_batches))
                waiter = (
                    self.client.force_metadata_update()
                    if unknown_leaders
                    else self._message_accumulator.waiter()
                )
                if finished or waiter.done():
                    await asyncio.sleep(0)  # as asyncio.wait would: one turn for the rest
                elif not requests and not unknown_leaders:
                    # Nothing in flight to wake for: the accumulator's waiter alone, one
                    # loop turn less. Only this loop waits on it, and a waiter cancelled
                    # with this task is done, which the accumulator takes as woken.
                    # (Not the metadata update's future: others wait on that.)
                    await waiter
                else:
                    waiter.add_done_callback(woken)
                    await wake
                    waiter.remove_done_callback(woken)
                    wake = loop.create_future()
                while finished:
                    finished.pop().result()  # raises only for a bug in the answer's handling
        except asyncio.CancelledError:
            # as aiokafka's: let the requests in flight end (each removes itself from the set)
            for ended in list(requests):
                await ended
        except (ProducerFenced, OutOfOrderSequenceNumber, TransactionalIdAuthorizationFailed):
            raise
        except Exception as exc:
            log.exception("Unexpected error in sender routine")
            raise KafkaError("Unexpected error during batch delivery") from exc


class Producer(AIOKafkaProducer):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's producer whose produce requests go through this module.

    The same options and behaviour as aiokafka's; only its sender is :class:`_Sender`,
    built from the one aiokafka made.
    """

    _sender: Sender

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        own = self._sender
        self._sender = _Sender(
            own.client,
            acks=own._acks,
            txn_manager=own._txn_manager,
            retry_backoff_ms=own._retry_backoff * 1000,
            message_accumulator=own._message_accumulator,
            request_timeout_ms=own._request_timeout_ms,
        )
