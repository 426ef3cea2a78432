"""Quarantine: keep the deliveries refused for their signature, for a redrive after a key change.

Off by default (``RELAY_QUARANTINE``). When on, a delivery answered 401 is also written to
``<prefix>.quarantine``: the body byte for byte, its signature headers as received, the
reason, the peer address and the receive time, and ``hoopai_untrusted: true``. Nothing in it
is trusted: ``relay redrive --from quarantine`` verifies every body again with the keys
configured then, and moves only those that pass.

Anyone can send a 401: the quarantine must never become a way to flood Kafka. Per window
(``quarantine_window_s``) at most ``quarantine_max_records`` records and
``quarantine_max_bytes`` body bytes are written, per process; the rest are dropped and
counted. The write never holds the 401: it is handed to the producer and its ack counted
when it comes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from aiokafka.structs import RecordMetadata

from relay.records import Record

log = logging.getLogger(__name__)

#: the topic's last part, after the prefix
SUFFIX: Final = "quarantine"
#: the request headers kept with a quarantined body (lower case, as Kafka headers)
SIGNATURE_HEADERS: Final = ("x-ghl-signature", "x-wh-signature")
UNTRUSTED: Final = ("hoopai_untrusted", b"true")
REASON: Final = "hoopai_quarantine_reason"
PEER: Final = "hoopai_peer"
RECEIVED_AT: Final = "hoopai_received_at"
#: every header a quarantined record has that a redriven one must not keep
QUARANTINE_ONLY: Final = frozenset({UNTRUSTED[0], REASON, PEER, RECEIVED_AT, *SIGNATURE_HEADERS})

Send = Callable[[Record], Awaitable[asyncio.Future[RecordMetadata]]]


def topic(prefix: str) -> str:
    """The quarantine topic of ``prefix``."""
    return f"{prefix}.{SUFFIX}"


def quarantine_record(
    body: bytes,
    signatures: Iterable[tuple[str, str]],
    *,
    prefix: str,
    reason: str,
    peer: str | None,
    received_at: datetime,
) -> Record:
    """The record of one refused delivery: the body as received, marked untrusted."""
    headers = [
        UNTRUSTED,
        (REASON, reason.encode("ascii")),
        (PEER, (peer or "unknown").encode("utf-8", "backslashreplace")),
        (RECEIVED_AT, received_at.isoformat(timespec="milliseconds").encode("ascii")),
    ]
    headers += [
        (name.lower(), value.encode("utf-8", "backslashreplace")) for name, value in signatures
    ]
    return Record(topic=topic(prefix), key=None, value=body, headers=tuple(headers))


@dataclass
class Window:
    """The two caps of one window: records and bytes admitted since ``started``."""

    max_records: int
    max_bytes: int
    window_s: float
    started: float = float("-inf")
    records: int = 0
    bytes: int = 0

    def admit(self, size: int, now: float) -> str | None:
        """None if a record of ``size`` bytes may be written now, else the cap it is over."""
        if now - self.started >= self.window_s:
            self.started, self.records, self.bytes = now, 0, 0
        if self.records >= self.max_records:
            return "dropped_records"
        if self.bytes + size > self.max_bytes:
            return "dropped_bytes"
        self.records += 1
        self.bytes += size
        return None


class Quarantine:
    """Writes refused deliveries within the window's caps; ``count`` gets each outcome."""

    def __init__(self, prefix: str, window: Window, send: Send, count: Callable[[str], None]):
        self.prefix = prefix
        self.window = window
        self._send = send
        self._count = count
        self._writes: set[asyncio.Task[None]] = set()

    def offer(
        self,
        body: bytes,
        signatures: Iterable[tuple[str, str]],
        reason: str,
        peer: str | None,
        received_at: datetime,
    ) -> None:
        """Write this refused delivery in the background if the caps allow; never waits."""
        loop = asyncio.get_running_loop()
        dropped = self.window.admit(len(body), loop.time())
        if dropped is not None:
            self._count(dropped)
            return
        record = quarantine_record(
            body, signatures, prefix=self.prefix, reason=reason, peer=peer, received_at=received_at
        )
        # Bounded: at most max_records tasks are started per window.
        task = loop.create_task(self._write(record), name="quarantine-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, record: Record) -> None:
        try:
            await (await self._send(record))
        except Exception as exc:  # NotConnected, a KafkaError: counted, the 401 is unchanged
            log.warning("quarantine write failed", extra={"detail": repr(exc)})
            self._count("failed")
            return
        self._count("written")

    async def close(self) -> None:
        """Wait for the writes under way (the producer's request timeout bounds each)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
