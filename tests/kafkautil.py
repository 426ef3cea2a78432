"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import localkafka  # dev/, on the path by pytest's `pythonpath` setting
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient


def unique_topic(prefix: str = "t") -> str:
    """A topic name no other test uses, so tests never see each other's records."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def _reader(bootstrap: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer of ``topic`` from its beginning, without a group; stopped after."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def first_record(topic: str, **options: Any) -> Any:
    """The first record of ``topic``, read with these client options (TLS, SASL), within 30 s."""
    consumer = AIOKafkaConsumer(
        topic, **options, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            return await consumer.getone()
    finally:
        await consumer.stop()


async def consume(bootstrap: str, topic: str, count: int) -> list[Any]:
    """Read ``count`` records of ``topic`` from the beginning, within 30 s."""
    records: list[Any] = []
    async with _reader(bootstrap, topic) as consumer, asyncio.timeout(30):
        while len(records) < count:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    return records


async def describe_partitions(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Leader, replicas and ISR of each partition of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions: list[dict[str, Any]] = described["partitions"]
    return partitions


async def consume_all(bootstrap: str, topic: str) -> list[Any]:
    """Read ``topic`` from the beginning until 3 s pass without a record (at most 60 s)."""
    records: list[Any] = []
    async with _reader(bootstrap, topic) as consumer, asyncio.timeout(60):
        while batches := await consumer.getmany(timeout_ms=3000):
            for batch in batches.values():
                records.extend(batch)
    return records


async def consume_ids(bootstrap: str, topics: set[str], ids: set[str]) -> dict[str, Any]:
    """The first record of each ``ce_id`` in ``ids``, read from ``topics`` by one consumer.

    Reads from the beginning until every id came, 30 s at most.
    """
    found: dict[str, Any] = {}
    consumer = AIOKafkaConsumer(
        *sorted(topics),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while not ids <= found.keys():
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    for record in batch:
                        found.setdefault(dict(record.headers)["ce_id"].decode(), record)
    finally:
        await consumer.stop()
    return found


@contextlib.contextmanager
def stalled(cluster: localkafka.Cluster) -> Iterator[None]:
    """SIGSTOP every broker of the cluster for the duration of the block."""
    for node in cluster.nodes:
        localkafka.kill_node(cluster, node, signal.SIGSTOP)
    try:
        yield
    finally:
        for node in cluster.nodes:
            localkafka.kill_node(cluster, node, signal.SIGCONT)
