"""The spool: an on-disk log of verified records that Kafka could not take in time.

Layout of ``RELAY_SPOOL_DIR``::

    <dir>/lock                      flock'ed by the one relay that owns the spool
    <dir>/<seq:020d>.seg            segments, appended in order, rolled at spool_segment_bytes
    <dir>/corrupt/<seg>-<offset>.bin  bytes that failed their checksum, moved aside

The bytes of a segment are frames of :mod:`relay.spool.frames`.

:class:`Spool` does the I/O on one event loop: appends are queued and written by one task,
which fsyncs once per batch (group commit) before any of its appenders returns; a reader
(the drainer, ``relay/spool/spooler.py``) takes committed records from the oldest segment and
acknowledges them, and a segment is deleted once every record in it is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from relay.errors import ConfigError, SpoolError, SpoolFull
from relay.records import Record
from relay.spool.frames import (
    HEADER,
    HEADER_SIZE,
    SEGMENT_SUFFIX,
    SKIPPED,
    Check,
    Entry,
    decode_payload,
    encode_frame,
    frame_at,
    resync,
    scan,
    segment_name,
)

log = logging.getLogger(__name__)

# Drainer reads: enough for a batch of small records, and always one whole frame.
_READ_CHUNK: Final = 4 * 1024 * 1024


@dataclass
class _Segment:
    """One segment file: its committed size and the records in it not yet drained."""

    seq: int
    path: Path
    size: int
    records: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Committed records read from the oldest segment, for the drainer."""

    seq: int
    #: (end offset, entry) of each record, in order
    items: list[tuple[int, Entry]]


@dataclass
class Counters:
    """What the spool did since start-up; the metrics read these."""

    appends: int = 0
    #: writes, each followed by one fsync: fewer than appends under concurrency
    commits: int = 0
    drained: int = 0
    torn_tails: int = 0
    moved_aside: int = 0
    on_change: Callable[[str, int], None] = field(default=lambda kind, n: None, repr=False)

    def add(self, kind: str, n: int = 1) -> None:
        """Count ``n`` more of ``kind`` (a field name) and report it."""
        setattr(self, kind, getattr(self, kind) + n)
        self.on_change(kind, n)


def check_dir(directory: Path) -> None:
    """Create the spool directory if needed and prove it writable; ConfigError if not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"RELAY_SPOOL_DIR={directory}: not writable: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    """Make a file creation in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (a full disk shows as a short write, then an OSError)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, "no progress writing the spool")
        view = view[written:]


