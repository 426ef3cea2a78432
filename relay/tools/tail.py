"""``relay tail``: print the records of every topic of the relay, one line each.

It reads with the relay's own connection settings (``RELAY_KAFKA_*``, TLS and SASL included)
every topic named ``<RELAY_TOPIC_PREFIX>.<anything>``, including the topics that appear while
it runs. It joins a consumer group of its own, with a random id, and never commits: it
changes nothing for the real consumers. The fields the catalogue marks sensitive (a Voice AI
call's bearer token) are masked in what it prints; the records themselves are untouched.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from typing import Any, Final, TextIO

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from relay.ingress.catalogue import Catalogue, load_catalogue, mask_sensitive
from relay.kafka.options import checked_options
from relay.settings import Settings
from relay.tools.show import header, one_line

#: how soon a topic created after the start is noticed (aiokafka's default is 5 minutes)
METADATA_MAX_AGE_MS: Final = 3000
#: longest single wait for records, so that --timeout is checked at least this often
_POLL_MS: Final = 1000
#: longest wait for the consumer to leave its group on the way out
_STOP_TIMEOUT_S: Final = 5.0


def topic_pattern(prefix: str) -> str:
    """The regular expression of the relay's topics: ``<prefix>.`` and anything after it."""
    return f"^{re.escape(prefix)}\\..*"


def format_record(record: Any, catalogue: Catalogue) -> str:
    """``topic partition offset key ce_type ce_id body``, on one line, secrets masked."""
    key = "-" if record.key is None else bytes(record.key).decode("utf-8", "replace")
    body = b"" if record.value is None else mask_sensitive(bytes(record.value), catalogue)
    fields = [
        record.topic,
        str(record.partition),
        str(record.offset),
        key,
        header(record, "ce_type") or "-",
        header(record, "ce_id") or "-",
        body.decode("utf-8", "replace"),
    ]
    return " ".join(one_line(field) for field in fields)


class _KeepPositions(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Places each assigned partition where this tail left it, across rebalances.

    Nothing is committed, so after a rebalance (a new topic appeared) the group would restart
    every partition at its reset offset. Instead: a partition read before resumes where it
    was; one present at the start begins at its end (or its beginning with
    ``from_beginning``); one that appeared later begins at its beginning, since all of it is new.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, pattern: str, *, from_beginning: bool, log: TextIO
    ) -> None:
        self.consumer = consumer
        self.pattern = pattern
        self.from_beginning = from_beginning
        self.log = log
        self.started = False
        self.positions: dict[TopicPartition, int] = {}

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Nothing to do: the positions are kept as records are printed."""

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Seek every assigned partition to its kept, first or last position."""
        new = [tp for tp in assigned if tp not in self.positions]
        if new:
            at_end = not self.started and not self.from_beginning
            offsets = await (
                self.consumer.end_offsets(new) if at_end else self.consumer.beginning_offsets(new)
            )
            self.positions.update(offsets)
        self.started = True
        for tp in assigned:
            self.consumer.seek(tp, self.positions[tp])
        topics = len({tp.topic for tp in assigned})
        if topics:
            note = f"reading {len(assigned)} partitions of {topics} topics matching"
        else:
            note = "waiting for a topic matching"
        print(f"relay tail: {note} {self.pattern}", file=self.log, flush=True)


async def tail(
    settings: Settings,
    *,
    from_beginning: bool = False,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
    out: TextIO = sys.stdout,
    log: TextIO = sys.stderr,
) -> int:
    """Print records until ``max_records`` were printed or none came for ``idle_timeout_s``.

    Records go to ``out``, one line each; each (re)assignment of partitions is noted on
    ``log``. Returns the number of records printed.
    """
    async with checked_options(settings) as options:
        consumer = AIOKafkaConsumer(
            **options,
            group_id=f"relay-tail-{uuid.uuid4().hex}",
            client_id="relay-tail",
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )
        catalogue = load_catalogue()
        pattern = topic_pattern(settings.topic_prefix)
        listener = _KeepPositions(consumer, pattern, from_beginning=from_beginning, log=log)
        consumer.subscribe(pattern=pattern, listener=listener)
        printed = 0
        last_record = time.monotonic()
        try:
            await consumer.start()
            while max_records is None or printed < max_records:
                wait_ms = _POLL_MS
                if idle_timeout_s is not None:
                    left = idle_timeout_s - (time.monotonic() - last_record)
                    if left <= 0:
                        break
                    wait_ms = max(1, min(_POLL_MS, int(left * 1000)))
                batches = await consumer.getmany(timeout_ms=wait_ms)
                for tp, records in batches.items():
                    for record in records:
                        if max_records is not None and printed >= max_records:
                            break
                        print(format_record(record, catalogue), file=out, flush=True)
                        listener.positions[tp] = record.offset + 1
                        printed += 1
                        last_record = time.monotonic()
        finally:
            # Bounded: leaving the group waits on the coordinator, and Ctrl-C must never hang
            # on a broker that is still starting (its group coordinator not yet available).
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await consumer.stop()
            except TimeoutError:
                print("relay tail: gave up leaving the consumer group", file=log, flush=True)
        return printed
