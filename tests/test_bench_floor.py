"""The benchmark's "relay with the floor client" (bench/floor.py, issue 21), on the real broker."""

from __future__ import annotations

import asyncio

import pytest

from bench.floor import Floor, create_topics
from relay.errors import PublishError
from relay.records import Record
from tests.kafkautil import consume, unique_topic


def _record(topic: str, n: int) -> Record:
    return Record(
        topic=topic,
        key=f"loc-{n}".encode(),
        value=b'{"type": "ContactCreate", "n": %d}' % n,
        headers=(("ce_id", f"id-{n}".encode()), ("ce_type", b"ContactCreate")),
    )


async def test_the_floor_client_lands_each_record_with_its_key_and_headers(
    kafka_bootstrap: str,
) -> None:
    """Each record is acked at partition 0's next offset and reads back as it was sent.

    Offset 0 is create_topics' warm record.
    """
    topic = unique_topic("floor")
    await create_topics(kafka_bootstrap, [topic])
    floor = Floor(kafka_bootstrap)
    await floor.connect()
    try:
        assert floor.readiness().status == "ready"
        receipts = [await floor.deliver(_record(topic, n), deadline=0.0) for n in range(3)]
    finally:
        floor.close()
    assert [(r.topic, r.partition, r.offset) for r in receipts] == [
        (topic, 0, n) for n in range(1, 4)
    ]
    got = (await consume(kafka_bootstrap, topic, 4))[1:]
    sent = [_record(topic, n) for n in range(3)]
    assert [(r.key, r.value, tuple(r.headers)) for r in got] == [
        (s.key, s.value, s.headers) for s in sent
    ]


async def test_records_that_arrive_while_one_is_in_flight_share_the_next_request(
    kafka_bootstrap: str,
) -> None:
    """Forty records at once, over two topics: every one acked once, at its own offset.

    The first goes alone; the rest wait for its answer and go together, a batch per topic
    in one request, so the offsets of each topic are consecutive and the records read
    back in the order they were given.
    """
    topics = [unique_topic("floor"), unique_topic("floor")]
    await create_topics(kafka_bootstrap, topics)
    floor = Floor(kafka_bootstrap)
    await floor.connect()
    sent = [_record(topics[n % 2], n) for n in range(40)]
    try:
        receipts = await asyncio.gather(*(floor.deliver(r, deadline=0.0) for r in sent))
    finally:
        floor.close()
    for topic in topics:
        offsets = [r.offset for r in receipts if r.topic == topic]
        assert offsets == list(range(1, 21))
        got = (await consume(kafka_bootstrap, topic, 21))[1:]
        assert [r.value for r in got] == [s.value for s in sent if s.topic == topic]


async def test_the_floor_client_fails_a_record_the_broker_refuses(kafka_bootstrap: str) -> None:
    """A topic that does not exist: the broker's error code comes back as a PublishError."""
    floor = Floor(kafka_bootstrap)
    await floor.connect()
    try:
        with pytest.raises(PublishError, match="produce error code 3"):
            await floor.deliver(_record(unique_topic("absent"), 0), deadline=0.0)
    finally:
        floor.close()
