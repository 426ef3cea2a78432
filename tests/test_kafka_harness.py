"""The foundation: a real broker and a real three-broker cluster, started by the project."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import localkafka
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.kafkautil import consume, describe_partitions, unique_topic

RECORDS = [
    (b"loc-1", b'{"type":"ContactCreate","n":1}', [("ce_id", b"a"), ("ce_type", b"x")]),
    (b"loc-2", '{"n":"\u00e9\u6f22"}'.encode(), [("ce_id", b"b"), ("bin", bytes(range(256)))]),
    (None, b"", []),
]


async def _produce_and_read_back(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers in RECORDS:
            await producer.send_and_wait(topic, value, key=key, headers=headers, partition=0)
    finally:
        await producer.stop()
    got = await consume(bootstrap, topic, len(RECORDS))
    assert [(r.key, r.value, list(r.headers)) for r in got] == [(k, v, h) for k, v, h in RECORDS]


async def test_single_broker_round_trip(kafka_bootstrap: str) -> None:
    """Records written to the single broker come back with key, value and headers intact."""
    await _produce_and_read_back(kafka_bootstrap, unique_topic())


def test_up_is_idempotent(kafka_bootstrap: str) -> None:
    """A second ``up`` on a running broker starts nothing and returns at once."""
    single = localkafka.CLUSTERS["single"]
    if kafka_bootstrap != single.bootstrap:
        return  # a broker given by KAFKA_BOOTSTRAP_SERVERS is not ours to manage
    began = time.monotonic()
    assert localkafka.up(single) is False
    assert time.monotonic() - began < 5


def test_metadata_probe_tells_a_broker_from_a_closed_port(kafka_bootstrap: str) -> None:
    """The readiness probe gets node ids from a broker and None from a port nobody serves."""
    host_port = kafka_bootstrap.split(",")[0]
    assert localkafka.metadata_brokers(int(host_port.rsplit(":", 1)[1]))
    assert localkafka.metadata_brokers(1) is None


async def test_cluster_round_trip_acks_all(kafka_cluster: localkafka.Cluster) -> None:
    """The three-broker cluster takes acks=all writes and replicates them three times."""
    topic = unique_topic()
    await _produce_and_read_back(kafka_cluster.bootstrap, topic)
    for partition in await describe_partitions(kafka_cluster.bootstrap, topic):
        assert sorted(partition["replicas"]) == [1, 2, 3]


async def _wait_isr(bootstrap: str, topic: str, size: int) -> list[int]:
    async with asyncio.timeout(60):
        while True:
            (partition,) = await describe_partitions(bootstrap, topic)
            if len(partition["isr"]) == size:
                return sorted(partition["isr"])
            await asyncio.sleep(0.5)


async def test_cluster_survives_killing_the_leader(kafka_cluster: localkafka.Cluster) -> None:
    """Kill -9 the partition leader: acks=all writes go on; the restarted broker rejoins the ISR."""
    bootstrap, topic = kafka_cluster.bootstrap, unique_topic()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)])
    finally:
        await admin.close()
    assert await _wait_isr(bootstrap, topic, 3) == [1, 2, 3]
    (partition,) = await describe_partitions(bootstrap, topic)
    leader = kafka_cluster.node(partition["leader"])

    localkafka.kill_node(kafka_cluster, leader)
    assert localkafka.metadata_brokers(leader.port) is None

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=10000
    )
    await producer.start()
    try:
        async with asyncio.timeout(60):
            for i in range(20):
                await producer.send_and_wait(topic, b"after-kill-%d" % i, key=b"k")
    finally:
        await producer.stop()
    (partition,) = await describe_partitions(bootstrap, topic)
    assert partition["leader"] != leader.node_id
    assert len(partition["isr"]) == 2

    assert localkafka.start_node(kafka_cluster, leader) is True
    localkafka.wait_ready(kafka_cluster, [leader])
    assert await _wait_isr(bootstrap, topic, 3) == [1, 2, 3]
    got = await consume(bootstrap, topic, 20)
    assert [r.value for r in got] == [b"after-kill-%d" % i for i in range(20)]


def test_stop_refusal_protects_another_checkouts_broker(tmp_path: Path) -> None:
    """``down`` refuses another checkout's broker, naming it; anything else it may stop.

    Its own, one nobody recorded, one whose checkout is gone, or any with ``force``.
    """
    me, other = tmp_path / "me", tmp_path / "other"
    me.mkdir()
    other.mkdir()
    assert localkafka.stop_refusal(me, me, force=False) is None
    assert localkafka.stop_refusal(None, me, force=False) is None
    assert localkafka.stop_refusal(tmp_path / "deleted", me, force=False) is None
    assert localkafka.stop_refusal(other, me, force=True) is None
    refusal = localkafka.stop_refusal(other, me, force=False)
    assert refusal is not None
    assert str(other) in refusal
    assert "--force" in refusal


def test_up_and_down_tell_whose_broker_it_is(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``up`` says whose broker it reuses; ``down`` leaves another checkout's running.

    The broker records the checkout that started it; with another one recorded, ``down``
    exits 1 naming it and ``--force``, and the broker still answers.
    """
    single = localkafka.CLUSTERS["single"]
    if kafka_bootstrap != single.bootstrap:
        return  # a broker given by KAFKA_BOOTSTRAP_SERVERS is not ours to manage
    owner_file = localkafka.owner_file(single)
    recorded = owner_file.read_text()
    if localkafka.owner(single) != localkafka.CHECKOUT:
        pytest.skip(f"the single broker is not this checkout's: {recorded}")
    capsys.readouterr()
    try:
        owner_file.write_text(f"{tmp_path}\n")  # as if another clone had started it
        assert localkafka.main(["up"]) == 0
        up_said = capsys.readouterr().out
        assert f"already up (started by another checkout, {tmp_path}); reusing it" in up_said

        assert localkafka.main(["down"]) == 1
        down_said = capsys.readouterr().err
        assert f"not stopping single at {single.bootstrap}" in down_said
        assert str(tmp_path) in down_said
        assert "--force" in down_said
        assert localkafka.metadata_brokers(single.nodes[0].port) == [1]
    finally:
        owner_file.write_text(recorded)
    assert localkafka.main(["up"]) == 0
    assert "already up (started by this checkout); reusing it" in capsys.readouterr().out
