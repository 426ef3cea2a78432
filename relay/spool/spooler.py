"""The delivery with the spool on: direct while it is empty, else through it; one drainer.

Kafka cannot take a record in time: spool it, answer 2xx, drain the spool in order later.

Two modes, switched only here:

- *direct*: the spool is empty; a record is published as without the spool, but waits at
  most ``spool_after_ms`` for its ack. If Kafka cannot take it (not connected, no ack in
  time, a retriable produce error), the record is appended to the spool
  and the request answered 2xx once it is fsynced. That switches to:
- *spooling*: every new record is appended behind the ones already spooled, so that one
  location's events reach Kafka in the order they were answered. One drainer task replays
  the spool with the same producer and switches back to direct only when the spool is empty,
  with no ``await`` between that check and the switch.

A record whose direct wait was abandoned may still land from the producer's buffer, and a
drain interrupted before its acks were recorded is replayed: both are duplicates with the
same ``ce_id`` (consumers dedup), never losses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiokafka.structs import RecordMetadata

from relay.delivery import Readiness, Receipt, Spooled
from relay.errors import AckTimeout, NotConnected, ProduceFailed, PublishError
from relay.kafka.publisher import Publisher
from relay.metrics import Metrics, in_files
from relay.records import Record
from relay.settings import Settings
from relay.spool.frames import is_skipped
from relay.spool.store import Batch, Spool

log = logging.getLogger(__name__)

#: records sent at once by the drainer; after a failure it restarts with one
DRAIN_BATCH: Final = 256
_BACKOFF_MIN_S: Final = 0.5
_BACKOFF_MAX_S: Final = 5.0
#: a drain batch's acks must all settle within this, or the batch is retried
_BATCH_TIMEOUT_S: Final = 60.0
#: under ``--workers``, how often the spool's gauges are written to the worker's files
_GAUGES_EVERY_S: Final = 1.0


class Spooler:
    """The :class:`~relay.delivery.Delivery` when ``spool_dir`` is set (see the module docstring).

    Made once the spool is open: a spool left by a previous run is drained first.
    """

    def __init__(self, publisher: Publisher, spool: Spool, settings: Settings) -> None:
        self.publisher = publisher
        self.spool = spool
        self._spool_after_s = settings.spool_after_ms / 1000
        self._spooling = not spool.empty  # a spool left by a previous run is drained first
        self._wake = asyncio.Event()

    @property
    def spooling(self) -> bool:
        """Whether new records go through the spool."""
        return self._spooling

    def readiness(self) -> Readiness:
        """Kafka's problems do not make the pod unready while the spool accepts.

        The pod still answers 2xx for what it takes: ``degraded`` with the problems and the
        spool's state, and ``unavailable`` only once the spool is full (or cannot be written).
        """
        problems = self.publisher.problems()
        detail = {"spool": self.status()}
        if not self.spool.accepting:
            return Readiness("unavailable", (*problems, "spool: full or not writable"), detail)
        if problems or self._spooling:
            return Readiness("degraded", problems, detail)
        return Readiness("ready", (), detail)

    def status(self) -> dict[str, object]:
        """The spool's state, for readiness."""
        return {
            "mode": "spooling" if self._spooling else "direct",
            "records": self.spool.records,
            "bytes": self.spool.disk_bytes,
            "max_bytes": self.spool.max_bytes,
            "oldest_record_age_s": round(self.spool.oldest_age_s(), 3),
            "accepting": self.spool.accepting,
        }

    async def deliver(self, record: Record, deadline: float) -> Receipt:
        """Kafka's ack (direct), or :class:`Spooled` once the record is fsynced in the spool.

        Raises a PublishError when neither worked: SpoolFull, SpoolError, or a produce
        error that is not transient (the spool would only replay it into the same refusal).
        """
        if not self._spooling:
            loop = asyncio.get_running_loop()
            try:
                return await self.publisher.publish(
                    record, min(deadline, loop.time() + self._spool_after_s)
                )
            except (NotConnected, AckTimeout) as exc:
                cause: PublishError = exc
            except ProduceFailed as exc:
                if not exc.retriable:
                    raise
                cause = exc
            log.info("spooling", extra={"cause": cause.label})
        # Set before the append's await: requests after this one queue behind it.
        self._spooling = True
        self._wake.set()
        await self.spool.append(record)
        return Spooled()

    async def drain(self, *, until_empty: bool = False) -> None:
        """Replay the spool into Kafka for ever (a task; cancelled at shutdown).

        ``until_empty``: return once the spool is empty (``relay spool drain``).
        """
        await self.publisher.wait_connected()
        delay, size = _BACKOFF_MIN_S, DRAIN_BATCH
        while True:
            if self.spool.empty:
                if until_empty:
                    return
                if self._spooling:
                    log.info("spool drained: publishing directly again")
                self._spooling = False  # no await since the check: nothing slips in between
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self.spool.read(size)
            if batch is None or not batch.items:
                await self.spool.wait_committed(timeout_s=1.0)  # being written: not readable yet
                continue
            acked = await self._send(batch)
            await self.spool.ack(batch, acked)
            if acked == len(batch.items):
                delay, size = _BACKOFF_MIN_S, DRAIN_BATCH
                continue
            # Kafka is still away, or went away again: one record at a time until it is back,
            # so that a batch does not half-succeed while leaders move.
            log.warning("spool drain: kafka refused; retrying in %.1fs", delay)
            await asyncio.sleep(delay)
            delay, size = min(delay * 2, _BACKOFF_MAX_S), 1

    async def _send(self, batch: Batch) -> int:
        """Send a batch in order, pipelined; the number of leading records acknowledged."""
        futures: list[asyncio.Future[RecordMetadata] | None] = []
        try:
            async with asyncio.timeout(_BATCH_TIMEOUT_S):
                for _, entry in batch.items:
                    if is_skipped(entry):
                        futures.append(None)
                        continue
                    futures.append(await self.publisher.send(entry.record))
                results = await asyncio.gather(
                    *(f for f in futures if f is not None), return_exceptions=True
                )
        except Exception as exc:  # a KafkaError, NotConnected, the timeout: retry the batch
            log.warning("spool drain: send failed (%r)", exc)
            for future in futures:
                if future is not None:
                    future.cancel()
            return 0
        outcomes = iter(results)
        acked = 0
        for future in futures:
            if future is not None and isinstance(next(outcomes), BaseException):
                break
            acked += 1
        return acked


