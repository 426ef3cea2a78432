"""A reference consumer: applies each webhook once, however often it was delivered.

The sender re-delivers (retries, manual re-sends), and the relay may publish a delivery
twice (an ack that came after its deadline). Each record carries the idempotency key in
its ``ce_id`` header. This consumer

1. records ``ce_id`` in the same database transaction as the effect of the event, so an
   effect is applied once, and a crash in between leaves neither;
2. commits Kafka offsets by hand, after the batch's transactions committed, so a crash
   re-reads records whose ids are already recorded (skipped), and loses none.

Copy it and replace :func:`apply` with your own processing. Build its ``AIOKafkaConsumer``
with the relay's own connection settings (TLS, SASL, OAUTHBEARER with its token refresh)::

    async with relay.kafka.options.checked_options(Settings.load(os.environ)) as options:
        consumer = AIOKafkaConsumer(topic, **options, group_id=..., enable_auto_commit=False)

(tests/test_secure_kafka.py does so over OAUTHBEARER.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.tools.show import header

#: what a handler does with one record, inside the dedup transaction
Effect = Callable[[sqlite3.Connection, Any], None]

_SCHEMA = "CREATE TABLE IF NOT EXISTS processed (ce_id TEXT PRIMARY KEY, topic TEXT, offset INT)"


class EffectStore:
    """A SQLite database that holds both the effects and the ids already applied."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute(_SCHEMA)

    def apply_once(self, ce_id: str, record: Any, effect: Effect) -> bool:
        """Apply ``effect`` unless ``ce_id`` was applied before; return whether it ran."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            inserted = self.db.execute(
                "INSERT OR IGNORE INTO processed VALUES (?, ?, ?)",
                (ce_id, record.topic, record.offset),
            ).rowcount
            if inserted:
                effect(self.db, record)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return bool(inserted)

    def close(self) -> None:
        """Close the database."""
        self.db.close()


async def consume_batch(
    consumer: AIOKafkaConsumer, store: EffectStore, effect: Effect
) -> tuple[int, int]:
    """Process one batch and commit its offsets; return (records read, effects applied)."""
    applied = read = 0
    batches = await consumer.getmany(timeout_ms=500)
    offsets: dict[TopicPartition, int] = {}
    for tp, records in batches.items():
        for record in records:
            read += 1
            ce_id = header(record, "ce_id")
            # A record without ce_id was not written by the relay: apply it, nothing to key on.
            if ce_id is None:
                effect(store.db, record)
                applied += 1
            elif store.apply_once(ce_id, record, effect):
                applied += 1
            offsets[tp] = record.offset + 1
    if offsets:
        await consumer.commit(offsets)
    return read, applied
