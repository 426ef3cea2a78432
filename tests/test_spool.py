"""The spool on its own: the frame format (property tests) and the storage, on a real disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ConfigError, SpoolFull
from relay.records import Record
from relay.spool.frames import (
    HEADER_SIZE,
    Check,
    Entry,
    decode_payload,
    encode_frame,
    encode_payload,
    frame_at,
    scan,
    segment_name,
)
from relay.spool.store import Spool, check_dir

names = st.text(st.characters(codec="utf-8"), max_size=40)
records = st.builds(
    Record,
    topic=names,
    key=st.none() | st.binary(max_size=40),
    value=st.binary(max_size=300),
    headers=st.lists(st.tuples(names, st.binary(max_size=40)), max_size=6).map(tuple),
)
entries = st.builds(Entry, record=records, appended_at_ms=st.integers(0, 2**63))


def record(n: int, size: int = 20) -> Record:
    """A small record numbered ``n``, the way the relay builds them."""
    return Record(
        topic="hoopai.contacts",
        key=b"loc-1",
        value=f'{{"n": {n}, "pad": "{"x" * size}"}}'.encode(),
        headers=(("ce_id", f"id-{n}".encode()), ("content-type", b"application/json")),
    )


def segments(directory: Path) -> list[Path]:
    """The segment files in a spool directory, oldest first."""
    return sorted(directory.glob("*.seg"))


# --- the format ------------------------------------------------------------------------------


@given(entries)
def test_payload_roundtrip(entry: Entry) -> None:
    """A payload decodes to the entry it was made of; the value is byte-identical."""
    decoded = decode_payload(encode_payload(entry))
    assert decoded == entry
    assert decoded.record.value == entry.record.value


@given(st.lists(entries, min_size=1, max_size=4), st.data())
def test_any_truncation_is_a_torn_tail(items: list[Entry], data: st.DataObject) -> None:
    """Cut a run of frames anywhere: the whole frames before the cut survive, the rest is torn."""
    frames = [encode_frame(e) for e in items]
    whole = b"".join(frames)
    cut = data.draw(st.integers(0, len(whole)))
    ends, end = [], 0
    for frame in frames:
        end += len(frame)
        ends.append(end)
    kept = [e for e, end in zip(items, ends, strict=True) if end <= cut]
    found = scan(whole[:cut])
    assert [entry for _, _, entry in found.frames] == kept
    assert found.corrupt == []
    boundary = cut == 0 or cut in ends
    assert found.torn_at == (None if boundary else (ends[len(kept) - 1] if kept else 0))


@given(entries, st.data())
def test_any_byte_flip_is_detected(entry: Entry, data: st.DataObject) -> None:
    """Change any one byte of a frame: it no longer verifies."""
    frame = bytearray(encode_frame(entry))
    index = data.draw(st.integers(0, len(frame) - 1))
    frame[index] ^= data.draw(st.integers(1, 255))
    assert frame_at(bytes(frame), 0)[0] is not Check.OK
    assert scan(bytes(frame)).frames == []


@given(st.lists(entries, min_size=3, max_size=3), st.data())
def test_a_damaged_middle_frame_is_a_corrupt_span(items: list[Entry], data: st.DataObject) -> None:
    """Damage the middle of three frames: the outer two survive, the middle is one span."""
    first, middle, last = (encode_frame(e) for e in items)
    damaged = bytearray(middle)
    index = data.draw(st.integers(0, len(damaged) - 1))
    damaged[index] ^= data.draw(st.integers(1, 255))
    found = scan(first + bytes(damaged) + last)
    assert [e for _, _, e in found.frames] == [items[0], items[2]]
    assert found.corrupt == [(len(first), len(first) + len(middle))]
    assert found.torn_at is None


def test_garbage_is_never_a_frame() -> None:
    """Bytes that are not a frame: bad magic is BAD, a short header is SHORT."""
    assert frame_at(b"\x00" * 64, 0)[0] is Check.BAD
    assert frame_at(encode_frame(Entry(record(1), 0))[: HEADER_SIZE - 1], 0)[0] is Check.SHORT


# --- the storage -----------------------------------------------------------------------------


async def opened(directory: Path, max_bytes: int = 1 << 20, segment_bytes: int = 1 << 16) -> Spool:
    """A spool opened on ``directory``."""
    spool = Spool(directory, max_bytes, segment_bytes)
    await spool.open()
    return spool


async def drain_all(spool: Spool) -> list[Record]:
    """Read and acknowledge everything in the spool, in order."""
    out: list[Record] = []
    while (batch := await spool.read(50)) is not None and batch.items:
        out += [entry.record for _, entry in batch.items]
        await spool.ack(batch, len(batch.items))
    return out


async def test_append_survives_a_restart_and_drains_in_order(tmp_path: Path) -> None:
    """Appended records are there after a reopen, in order; draining deletes every segment."""
    spool = await opened(tmp_path, segment_bytes=300)
    for n in range(10):
        await spool.append(record(n))
    assert spool.records == 10
    assert len(segments(tmp_path)) > 1  # rolled at 300 bytes
    await spool.close()

    again = await opened(tmp_path, segment_bytes=300)
    assert again.records == 10
    assert again.oldest_age_s() >= 0
    assert await drain_all(again) == [record(n) for n in range(10)]
    assert again.empty
    assert again.counters.drained == 10
    assert segments(tmp_path) == []
    await again.close()


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    """Group commit: 200 concurrent appends take far fewer writes+fsyncs than 200."""
    spool = await opened(tmp_path)
    await asyncio.gather(*(spool.append(record(n)) for n in range(200)))
    assert spool.counters.appends == 200
    assert spool.counters.commits < 50
    assert await drain_all(spool) == [record(n) for n in range(200)]
    await spool.close()


async def test_a_torn_tail_is_cut_at_open(tmp_path: Path) -> None:
    """Half a frame at the end of the last segment (a crash mid-write) is cut and counted."""
    spool = await opened(tmp_path)
    for n in range(3):
        await spool.append(record(n))
    await spool.close()
    (last,) = segments(tmp_path)
    whole = last.stat().st_size
    half = encode_frame(Entry(record(99), 0))
    with last.open("ab") as out:
        out.write(half[: len(half) // 2])

    again = await opened(tmp_path)
    assert again.counters.torn_tails == 1
    assert last.stat().st_size == whole
    assert await drain_all(again) == [record(n) for n in range(3)]
    await again.close()


async def test_a_corrupt_record_in_the_middle_is_moved_aside(tmp_path: Path) -> None:
    """A damaged frame between good ones goes to corrupt/, counted; the others survive."""
    good = [encode_frame(Entry(record(n), 0)) for n in range(3)]
    damaged = bytearray(good[1])
    damaged[HEADER_SIZE + 5] ^= 0xFF
    (tmp_path / segment_name(7)).write_bytes(good[0] + bytes(damaged) + good[2])

    spool = await opened(tmp_path)
    assert spool.counters.moved_aside == 1
    assert spool.counters.torn_tails == 0
    (aside,) = (tmp_path / "corrupt").iterdir()
    assert aside.read_bytes() == bytes(damaged)
    assert aside.name == f"{segment_name(7).removesuffix('.seg')}-{len(good[0])}.bin"
    assert await drain_all(spool) == [record(0), record(2)]
    await spool.append(record(3))  # new appends go to a new segment, after the old ones
    assert segments(tmp_path)[-1].name == segment_name(8)
    await spool.close()


async def test_a_full_spool_refuses(tmp_path: Path) -> None:
    """Past spool_max_bytes an append raises SpoolFull; what was taken stays."""
    size = len(encode_frame(Entry(record(0), 0)))
    spool = await opened(tmp_path, max_bytes=3 * size + 10, segment_bytes=size)
    for n in range(3):
        await spool.append(record(n))
    with pytest.raises(SpoolFull):
        await spool.append(record(3))
    assert not spool.accepting
    assert await drain_all(spool) == [record(n) for n in range(3)]
    assert spool.accepting
    await spool.close()


async def test_partial_acks_resume_at_the_first_unacknowledged(tmp_path: Path) -> None:
    """Acknowledge part of a batch: the next read starts right after it."""
    spool = await opened(tmp_path)
    for n in range(5):
        await spool.append(record(n))
    batch = await spool.read(5)
    assert batch is not None
    await spool.ack(batch, 2)
    assert spool.records == 3
    assert await drain_all(spool) == [record(n) for n in range(2, 5)]
    await spool.close()


async def test_one_relay_per_spool_directory(tmp_path: Path) -> None:
    """A second spool on a locked directory is a configuration error."""
    spool = await opened(tmp_path)
    with pytest.raises(ConfigError, match="lock"):
        await opened(tmp_path)
    await spool.close()


def test_check_config_refuses_an_unwritable_spool_dir(tmp_path: Path) -> None:
    """check-config's check: a spool path under a regular file is a ConfigError naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="RELAY_SPOOL_DIR="):
        check_dir(blocker / "spool")
    check_dir(tmp_path / "new" / "spool")  # created, written, fine
    assert (tmp_path / "new" / "spool").is_dir()