def set_gauges(spool: Spool, metrics: Metrics) -> None:
    """The spool gauges' values, now."""
    metrics.spool_bytes.set(spool.disk_bytes)
    metrics.spool_records.set(spool.records)
    metrics.spool_oldest_age.set(spool.oldest_age_s())


async def write_gauges(spool: Spool, metrics: Metrics) -> None:
    """Under ``--workers``: the spool gauges every ``_GAUGES_EVERY_S``, into the files."""
    while True:
        set_gauges(spool, metrics)
        await asyncio.sleep(_GAUGES_EVERY_S)


def bind_metrics(spool: Spool, metrics: Metrics) -> None:
    """Point the spool gauges at ``spool`` and count its events in ``metrics``.

    In one process the gauges read the spool at each scrape. A worker's values reach the
    supervisor's scrape only through its files, which ``write_gauges`` keeps current.
    """
    if not in_files():
        metrics.spool_bytes.set_function(lambda: spool.disk_bytes)
        metrics.spool_records.set_function(lambda: spool.records)
        metrics.spool_oldest_age.set_function(spool.oldest_age_s)
    counters = {
        "appends": metrics.spool_appends,
        "drained": metrics.spool_drained,
        "torn_tails": metrics.spool_corrupt.labels(kind="torn_tail"),
        "moved_aside": metrics.spool_corrupt.labels(kind="moved_aside"),
    }

    def count(kind: str, n: int) -> None:
        if kind in counters:
            counters[kind].inc(n)

    spool.counters.on_change = count