class Spool:
    """The on-disk log; one instance per directory (a lock file enforces it)."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.counters = Counters()
        self._segments: list[_Segment] = []
        self._head_fd: int | None = None  # the segment appends go to (the last one)
        self._next_seq = 0
        self._cursor = 0  # drain offset in self._segments[0]
        self._records = 0  # committed and not drained
        self._oldest_ms: int | None = None
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        self._pending_bytes = 0  # queued or being written
        self._pending_records = 0
        self._wake = asyncio.Event()
        self._committed = asyncio.Event()
        self._io = asyncio.Lock()  # the writer's batch against the drainer's deletes
        self._io_failed = False
        self._full = False  # an append was refused for room; until a segment is deleted
        self._lock_fd: int | None = None
        self._writer: asyncio.Task[None] | None = None

    # -- life cycle

    async def open(self) -> None:
        """Lock the directory, repair and index what a previous run left, start the writer."""
        await asyncio.to_thread(self._open_sync)
        self._writer = asyncio.create_task(self._write_loop(), name="spool-writer")

    def _open_sync(self) -> None:
        # Not check_dir's probe write: a relay restarted on a full disk must still drain it.
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"RELAY_SPOOL_DIR={self.directory}: {exc}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError(f"RELAY_SPOOL_DIR={self.directory}: not writable")
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ConfigError(
                f"RELAY_SPOOL_DIR={self.directory}: another relay holds its lock"
            ) from None
        paths = sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        for index, path in enumerate(paths):
            seq = int(path.stem)
            self._next_seq = max(self._next_seq, seq + 1)
            records = self._repair(path, last=index == len(paths) - 1)
            size = path.stat().st_size
            if records == 0:
                path.unlink()
                continue
            self._segments.append(_Segment(seq, path, size, records))
            self._records += records
        if self._segments:
            first = self._read_sync(self._segments[0], 0, 1).items
            self._oldest_ms = first[0][1].appended_at_ms if first else None
            log.warning(
                "spool: replaying what a previous run left",
                extra={"event": "spool_open", "records": self._records, "bytes": self.disk_bytes},
            )

    def _repair(self, path: Path, *, last: bool) -> int:
        """Move damaged spans aside, cut a torn tail; return the verified records."""
        data = path.read_bytes()
        found = scan(data)
        spans = list(found.corrupt)
        if found.torn_at is not None:
            if last:
                # A crash mid-write: those bytes were never fsynced, so never answered 2xx.
                self.counters.add("torn_tails")
                log.warning(
                    "spool: cut a torn tail",
                    extra={"segment": path.name, "offset": found.torn_at,
                           "bytes": len(data) - found.torn_at},
                )  # fmt: skip
            else:
                spans.append((found.torn_at, len(data)))
        for start, end in spans:
            self._move_aside(path, start, data[start:end])
        if spans or found.torn_at is not None:
            kept = b"".join(data[s:e] for s, e, _ in found.frames)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(kept)
            with tmp.open("rb+") as out:
                os.fsync(out.fileno())
            tmp.replace(path)
            _fsync_dir(self.directory)
        return len(found.frames)

    def _move_aside(self, path: Path, offset: int, data: bytes) -> None:
        aside = self.directory / "corrupt"
        aside.mkdir(exist_ok=True)
        (aside / f"{path.stem}-{offset}.bin").write_bytes(data)
        self.counters.add("moved_aside")
        log.error(
            "spool: a damaged span moved aside",
            extra={"segment": path.name, "offset": offset, "bytes": len(data)},
        )

    async def close(self) -> None:
        """Write what is queued, stop the writer, release the files."""
        if self._writer is not None:
            self._wake.set()
            while self._queue or self._pending_records:
                await self._committed.wait()
                self._committed.clear()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._head_fd is not None:
            os.close(self._head_fd)
            self._head_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- state

    @property
    def disk_bytes(self) -> int:
        """Bytes on disk in segments (a drained prefix counts until its segment goes)."""
        return sum(s.size for s in self._segments)

    @property
    def records(self) -> int:
        """Records written and not yet acknowledged by Kafka."""
        return self._records

    @property
    def empty(self) -> bool:
        """Nothing to drain and nothing being written."""
        return self._records == 0 and self._pending_records == 0

    @property
    def accepting(self) -> bool:
        """Whether appends succeed: none refused for room since, and the last write worked."""
        return not (self._io_failed or self._full)

    def oldest_age_s(self, now_ms: int | None = None) -> float:
        """Age of the oldest record not yet acknowledged, in seconds (0 when empty)."""
        if self._oldest_ms is None or self._records == 0:
            return 0.0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0.0, (now_ms - self._oldest_ms) / 1000)

    # -- appending

    async def append(self, record: Record) -> None:
        """Return once ``record`` is on disk and fsynced; SpoolFull or SpoolError if not."""
        frame = encode_frame(Entry(record, int(time.time() * 1000)))
        if self.disk_bytes + self._pending_bytes + len(frame) > self.max_bytes:
            self._full = True
            raise SpoolFull(f"spool holds {self.disk_bytes} bytes of {self.max_bytes}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((frame, done))
        self._pending_bytes += len(frame)
        self._pending_records += 1
        self._wake.set()
        # Shielded: a caller that goes away must not cancel the write other callers share.
        await asyncio.shield(done)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            frames = [frame for frame, _ in batch]
            size = sum(len(f) for f in frames)
            async with self._io:
                try:
                    await asyncio.to_thread(self._write_sync, frames, size)
                    error: OSError | None = None
                except OSError as exc:
                    error = exc
            self._pending_bytes -= size
            self._pending_records -= len(batch)
            self._io_failed = error is not None
            if error is None:
                if self._records == 0:
                    self._oldest_ms = decode_payload(frames[0][HEADER_SIZE:]).appended_at_ms
                self._records += len(batch)
                self.counters.add("commits")
                self.counters.add("appends", len(batch))
            else:
                log.error("spool: write failed", extra={"detail": str(error)})
            for _, done in batch:
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(SpoolError(f"spool write failed: {error}"))
            self._committed.set()

    def _write_sync(self, frames: list[bytes], size: int) -> None:
        """Append a batch to the head segment and fsync it (rolling first if it is full)."""
        head = self._segments[-1] if self._segments and self._head_fd is not None else None
        if head is None or (head.size and head.size + size > self.segment_bytes):
            head = self._roll()
        data = b"".join(frames)
        assert self._head_fd is not None  # noqa: S101 -- _roll opened it
        try:
            _write_all(self._head_fd, data)
            os.fdatasync(self._head_fd)
        except OSError:
            # Take back a partial write, so that the next batch follows whole frames.
            with contextlib.suppress(OSError):
                os.ftruncate(self._head_fd, head.size)
            raise
        head.size += len(data)
        head.records += len(frames)

    def _roll(self) -> _Segment:
        """Close the head segment and start a new one, durably named."""
        if self._head_fd is not None:
            os.close(self._head_fd)
            self._head_fd = None
        seq = self._next_seq
        path = self.directory / segment_name(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._next_seq += 1
        self._head_fd = fd
        segment = _Segment(seq, path, 0, 0)
        self._segments.append(segment)
        return segment

    # -- draining

    async def wait_committed(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the writer's next commit."""
        self._committed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._committed.wait()

    async def read(self, max_records: int, max_bytes: int = _READ_CHUNK) -> Batch | None:
        """Committed records from the drain cursor on (at most ``max_records``), or None."""
        async with self._io:
            while self._segments:
                segment = self._segments[0]
                sealed = len(self._segments) > 1 or self._head_fd is None
                if self._cursor < segment.size:
                    return await asyncio.to_thread(
                        self._read_sync, segment, self._cursor, max_records, max_bytes
                    )
                if not sealed:
                    return None
                self._drop_first()
        return None

    def _read_sync(self, segment: _Segment, offset: int, max_records: int,
                   max_bytes: int = _READ_CHUNK) -> Batch:  # fmt: skip
        limit = min(segment.size, offset + max(max_bytes, HEADER_SIZE))
        with segment.path.open("rb") as src:
            src.seek(offset)
            buf = src.read(limit - offset)
            items: list[tuple[int, Entry]] = []
            pos = 0
            while pos < len(buf) and len(items) < max_records:
                check, entry, end = frame_at(buf, pos)
                if check is Check.OK and entry is not None:
                    items.append((offset + end, entry))
                    pos = end
                    continue
                if check is Check.SHORT and limit < segment.size:
                    if items:
                        break  # the next frame is past this chunk: the next read gets it
                    # One frame larger than the chunk: read exactly it.
                    _, length, _ = HEADER.unpack_from(buf, 0)
                    src.seek(offset)
                    buf = src.read(min(HEADER_SIZE + length, segment.size - offset))
                    limit = offset + len(buf)
                    continue
                # Damage after the segment was verified at open (the disk, not a crash).
                src.seek(offset + pos)
                rest = src.read(segment.size - offset - pos)
                found = resync(rest, 0)
                skip = found if found is not None else len(rest)
                self._move_aside(segment.path, offset + pos, rest[:skip])
                self._records -= 1  # at least one record lost to the damage
                segment.records -= 1
                items.append((offset + pos + skip, SKIPPED))
                break
        return Batch(segment.seq, items)

    async def ack(self, batch: Batch, count: int) -> None:
        """Kafka acknowledged the first ``count`` records of ``batch``: move past them."""
        if count <= 0 or not self._segments or self._segments[0].seq != batch.seq:
            return
        acked = [e for _, e in batch.items[:count] if e is not SKIPPED]
        self._cursor = batch.items[count - 1][0]
        self._records -= len(acked)
        self._segments[0].records -= len(acked)
        self.counters.add("drained", len(acked))
        rest = batch.items[count:]
        if rest and rest[0][1] is not SKIPPED:
            self._oldest_ms = rest[0][1].appended_at_ms
        async with self._io:
            segment = self._segments[0]
            if self._cursor < segment.size:
                return
            if len(self._segments) > 1:
                self._drop_first()
            elif not self._pending_records:
                # The head is drained and nobody is writing: start afresh on the next append.
                if self._head_fd is not None:
                    os.close(self._head_fd)
                    self._head_fd = None
                self._drop_first()
        if self._segments and self._records:
            first = await self.read(1)
            if first is not None and first.items and first.items[0][1] is not SKIPPED:
                self._oldest_ms = first.items[0][1].appended_at_ms

    def _drop_first(self) -> None:
        """Delete the oldest segment: every record in it was acknowledged."""
        segment = self._segments.pop(0)
        segment.path.unlink(missing_ok=True)
        self._cursor = 0
        self._full = False
