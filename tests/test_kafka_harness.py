"""The foundation: a real broker and a real three-broker cluster, started by the project."""

from __future__ import annotations

import asyncio
import time

import localkafka
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
