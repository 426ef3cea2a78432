"""The relay's producer (relay/kafka/producer.py) against aiokafka's own, and on a real broker.

Its codec must write and read exactly aiokafka's bytes, so the checks here compare the two
on generated requests and responses. Its sender must deliver as aiokafka's does, so the
records of many concurrent sends are read back from the broker; a failure inside the
sender must fail the waiting records, not leave them waiting; and a produce request that
times out or cannot be written must close its connection and be retried, as aiokafka's
``client.send`` and ``conn.send`` do. The private aiokafka names
the module builds on are used here directly, so an aiokafka upgrade that moves them fails
these tests first.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.client import ConnectionGroup
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError
from aiokafka.protocol import produce
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.kafka import producer as ours
from relay.kafka.topics import ensure_topics
from tests.kafkautil import consume, unique_topic

_V7 = {produce.ProduceRequest.API_KEY: (3, 7)}
_int16 = st.integers(-(2**15), 2**15 - 1)
_int32 = st.integers(-(2**31), 2**31 - 1)
_int64 = st.integers(-(2**63), 2**63 - 1)
_topic = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=40)
_requests = st.fixed_dictionaries(
    {
        "transactional_id": st.one_of(st.none(), st.text(max_size=20)),
        "required_acks": st.sampled_from([-1, 0, 1]),
        "timeout": _int32,
        "topics": st.lists(
            st.tuples(
                _topic,
                st.lists(st.tuples(_int32, st.one_of(st.none(), st.binary(max_size=300)))),
            ),
            max_size=4,
        ),
    }
)
_answers = st.tuples(
    st.lists(
        st.tuples(_topic, st.lists(st.tuples(_int32, _int16, _int64, _int64, _int64), max_size=5)),
        max_size=4,
    ),
    _int32,
)


def _wire(request: Any, correlation_id: int) -> bytes:
    """What conn.send writes for ``request``, before the length."""
    struct_ = request.prepare(_V7)
    header = struct_.build_request_header(correlation_id=correlation_id, client_id="hoopai-relay")
    return bytes(header.encode() + struct_.encode())


@given(_requests, _int32)
@settings(max_examples=200, deadline=None)
def test_the_request_is_aiokafkas_byte_for_byte(
    fields: dict[str, Any], correlation_id: int
) -> None:
    """Header and body as aiokafka's generic encoder writes them, for any request."""
    theirs = produce.ProduceRequest(**fields)
    mine = ours.ProduceRequest(**fields)
    assert type(mine.prepare(_V7)) is ours.ProduceV7
    assert _wire(mine, correlation_id) == _wire(theirs, correlation_id)


@given(_answers, _int32)
@settings(max_examples=200, deadline=None)
def test_the_response_is_read_as_aiokafka_reads_it(
    answer: tuple[list[Any], int], correlation_id: int
) -> None:
    """The correlation id, each partition's answer and the throttle time, as aiokafka reads them."""
    topics, throttle_ms = answer
    frame = (
        struct.pack(">i", correlation_id) + produce.ProduceResponse_v7(topics, throttle_ms).encode()
    )
    generic = produce.ProduceRequest_v7(None, -1, 0, [])
    mine = ours.ProduceV7(None, -1, 0, [])

    def read(request: Any) -> tuple[int, Any, int]:
        buffer = io.BytesIO(frame)  # as conn._handle_frame: the header, then the body
        header = request.parse_response_header(buffer)
        response = request.RESPONSE_TYPE.decode(buffer)
        as_lists = [(t, [tuple(p) for p in ps]) for t, ps in response.topics]
        return header.correlation_id, as_lists, response.throttle_time_ms

    assert read(mine) == read(generic)
    assert read(mine) == (
        correlation_id,
        [(t, [tuple(p) for p in ps]) for t, ps in topics],
        throttle_ms,
    )


def test_a_short_response_is_a_value_error_as_with_aiokafka() -> None:
    """A truncated frame raises what aiokafka's decoder raises, so conn handles it alike."""
    body = produce.ProduceResponse_v7([("t", [(0, 0, 7, -1, 0)])], 0).encode()
    for cut in (0, 3, 9, len(body) - 1):
        with pytest.raises(ValueError, match=r"(convert value|underrun)"):
            produce.ProduceResponse_v7.decode(io.BytesIO(body[:cut]))
        with pytest.raises(ValueError, match="malformed ProduceResponse v7"):
            ours.ProduceResponseV7.decode(io.BytesIO(body[:cut]))


def test_a_broker_without_v7_gets_aiokafkas_own_request() -> None:
    """Only v7 is by hand: an older range gets aiokafka's choice, an unknown one its error."""
    request = ours.ProduceRequest(transactional_id=None, required_acks=-1, timeout=1, topics=[])
    assert type(request.prepare({0: (0, 6)})) is produce.ProduceRequest_v6
    assert type(request.prepare({0: (3, 12)})) is ours.ProduceV7
    with pytest.raises(IncompatibleBrokerVersion):
        request.prepare({})


