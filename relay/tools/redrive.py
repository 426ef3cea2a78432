"""``relay redrive --from TOPIC``: put records back where the configuration now sends them.

After a key change (records in ``<prefix>.quarantine``) or a routing fix (records in
``unrouted`` or ``deadletter``), each record of the topic is, in order:

1. verified again over its body with the keys configured now (:func:`signatures.verify`):
   one that still fails stays where it is and is counted as *still refused*;
2. routed with the current catalogue and routes (:func:`intake`): one whose topic is still
   the one it is read from (still unrouted) is *skipped*, and so is a record the relay did
   not write (no signature header);
3. produced to its topic with its key, its original ``ce_id`` and headers (the routing's
   own headers renewed) and ``hoopai_redriven_from: <topic>/<partition>/<offset>``, by the
   relay's idempotent ``acks=all`` producer (:class:`~relay.kafka.publisher.Publisher`).

It reads with a consumer group of its own (``--group``) and commits a partition's offsets
only after every record before them was acknowledged: an interrupted redrive resumes where
its last commit was, so at worst it produces one batch again (same ``ce_id``: consumers
dedup), and a finished one run again finds nothing new. Each partition is read up to its
end as of the start (or ``--until``), so a redrive always ends.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata

from relay.ingress import quarantine
from relay.ingress.intake import intake
from relay.ingress.routing import Routes, all_topics
from relay.ingress.signatures import KeySet, Reason, Rejected, Scheme, Verified, verify
from relay.kafka.options import checked_options
from relay.kafka.publisher import Publisher
from relay.records import Record
from relay.settings import Settings

#: the short names of ``--from``, each ``<prefix>.<name>``
SHORT_NAMES: Final = ("quarantine", "unrouted", "deadletter")
REDRIVEN_FROM: Final = "hoopai_redriven_from"
#: headers the routing decides: renewed from the current routing, the others kept
_ROUTING_HEADERS: Final = frozenset({"ce_type", "hoopai_key_source", "hoopai_deadletter_reason"})
_BATCH: Final = 500
#: a partition that yields nothing this long before its end offset is done (control records)
_IDLE_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Moved:
    """Goes to ``record.topic``."""

    record: Record


@dataclass(frozen=True, slots=True)
class Refused:
    """Still fails verification with the keys configured now: left where it is."""

    reason: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """Left where it is for ``why``: the routing sends it to the same topic, or no signature."""

    why: str


Decision = Moved | Refused | Skipped


def source_topic(name: str, prefix: str) -> str:
    """``quarantine``, ``unrouted``, ``deadletter`` are the prefixed topics; else as given."""
    return f"{prefix}.{name}" if name in SHORT_NAMES else name


def _values(headers: Sequence[tuple[str, bytes]], name: str) -> list[str]:
    return [v.decode("utf-8", "replace") for n, v in headers if n == name]


def _verdict(
    value: bytes, headers: Sequence[tuple[str, bytes]], keys: KeySet, legacy: bool
) -> Verified | Rejected | None:
    """The signature verdict over ``value`` with ``keys``, or None if the record has none."""
    if (quarantine.UNTRUSTED[0], quarantine.UNTRUSTED[1]) in headers:
        ghl, wh = (_values(headers, n) for n in quarantine.SIGNATURE_HEADERS)
        if len(ghl) > 1 or len(wh) > 1:
            return Rejected(Reason.AMBIGUOUS)  # as the relay's own 401 would have said
        return verify(value, next(iter(ghl), None), next(iter(wh), None), keys,
                      accept_legacy_rsa=legacy)  # fmt: skip
    signature = next(iter(_values(headers, "hoopai_signature")), None)
    scheme = next(iter(_values(headers, "hoopai_signature_scheme")), None)
    if signature is None:
        return None
    if scheme == Scheme.RSA_SHA256:
        return verify(value, None, signature, keys, accept_legacy_rsa=legacy)
    return verify(value, signature, None, keys, accept_legacy_rsa=legacy)


def decide(
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
    origin: tuple[str, int, int],
    keys: KeySet,
    routes: Routes,
    settings: Settings,
) -> Decision:
    """What a redrive does with one record read at ``origin`` (topic, partition, offset)."""
    verdict = _verdict(value, headers, keys, settings.accept_legacy_rsa)
    if verdict is None:
        return Skipped("no_signature")
    if isinstance(verdict, Rejected):
        return Refused(verdict.reason.value)
    received = next(iter(_values(headers, quarantine.RECEIVED_AT)), None)
    received_at = datetime.fromisoformat(received) if received else datetime.now(UTC)
    taken = intake(value, verdict, routes, source=settings.ce_source, received_at=received_at)
    if taken.record.topic == origin[0]:
        return Skipped("same_topic")
    if (quarantine.UNTRUSTED[0], quarantine.UNTRUSTED[1]) in headers:
        kept: list[tuple[str, bytes]] = list(taken.record.headers)  # as if accepted then
    else:
        kept = [(n, v) for n, v in headers if n not in _ROUTING_HEADERS and n != REDRIVEN_FROM]
        kept += [(n, v) for n, v in taken.record.headers if n in _ROUTING_HEADERS]
    kept.append((REDRIVEN_FROM, "/".join(map(str, origin)).encode("utf-8")))
    return Moved(Record(taken.record.topic, taken.record.key, value, tuple(kept)))


@dataclass
class Summary:
    """What a redrive did."""

    read: int = 0
    moved: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    to: Counter[str] = field(default_factory=Counter)

    def count(self, decision: Decision) -> None:
        """Count one decision."""
        self.read += 1
        if isinstance(decision, Moved):
            self.moved += 1
            self.to[decision.record.topic] += 1
        elif isinstance(decision, Refused):
            self.refused[decision.reason] += 1
        else:
            self.skipped[decision.why] += 1

    @property
    def left_behind(self) -> int:
        """Records read and not moved."""
        return self.read - self.moved

    def lines(self, dry_run: bool) -> list[str]:
        """The summary printed at the end."""
        verb = "would move" if dry_run else "moved"
        out = [
            f"relay redrive: read {self.read}; {verb} {self.moved}; "
            f"still refused {sum(self.refused.values())}; skipped {sum(self.skipped.values())}"
        ]
        out += [f"  {verb} to {topic}: {n}" for topic, n in sorted(self.to.items())]
        out += [f"  still refused ({why}): {n}" for why, n in sorted(self.refused.items())]
        out += [f"  skipped ({why}): {n}" for why, n in sorted(self.skipped.items())]
        if dry_run:
            out.append("  dry run: nothing produced, no offsets committed")
        return out


@dataclass(frozen=True, slots=True)
class Range:
    """Where to read: times in ms since the epoch and offsets, each bound optional."""

    since_ms: int | None = None
    until_ms: int | None = None
    start_offset: int | None = None
    end_offset: int | None = None


async def _bounds(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], where: Range
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition, [first, end) to read: the group's position and the range."""
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    since = await consumer.offsets_for_times({tp: where.since_ms for tp in tps}) if (
        where.since_ms is not None
    ) else {}  # fmt: skip
    until = await consumer.offsets_for_times({tp: where.until_ms for tp in tps}) if (
        where.until_ms is not None
    ) else {}  # fmt: skip
    out = {}
    for tp in tps:
        first = max(begin[tp], where.start_offset or 0)
        if tp in since:
            first = max(first, since[tp].offset if since[tp] is not None else end[tp])
        committed = await consumer.committed(tp)
        if committed is not None:
            first = max(first, committed)
        last = end[tp] if where.end_offset is None else min(end[tp], where.end_offset)
        if tp in until and until[tp] is not None:
            last = min(last, until[tp].offset)
        out[tp] = (first, last)
    return out


