"""The spool's frame codec: pure functions from entries to bytes and back.

A segment is a run of frames::

    magic "HRS1" | length u32 | crc32(length field + payload) u32 | payload

and a payload is one :class:`~relay.records.Record` with the time it was spooled::

    appended_at_ms u64 | topic (u16 length) | key (i32 length, -1: none) | value (u32 length)
    | header count u16 | per header: name (u16 length), value (u32 length)

All integers are big-endian. The value is the request body, byte for byte: no JSON on the
way in or out. These functions are pure, so the property tests in
``tests/test_spool.py`` can throw truncations and byte flips at them.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from relay.records import Record

MAGIC: Final = b"HRS1"
HEADER: Final = struct.Struct(">4sII")
HEADER_SIZE: Final = HEADER.size
#: a length field above this is damage, not a record (bodies are capped far lower)
MAX_PAYLOAD: Final = 64 * 1024 * 1024
SEGMENT_SUFFIX: Final = ".seg"
_U16, _U32, _I32, _U64 = (struct.Struct(f">{c}") for c in "HIiQ")


class FrameError(ValueError):
    """A payload that does not decode: damage that its checksum did not catch."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A spooled record and when it was spooled (Unix time in milliseconds)."""

    record: Record
    appended_at_ms: int


def encode_payload(entry: Entry) -> bytes:
    """The payload bytes of one entry (see the module docstring)."""
    r = entry.record
    topic = r.topic.encode("utf-8")
    parts = [_U64.pack(entry.appended_at_ms), _U16.pack(len(topic)), topic]
    parts += [_I32.pack(-1)] if r.key is None else [_I32.pack(len(r.key)), r.key]
    parts += [_U32.pack(len(r.value)), r.value, _U16.pack(len(r.headers))]
    for name, value in r.headers:
        raw = name.encode("utf-8")
        parts += [_U16.pack(len(raw)), raw, _U32.pack(len(value)), value]
    return b"".join(parts)


class _Reader:
    """Reads the fields of one payload in order; any overrun is a FrameError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if n < 0 or self.pos + n > len(self.data):
            raise FrameError("field runs past the payload")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def num(self, fmt: struct.Struct) -> int:
        """The next integer."""
        value: int = fmt.unpack(self.take(fmt.size))[0]
        return value

    def text(self) -> str:
        """A u16-prefixed UTF-8 string."""
        try:
            return self.take(self.num(_U16)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(str(exc)) from None


def decode_payload(payload: bytes) -> Entry:
    """The entry a payload holds; FrameError if it is not exactly one well-formed entry."""
    reader = _Reader(payload)
    appended = reader.num(_U64)
    topic = reader.text()
    key_len = reader.num(_I32)
    key = None if key_len == -1 else reader.take(key_len)
    value = reader.take(reader.num(_U32))
    headers = []
    for _ in range(reader.num(_U16)):
        name = reader.text()
        headers.append((name, reader.take(reader.num(_U32))))
    if reader.pos != len(payload):
        raise FrameError("bytes left over after the last header")
    return Entry(Record(topic, key, value, tuple(headers)), appended)


def encode_frame(entry: Entry) -> bytes:
    """One frame: magic, length, checksum, payload."""
    payload = encode_payload(entry)
    length = _U32.pack(len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return MAGIC + length + _U32.pack(crc) + payload


class Check(enum.Enum):
    """What lies at an offset of a segment."""

    OK = "ok"
    SHORT = "short"  # a frame that runs past the end: a torn write, or a damaged length
    BAD = "bad"  # wrong magic, checksum or payload


def frame_at(buf: bytes, pos: int) -> tuple[Check, Entry | None, int]:
    """Check the frame starting at ``pos``: its verdict, its entry if OK, and its end."""
    if len(buf) - pos < HEADER_SIZE:
        return Check.SHORT, None, len(buf)
    magic, length, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC or length > MAX_PAYLOAD:
        return Check.BAD, None, pos + 1
    end = pos + HEADER_SIZE + length
    if end > len(buf):
        return Check.SHORT, None, len(buf)
    payload = bytes(buf[pos + HEADER_SIZE : end])
    if zlib.crc32(payload, zlib.crc32(_U32.pack(length))) != crc:
        return Check.BAD, None, pos + 1
    try:
        return Check.OK, decode_payload(payload), end
    except FrameError:
        return Check.BAD, None, pos + 1


def resync(buf: bytes, pos: int) -> int | None:
    """The offset of the first verified frame after ``pos``, or None."""
    q = buf.find(MAGIC, pos + 1)
    while q != -1:
        if frame_at(buf, q)[0] is Check.OK:
            return q
        q = buf.find(MAGIC, q + 1)
    return None


@dataclass(frozen=True, slots=True)
class Scan:
    """What a segment's bytes hold."""

    #: (start, end, entry) of each verified frame, in order
    frames: list[tuple[int, int, Entry]]
    #: (start, end) of damaged spans followed by a verified frame
    corrupt: list[tuple[int, int]]
    #: where an unverifiable tail starts (a torn write), or None if the bytes end cleanly
    torn_at: int | None


def scan(buf: bytes) -> Scan:
    """Split a segment's bytes into verified frames, damaged spans and a torn tail."""
    frames: list[tuple[int, int, Entry]] = []
    corrupt: list[tuple[int, int]] = []
    pos = 0
    while pos < len(buf):
        check, entry, end = frame_at(buf, pos)
        if check is Check.OK and entry is not None:
            frames.append((pos, end, entry))
            pos = end
            continue
        found = resync(buf, pos)
        if found is None:
            return Scan(frames, corrupt, pos)
        corrupt.append((pos, found))
        pos = found
    return Scan(frames, corrupt, None)


def segment_name(seq: int) -> str:
    """The file name of segment ``seq``."""
    return f"{seq:020d}{SEGMENT_SUFFIX}"


#: stands for a damaged record the reader skipped: acknowledged without sending
SKIPPED: Final = Entry(Record("", None, b"", ()), 0)


def is_skipped(entry: Entry) -> bool:
    """Whether ``entry`` stands for damage the reader skipped (nothing to send)."""
    return entry is SKIPPED