async def test_the_producer_runs_on_its_own_sender_with_aiokafkas_settings() -> None:
    """The sender is replaced, keeping what aiokafka derived from the options (never dialled)."""
    producer = ours.Producer(
        bootstrap_servers="127.0.0.1:1",
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=7000,
    )
    try:
        sender = producer._sender  # the private sender is what the module replaces
        assert type(sender) is ours._Sender
        assert (sender._acks, sender._request_timeout_ms) == (-1, 7000)
        assert sender._message_accumulator is producer._message_accumulator
        assert sender._txn_manager is producer._txn_manager is not None
        request = ours._ProduceHandler(sender, {}).create_request()
        assert type(request) is ours.ProduceRequest
        assert (request.required_acks, request._timeout, request._topics) == (-1, 7000, [])
    finally:
        await producer.stop()


async def test_concurrent_records_all_land_through_the_hand_written_codec(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 concurrent idempotent sends over 3 partitions: every record read back, headers too."""
    topic = unique_topic("producer")
    await ensure_topics({"bootstrap_servers": kafka_bootstrap}, [topic], 3, 1)
    encoded: list[int] = []
    by_hand = ours.ProduceV7.encode

    def counted(self: ours.ProduceV7) -> bytes:
        encoded.append(1)
        return by_hand(self)

    monkeypatch.setattr(ours.ProduceV7, "encode", counted)
    producer = ours.Producer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [
            producer.send(
                topic, b"value-%d" % i, key=b"key-%d" % (i % 7), headers=[("n", b"%d" % i)]
            )
            for i in range(300)
        ]
        async with asyncio.timeout(60):
            acks = await asyncio.gather(*await asyncio.gather(*sent))
    finally:
        await producer.stop()
    assert len({(ack.partition, ack.offset) for ack in acks}) == 300
    assert encoded, "no produce request went through the hand-written encoder"
    records = await consume(kafka_bootstrap, topic, 300)
    assert sorted((r.value, r.headers) for r in records) == sorted(
        (b"value-%d" % i, (("n", b"%d" % i),)) for i in range(300)
    )


async def test_a_failure_inside_the_sender_fails_the_waiting_records(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug handling a produce answer ends the sender loop, and the waiting record gets an error.

    ``handle_response`` is aiokafka's, called on either path: the callback's, and the task's
    when there was no connection yet.
    """

    def broken(self: ours._ProduceHandler, response: Any) -> None:
        raise RuntimeError("a bug in the produce answer's handling")

    producer = ours.Producer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        monkeypatch.setattr(ours._ProduceHandler, "handle_response", broken)
        delivery = await producer.send(unique_topic("broken"), b"v", key=b"k")
        async with asyncio.timeout(10):
            with pytest.raises(KafkaError, match="Unexpected error during batch delivery"):
                await delivery
    finally:
        await producer.stop()


def _time_out_at_once(conn: Any) -> None:
    """The request timer fires before the broker can answer the first produce request."""
    conn._request_timeout = 0.0


def _refuse_produce_writes(conn: Any) -> None:
    """Writing a produce request raises OSError; other requests (metadata) are written.

    Only produce requests (api key 0 after the size): aiokafka closes a connection whose
    metadata write fails, so refusing those too would hide whether the produce path does.
    """
    write = conn._writer.write

    def refuse_produce(data: bytes) -> None:
        if data[4:6] == b"\x00\x00":
            raise BrokenPipeError("the socket went away")
        write(data)

    conn._writer.write = refuse_produce


@pytest.mark.parametrize(
    ("spoil", "logged"),
    [
        pytest.param(_time_out_at_once, "RequestTimedOutError", id="answer-past-timeout"),
        pytest.param(_refuse_produce_writes, "broken: the socket went away", id="write-fails"),
    ],
)
async def test_a_failed_request_is_retried_on_a_new_connection_and_lands_once(
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
    spoil: Callable[[Any], None],
    logged: str,
) -> None:
    """As with aiokafka's ``client.send``: the connection is closed, the record sent again, once.

    Once the producer is up, the leader's connection is spoiled: its answers come past the
    request timeout, or its produce writes fail. That connection must be closed, and the
    retry go on the one aiokafka opens in its place (unspoiled), so the record lands once.
    """
    topic = unique_topic("retried")
    await ensure_topics({"bootstrap_servers": kafka_bootstrap}, [topic], 1, 1)
    producer = ours.Producer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        async with asyncio.timeout(20):
            await (await producer.send(topic, b"warm-up", key=b"k"))
            # a connection to the leader exists from here on
            leader = producer.client.cluster.leader_for_partition(TopicPartition(topic, 0))
            spoiled = producer.client._conns[(leader, ConnectionGroup.DEFAULT)]
            spoil(spoiled)
            with caplog.at_level("WARNING", logger=ours.__name__):
                ack = await (await producer.send(topic, b"sent-twice", key=b"k"))
    finally:
        # bounded too: a sender retrying on the spoiled connection for ever would hang stop()
        async with asyncio.timeout(10):
            await producer.stop()
    assert logged in caplog.text
    assert not spoiled.connected(), "the spoiled connection was not closed"
    records = await consume(kafka_bootstrap, topic, 2)
    assert [r.value for r in records] == [b"warm-up", b"sent-twice"]
    assert records[1].offset == ack.offset
