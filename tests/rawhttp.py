"""HTTP/1.1 over bare sockets, for requests an HTTP client would refuse or normalise.

aiohttp's client merges repeated headers, fixes Content-Length and never trickles; the
hostile tests need the exact bytes on the wire, and to see whether the relay answered
or closed. Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
WEBHOOK_PATH = "/webhooks/hoopai"
Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class Reply:
    """What came back on one connection: the first answer, or none (closed, or silent)."""

    #: None: the connection closed (or the wait ran out) without an answer
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: whether the relay closed the connection (EOF or reset) within the wait
    closed: bool = False
    #: from the last byte sent to the answer's end or the close
    seconds: float = 0.0


def request(
    body: bytes | None,
    headers: Sequence[Header] = (),
    *,
    method: bytes = b"POST",
    path: bytes = WEBHOOK_PATH.encode(),
    content_length: int | None = None,
    close: bool = True,
) -> bytes:
    """A request's bytes: Content-Length is the body's unless given; ``None`` body: head only."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: " + HOST.encode()]
    lines += [name + b": " + value for name, value in headers]
    if content_length is None and body is not None:
        content_length = len(body)
    if content_length is not None:
        lines.append(b"Content-Length: %d" % content_length)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def parse(raw: bytes, *, closed: bool, seconds: float) -> Reply:
    """The first answer in ``raw`` (by its Content-Length), or a Reply without status."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return Reply(None, closed=closed, seconds=seconds)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Reply(int(status_line.split()[1]), headers, rest[:length], closed, seconds)


async def exchange(
    port: int, chunks: Sequence[bytes], *, pause: float = 0.0, wait: float = 10.0
) -> Reply:
    """Send ``chunks`` ``pause`` s apart (until an answer); read to EOF, ``wait`` s at most."""
    reader, writer = await asyncio.open_connection(HOST, port)
    received = bytearray()  # kept when the wait runs out: an answer without a close

    async def read_all() -> bool:
        """Read until EOF; True if the relay closed (EOF or reset)."""
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        except ConnectionError:
            pass
        return True

    reading = asyncio.create_task(read_all())
    try:
        for i, chunk in enumerate(chunks):
            if i and pause:
                await asyncio.sleep(pause)
            if received or reading.done():
                break  # answered or closed: a real client stops sending too
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break
        sent = time.monotonic()
        try:
            async with asyncio.timeout(wait):
                closed = await asyncio.shield(reading)
        except TimeoutError:
            closed = False
        return parse(bytes(received), closed=closed, seconds=time.monotonic() - sent)
    finally:
        reading.cancel()
        writer.close()


def exchange_sync(port: int, data: bytes, *, wait: float = 10.0) -> Reply:
    """Send ``data`` at once on a blocking socket and read until EOF (at most ``wait`` s)."""
    with socket.create_connection((HOST, port), timeout=wait) as sock:
        sent = time.monotonic()
        chunks, closed = [], False
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            closed = True
        except ConnectionError:
            closed = True
        except TimeoutError:
            pass
        return parse(b"".join(chunks), closed=closed, seconds=time.monotonic() - sent)


def server_connections(port: int) -> int:
    """Open sockets on the relay's side of ``port`` (ESTABLISHED or CLOSE_WAIT), from /proc."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            # 01 ESTABLISHED, 08 CLOSE_WAIT: the relay still holds the socket open.
            if local_port == port and fields[3] in ("01", "08"):
                count += 1
    return count
