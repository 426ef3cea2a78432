"""The Python load generator: keep-alive HTTP/1.1 connections, closed-loop or open-loop.

``python -m bench.loadgen --port P --requests FILE --duration S [--rate R]`` prints one
JSON object. It runs in a process of its own, so that its CPU is never counted as the
target's, and it reports its own CPU time so that a reader can see it was not the limit.

- **Closed loop** (no ``--rate``): each connection sends its next request as soon as the
  answer to the previous one arrives. The throughput is the target's maximum for that many
  connections; the latencies are not a service level (a slow answer also slows the sender).
- **Open loop** (``--rate R``), wrk2-style, without coordinated omission: request *i* is
  due at ``start + i / R`` whatever happened to the ones before it. A due request waits
  for a free connection if all are busy, and its latency is measured **from when it was
  due**, not from when it was sent, so a stall of the target shows in the percentiles
  instead of quietly slowing the sender. ``generator_late_ms`` is how late the generator
  itself handed each request out (timer granularity, about 1 ms, and its own share of the
  CPU); ``send_lag_ms`` adds the wait for a free connection (all of them awaiting answers).

Every loop is bounded: at most ``rate * duration`` requests, each with a timeout, and the
answers still missing ``DRAIN_S`` after the last one was due are counted as unfinished.

**Priming** (``--prime FILE --primed-flag P --go-flag G``), for a target that sets up
something per connection on its first request (the Strimzi bridge creates a Kafka producer
per HTTP connection): before the clock starts, each connection sends one request of FILE
and waits for its answer, uncounted. Then the generator creates P and waits for G, so that
the caller reads its CPU counters after the set-up, not before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from bench.deliveries import read_requests

REQUEST_TIMEOUT_S: Final = 10.0
DRAIN_S: Final = 15.0
#: how long priming, and then the caller's go-ahead, may take
PRIME_TIMEOUT_S: Final = 60.0
_HEAD_END: Final = b"\r\n\r\n"
_LENGTH: Final = b"\r\ncontent-length:"


@dataclass
class Stats:
    """What came back, in seconds."""

    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    #: open loop: how late the generator itself handed each request out (timer, CPU)
    late: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: failed connection attempts (not requests: a request is only sent on a connection)
    connect_errors: Counter[str] = field(default_factory=Counter)
    last_answer: float = 0.0

    def ok(self) -> int:
        """The 2xx answers."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def finished(self) -> int:
        """Requests answered or failed."""
        return self.statuses.total() + self.errors.total()


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding (no pipelining).

    Callbacks only, no task or future per request: the generator must cost far less CPU
    than the target, on the same few cores.
    """

    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        #: the request in flight: its index, when it was due and when it was sent
        self.index = -1
        self.due = self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 -- TCP only
        self._transport = transport

    def send(self, index: int, due: float, now: float, raw: bytes | None = None) -> None:
        """Send request ``index`` (or ``raw``), due at loop time ``due``."""
        assert self._transport is not None  # noqa: S101 -- connected before use
        self.index, self.due, self.sent = index, due, now
        requests = self._generator.requests
        self._transport.write(raw if raw is not None else requests[index % len(requests)])

    def data_received(self, data: bytes) -> None:
        """Hand the status over once the whole answer is in (``Content-Length``)."""
        self._buffer += data
        end = self._buffer.find(_HEAD_END)
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        at = head.find(_LENGTH)
        # Content-Length may be the last header (the bridge, uvicorn): then no CRLF follows.
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + len(_LENGTH) : stop if stop >= 0 else None]) if at >= 0 else 0
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[: end + 4 + length]
        if self.index >= 0:
            self.index = -1
            self._generator.answered(self, int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        """Count the request in flight, if any, as failed; have the connection replaced."""
        error = None
        if self.index >= 0:
            self.index = -1
            error = "closed" if exc is None else type(exc).__name__
        self._generator.dropped(self, error)

    def abort(self) -> None:
        """Drop the connection (its request in flight timed out)."""
        if self._transport is not None:
            self._transport.abort()


class Generator:
    """The connections, the requests they cycle through, and the requests waiting for one."""

    def __init__(self, port: int, requests: Sequence[bytes], rate: float | None) -> None:
        self.port, self.requests, self.rate = port, requests, rate
        self.stats = Stats()
        self._loop = asyncio.get_running_loop()
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._waiting: deque[int] = deque()
        self._next = 0
        #: open loop: how many requests there are; closed loop: -1
        self._total = -1
        self.start = self.end = 0.0
        self._done = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: while priming: the answers still awaited, and the event set when none are
        self._prime_left = 0
        self._primed = asyncio.Event()
        self.primed_ok = 0
        self.cpu_start = 0.0

    async def _add_connection(self) -> None:
        try:
            _, connection = await self._loop.create_connection(
                lambda: Connection(self), "127.0.0.1", self.port
            )
        except OSError as exc:
            self.stats.connect_errors[f"connect {type(exc).__name__}"] += 1
            return
        self._release(connection, self._loop.time())

    def _release(self, connection: Connection, now: float) -> None:
        """Give a free connection its next request, or make it idle."""
        if self._waiting:
            index = self._waiting.popleft()
            due = self.start + index / self.rate if self.rate else now
        elif self._total < 0 and self.start <= now < self.end:  # closed loop, running
            index, due, self._next = self._next, now, self._next + 1
        else:
            self._busy.discard(connection)
            self._idle.append(connection)
            self._check_done(now)
            return
        self._busy.add(connection)
        connection.send(index, due, now)

    def answered(self, connection: Connection, status: int) -> None:
        """Record an answer; reuse the connection."""
        if self._prime_left:
            self.primed_ok += 200 <= status < 300
            self._busy.discard(connection)
            self._idle.append(connection)
            self._prime_answered()
            return
        now = self.stats.last_answer = self._loop.time()
        self.stats.statuses[status] += 1
        self.stats.latencies.append(now - connection.due)
        self.stats.lags.append(connection.sent - connection.due)
        self._check_done(now)
        self._release(connection, now)

    def dropped(self, connection: Connection, error: str | None) -> None:
        """A connection closed: count its request in flight (if any) as failed, replace it."""
        if self._closing:
            return
        if error is not None and self._prime_left:
            self._prime_answered()
        elif error is not None:
            self.stats.errors[error] += 1
        self._busy.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        self._check_done(self._loop.time())
        task = self._loop.create_task(self._add_connection())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_done(self, now: float) -> None:
        if self._total < 0:  # closed loop: over, and nothing in flight
            over = 0 < self.end <= now and not self._busy
        else:
            over = self.stats.finished() >= self._total
        if over:
            self._done.set()

    async def _watch(self) -> None:
        """Fail each request in flight for longer than ``REQUEST_TIMEOUT_S``."""
        while True:
            await asyncio.sleep(0.5)
            now = self._loop.time()
            # A priming request may wait for the target's per-connection set-up.
            limit = PRIME_TIMEOUT_S if self._prime_left else REQUEST_TIMEOUT_S
            for connection in list(self._busy):
                if connection.index >= 0 and now - connection.sent > limit:
                    connection.abort()  # connection_lost counts it as failed

    def _prime_answered(self) -> None:
        self._prime_left -= 1
        if not self._prime_left:
            self._primed.set()

    async def prime(self, requests: Sequence[bytes]) -> None:
        """Send each open connection one of ``requests`` and wait for all the answers."""
        idle, self._idle = self._idle, []
        self._prime_left = len(idle)
        now = self._loop.time()
        for n, connection in enumerate(idle):
            self._busy.add(connection)
            connection.send(0, now, now, requests[n % len(requests)])
        if idle:
            await asyncio.wait_for(self._primed.wait(), PRIME_TIMEOUT_S)

    async def run(
        self,
        connections: int,
        duration: float,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Open the connections, then send for ``duration`` seconds and collect the answers.

        Closed loop: every connection sends back to back. Open loop: request *i* is due
        at ``start + i / rate``, whether or not a connection is free for it. ``before``
        runs once the connections are open, before the clock starts (priming).
        """
        for _ in range(connections):
            await self._add_connection()
        watcher = self._loop.create_task(self._watch())
        if before is not None:
            await before()
        self.cpu_start = time.process_time()
        self.start = self._loop.time() + 0.01
        self.end = self.start + duration
        if self.rate is None:
            await asyncio.sleep(0.01)
            for connection in self._idle[:]:
                self._idle.remove(connection)
                self._release(connection, self._loop.time())
            await asyncio.sleep(duration)
        else:
            await self._schedule(self.rate, int(self.rate * duration))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), DRAIN_S)
        watcher.cancel()
        if self._total > 0:
            self.stats.errors["unfinished"] += self._total - self.stats.finished()
        self._closing = True
        for connection in [*self._idle, *self._busy]:
            connection.abort()

    async def _schedule(self, rate: float, total: int) -> None:
        self._total = total
        submitted = 0
        while submitted < total:
            now = self._loop.time()
            due_now = min(total, int((now - self.start) * rate) + 1)
            for index in range(submitted, due_now):
                self.stats.late.append(now - (self.start + index / rate))
                if self._idle:
                    connection = self._idle.pop()
                    self._busy.add(connection)
                    connection.send(index, self.start + index / rate, self._loop.time())
                else:
                    self._waiting.append(index)
            submitted = max(submitted, due_now)
            await asyncio.sleep(max(0.0, self.start + submitted / rate - self._loop.time()))