async def _partitions(options: dict[str, Any], topic: str) -> list[int]:
    """The partitions of ``topic``; none if it does not exist (nothing to redrive)."""
    admin = AIOKafkaAdminClient(**options, client_id="relay-redrive")
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described.get("partitions", []))


class _Progress:
    """A one-line progress bar on a terminal; nothing otherwise."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream, self.total = stream, total
        self.on = stream.isatty()
        self.last = 0.0

    def show(self, summary: Summary, *, final: bool = False) -> None:
        if not self.on or (not final and time.monotonic() - self.last < 0.2):
            return
        self.last = time.monotonic()
        done = min(summary.read, self.total)
        width = 30
        filled = width * done // self.total if self.total else width
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} moved {summary.moved}")
        if final:
            self.stream.write("\n")
        self.stream.flush()


async def redrive(
    settings: Settings,
    keys: KeySet,
    routes: Routes,
    *,
    source: str,
    group: str,
    where: Range = Range(),
    dry_run: bool = False,
    out: TextIO = sys.stdout,
    progress: TextIO = sys.stderr,
    connect_timeout_s: float = 60.0,
) -> Summary:
    """Redrive ``source`` (a full topic name); see the module docstring."""
    summary = Summary()
    async with checked_options(settings) as options:
        consumer = AIOKafkaConsumer(
            **options, group_id=group, client_id="relay-redrive", enable_auto_commit=False
        )
        publisher = Publisher(settings, all_topics(routes))
        await consumer.start()
        try:
            tps = [TopicPartition(source, p) for p in await _partitions(options, source)]
            if not tps:
                return summary
            consumer.assign(tps)
            bounds = await _bounds(consumer, tps, where)
            bar = _Progress(progress, sum(max(0, b - a) for a, b in bounds.values()))
            if not dry_run:
                async with asyncio.timeout(connect_timeout_s):
                    await publisher.connect()
            for tp in tps:
                await _partition(consumer, publisher, tp, bounds[tp], keys, routes, settings,
                                 summary, bar, dry_run, out)  # fmt: skip
            bar.show(summary, final=True)
        finally:
            await publisher.close()
            await consumer.stop()
    return summary


async def _partition(
    consumer: AIOKafkaConsumer,
    publisher: Publisher,
    tp: TopicPartition,
    bounds: tuple[int, int],
    keys: KeySet,
    routes: Routes,
    settings: Settings,
    summary: Summary,
    bar: _Progress,
    dry_run: bool,
    out: TextIO,
) -> None:
    """Redrive one partition from ``bounds[0]`` to before ``bounds[1]``, batch by batch."""
    first, end = bounds
    if first >= end:
        return
    consumer.seek(tp, first)
    idle_since = time.monotonic()
    while await consumer.position(tp) < end:
        fetched = (await consumer.getmany(tp, timeout_ms=1000, max_records=_BATCH)).get(tp, [])
        batch = [r for r in fetched if r.offset < end]
        if not batch:
            if time.monotonic() - idle_since > _IDLE_S:
                break  # only control records (transaction markers) or gaps are left
            continue
        idle_since = time.monotonic()
        acks: list[asyncio.Future[RecordMetadata]] = []
        for r in batch:
            origin = (tp.topic, tp.partition, r.offset)
            decision = decide(
                bytes(r.value or b""), list(r.headers), origin, keys, routes, settings
            )
            summary.count(decision)
            if dry_run:
                print(_describe(r.offset, decision), file=out)
            elif isinstance(decision, Moved):
                acks.append(await publisher.send(decision.record))
        if not dry_run:
            await asyncio.gather(*acks)  # a failed ack raises: nothing past it is committed
            await consumer.commit({tp: batch[-1].offset + 1})
        bar.show(summary)
        if batch[-1].offset + 1 >= end:
            break


def _describe(offset: int, decision: Decision) -> str:
    """One ``--dry-run`` line."""
    if isinstance(decision, Moved):
        key = "-" if decision.record.key is None else decision.record.key.decode("utf-8", "replace")
        return f"{offset}: would move to {decision.record.topic} key {key}"
    if isinstance(decision, Refused):
        return f"{offset}: still refused ({decision.reason})"
    return f"{offset}: skipped ({decision.why})"
