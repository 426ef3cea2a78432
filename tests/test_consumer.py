"""The reference consumer applies a twice-delivered webhook once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.tools.consumer import EffectStore, consume_batch
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests.kafkautil import unique_topic
from tests.relayutil import StartRelay


def count_contact(db: sqlite3.Connection, record: Any) -> None:
    """The effect under test: one row per applied event."""
    db.execute("CREATE TABLE IF NOT EXISTS effects (value BLOB)")
    db.execute("INSERT INTO effects VALUES (?)", (record.value,))


async def drain(bootstrap: str, topic: str, group: str, store: EffectStore, want: int) -> int:
    """Run the reference consumer until it has read ``want`` records; return effects applied."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    read = applied = 0
    try:
        async with asyncio.timeout(30):
            while read < want:
                batch_read, batch_applied = await consume_batch(consumer, store, count_contact)
                read, applied = read + batch_read, applied + batch_applied
    finally:
        await consumer.stop()
    return applied


async def test_twice_delivered_webhook_is_applied_once(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Two deliveries of one webhook are two records in Kafka and one effect downstream."""
    relay = await start_relay(dedup_window=0)  # so the relay itself produces both
    bootstrap = ",".join(relay.settings.kafka_bootstrap_servers)
    twice = as_delivery({"type": "ContactCreate", "locationId": "loc-c", "n": 1})
    once = as_delivery({"type": "ContactCreate", "locationId": "loc-c", "n": 2})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        for body in (twice, once, twice):
            headers = {"X-GHL-Signature": sign_ed25519(ed25519_key, body)}
            async with http.post(relay.webhook_url, data=body, headers=headers) as response:
                assert response.status == 200

    store = EffectStore(str(tmp_path / "effects.db"))
    topic, group = relay.topic("contacts"), unique_topic("group")
    assert await drain(bootstrap, topic, group, store, 3) == 2
    rows = [v for (v,) in store.db.execute("SELECT value FROM effects")]
    assert sorted(rows) == sorted([twice, once])

    # Re-reading everything (a new group, as after losing the committed offsets) applies
    # nothing again: the ids are recorded with the effects.
    assert await drain(bootstrap, topic, unique_topic("group"), store, 3) == 0
    assert store.db.execute("SELECT count(*) FROM effects").fetchone() == (2,)
    store.close()
