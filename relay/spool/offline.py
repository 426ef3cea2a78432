"""``relay spool``: look inside a spool, and empty it into Kafka, with no relay running.

For the volume of a pod that is gone (a StatefulSet scaled down, a node lost): records it
answered 2xx for sit in its spool, and only a relay started on that same volume would replay
them. These functions work on the directory alone.

- :func:`status` and :func:`export` only read. They never take the spool's lock, so they are
  safe beside a live relay (its figures then move while they read); whether one holds the
  lock is reported, found with a non-blocking shared ``flock`` released at once.
- :func:`drain` takes the lock as ``relay serve`` does (:class:`~relay.spool.store.Spool`),
  so it refuses a spool a live relay holds, and replays with the relay's own drainer
  (:class:`~relay.spool.spooler.Spooler`) until the spool is empty.

A spool of a ``--workers`` run is one folder per worker (``worker-<i>``, see
``relay/workers.py``): each is read, and drained, in turn.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from relay.errors import ConfigError
from relay.kafka.publisher import Publisher
from relay.settings import Settings
from relay.spool.frames import SEGMENT_SUFFIX, Entry, scan
from relay.spool.spooler import Spooler
from relay.spool.store import Spool

_LOCK = "lock"


class NotDrained(Exception):
    """Kafka did not take every record in time; the rest stay in the spool, in order."""


def spool_folders(directory: Path) -> list[Path]:
    """The spool folders under ``directory``: itself, then each ``worker-<i>``, in order."""
    return [directory, *sorted(p for p in directory.glob("worker-*") if p.is_dir())]


def held_by_live_relay(folder: Path) -> bool:
    """Whether a process holds the spool's lock now (a relay, or a drain)."""
    try:
        fd = os.open(folder / _LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)  # at once: a relay starting now must get it
        return False
    finally:
        os.close(fd)


@dataclass
class FolderStatus:
    """What one spool folder holds."""

    path: Path
    live: bool
    segments: int = 0
    records: int = 0
    bytes: int = 0
    oldest_ms: int | None = None
    #: damaged spans inside segments (a relay moves them aside at start-up), torn tails
    damaged_spans: int = 0
    torn_tails: int = 0
    #: files already moved aside to ``corrupt/``
    moved_aside: int = 0
    topics: dict[str, int] = field(default_factory=dict)

    def as_json(self, now_ms: int) -> dict[str, Any]:
        """The figures as one JSON object."""
        age = None if self.oldest_ms is None else round((now_ms - self.oldest_ms) / 1000, 3)
        return {
            "path": str(self.path),
            "held_by_live_relay": self.live,
            "segments": self.segments,
            "records": self.records,
            "bytes": self.bytes,
            "oldest_record_age_s": age,
            "damaged_spans": self.damaged_spans,
            "torn_tails": self.torn_tails,
            "moved_aside": self.moved_aside,
            "topics": self.topics,
        }


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SEGMENT_SUFFIX}"))


def _entries(folder: Path) -> Iterator[tuple[Path, int, Entry]]:
    """Every verified record of a folder in drain order: (segment, offset, entry)."""
    for path in _segments(folder):
        for start, _, entry in scan(path.read_bytes()).frames:
            yield path, start, entry


def status(directory: Path) -> list[FolderStatus]:
    """The status of every spool folder under ``directory`` (ConfigError if none)."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such spool directory")
    found = []
    for folder in spool_folders(directory):
        state = FolderStatus(folder, held_by_live_relay(folder))
        paths = _segments(folder)
        for path in paths:
            data = path.read_bytes()
            seen = scan(data)
            state.segments += 1
            state.bytes += len(data)
            state.records += len(seen.frames)
            state.damaged_spans += len(seen.corrupt)
            state.torn_tails += seen.torn_at is not None
            for _, _, entry in seen.frames:
                if state.oldest_ms is None:
                    state.oldest_ms = entry.appended_at_ms
                topic = entry.record.topic
                state.topics[topic] = state.topics.get(topic, 0) + 1
        aside = folder / "corrupt"
        state.moved_aside = len(list(aside.iterdir())) if aside.is_dir() else 0
        if folder == directory or paths or state.live:
            found.append(state)
    return found


def status_lines(folders: list[FolderStatus]) -> list[str]:
    """``relay spool status`` as text: one line per folder, then the layout."""
    now_ms = int(time.time() * 1000)
    lines = []
    for f in folders:
        info = f.as_json(now_ms)
        age = "-" if info["oldest_record_age_s"] is None else f"{info['oldest_record_age_s']} s"
        lines.append(
            f"{f.path}: {f.records} records, {f.bytes} bytes in {f.segments} segments, "
            f"oldest {age}, damaged spans {f.damaged_spans}, torn tails {f.torn_tails}, "
            f"moved aside {f.moved_aside}; "
            + ("HELD by a live relay" if f.live else "not held by any process")
        )
    workers = [f for f in folders if f.path.name.startswith("worker-")]
    layout = f"{len(workers)} worker folders (--workers)" if workers else "one process"
    lines.append(f"layout: {layout}; {sum(f.records for f in folders)} records in all")
    return lines


def _text_or_b64(raw: bytes | None, name: str) -> dict[str, Any]:
    if raw is None:
        return {name: None}
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(raw).decode("ascii")}


def export(directory: Path) -> Iterator[bytes]:
    """Every record of the spool as one JSON line each, in drain order (no lock taken)."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such spool directory")
    for folder in spool_folders(directory):
        for path, offset, entry in _entries(folder):
            r = entry.record
            line = {
                "segment": str(path),
                "offset": offset,
                "spooled_at": datetime.fromtimestamp(entry.appended_at_ms / 1000, UTC).isoformat(),
                "topic": r.topic,
                **_text_or_b64(r.key, "key"),
                **_text_or_b64(r.value, "value"),
                "headers": {n: v.decode("utf-8", "backslashreplace") for n, v in r.headers},
            }
            yield orjson.dumps(line)


def _held(folder: Path) -> ConfigError:
    return ConfigError(
        f"{folder}: a live relay holds this spool's lock and drains it itself; "
        "stop that relay first, or leave the spool to it"
    )


async def _drain_folder(folder: Path, settings: Settings, timeout_s: float) -> int:
    spool = Spool(folder, settings.spool_max_bytes, settings.spool_segment_bytes)
    try:
        await spool.open()  # takes the lock: a ConfigError naming it if a relay holds it
    except ConfigError:
        raise _held(folder) from None
    publisher = Publisher(settings)
    before = spool.records
    try:
        async with asyncio.timeout(timeout_s):
            await publisher.connect()
            await Spooler(publisher, spool, settings).drain(until_empty=True)
    except TimeoutError:
        raise NotDrained(
            f"{folder}: not drained within {timeout_s:.0f} s ({spool.records} records left; "
            "is Kafka reachable at RELAY_KAFKA_BOOTSTRAP_SERVERS?)"
        ) from None
    finally:
        await publisher.close()
        await spool.close()
    return before


async def drain(directory: Path, settings: Settings, timeout_s: float) -> list[tuple[Path, int]]:
    """Empty every spool folder under ``directory`` into Kafka, in order; records per folder."""
    if not directory.is_dir():  # noqa: ASYNC240 -- one stat before anything runs
        raise ConfigError(f"{directory}: no such spool directory")
    folders = spool_folders(directory)
    live = [f for f in folders if held_by_live_relay(f)]
    if live:  # before any folder is drained: all or none
        raise _held(live[0])
    return [(folder, await _drain_folder(folder, settings, timeout_s)) for folder in folders]