def _percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles, in milliseconds."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 3)

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "p99.9": rank(99.9),
        "max": round(ordered[-1] * 1000, 3),
    }


async def run(port: int, requests: Sequence[bytes], args: argparse.Namespace) -> dict[str, object]:
    """One measurement; the result as JSON-ready data."""
    generator = Generator(port, requests, args.rate)

    async def prime() -> None:
        await generator.prime(read_requests(args.prime))
        args.primed_flag.touch()
        deadline = time.monotonic() + PRIME_TIMEOUT_S
        while not args.go_flag.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {args.go_flag} within {PRIME_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.01)

    await generator.run(args.connections, args.duration, prime if args.prime else None)
    cpu = time.process_time() - generator.cpu_start
    stats = generator.stats
    elapsed = max(stats.last_answer - generator.start, 1e-9)
    return {
        "tool": "python",
        "mode": "closed-loop" if args.rate is None else "open-loop",
        "connections": args.connections,
        "offered_rate": args.rate,
        "duration_s": round(elapsed, 3),
        "answers": stats.statuses.total(),
        "ok": stats.ok(),
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "errors": {k: v for k, v in (stats.errors + stats.connect_errors).items() if v},
        "rate": round(stats.ok() / elapsed, 1),
        "latency_ms": _percentiles(stats.latencies),
        "send_lag_ms": _percentiles(stats.lags) if args.rate is not None else {},
        "generator_late_ms": _percentiles(stats.late),
        "loadgen_cpu_s": round(cpu, 3),
        **({"primed_2xx": generator.primed_ok} if args.prime else {}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run, print the JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rate", type=float, help="open loop at this many requests/s")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--prime", type=Path, help="first, one of these per connection")
    parser.add_argument("--primed-flag", type=Path, help="created once primed")
    parser.add_argument("--go-flag", type=Path, help="waited for after priming")
    args = parser.parse_args(argv)
    requests = read_requests(args.requests)
    result = asyncio.run(run(args.port, requests, args))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
