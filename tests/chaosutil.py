"""Helpers for the fault tests: a steady signed load, a ``relay serve`` process, its RSS.

The load is open-loop, as a sender's traffic is: request ``i`` starts at ``i / rate``
seconds whatever earlier answers took, so an outage piles requests up instead of slowing
the load down. It is bounded twice: ``rate * duration`` requests at most, each within a
client timeout. Every request carries a fresh ``webhookId``, so each 2xx can be looked
for in Kafka afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.tools.deliveries import as_delivery, sign_ed25519
from tests.kafkautil import consume_all
from tests.relayutil import serve_env
from tests.test_shutdown import start_serve

#: ``HOOPAI_CHAOS=1`` (``make chaos``) selects the long versions of the same tests.
LONG = os.environ.get("HOOPAI_CHAOS") == "1"
#: the statuses a healthy relay may answer under a fault: 2xx, or the retryable ones
HTTP_OUTCOMES = frozenset({200, 429, 503})
#: how a request ends when the relay process is gone or its listener closed
CONNECTION_ERRORS = frozenset(
    {"ServerDisconnectedError", "ClientConnectorError", "ClientOSError", "ClientConnectionError"}
)
EVENT_FAMILY = "contacts"


def pick(short: float, long: float) -> float:
    """The short figure in ``make test``, the long one in ``make chaos``."""
    return long if LONG else short


@dataclass(frozen=True)
class Answer:
    """One request of the load: its id, when it began and ended (monotonic), how it ended."""

    webhook_id: str
    began: float
    answered: float
    #: the HTTP status, or the client exception's class name when there was none
    status: int | str
    #: the ``error`` of a retryable answer (``ack_timeout``, ``not_connected``, ...)
    cause: str = ""

    @property
    def seconds(self) -> float:
        """How long the sender waited for the answer."""
        return self.answered - self.began

    @property
    def acknowledged(self) -> bool:
        """Whether the relay answered 2xx, that is, promised the event is in Kafka."""
        return isinstance(self.status, int) and 200 <= self.status < 300


@dataclass
class Target:
    """The relay the load sends to; a restarted one has a new port and pid, so this changes."""

    url: str
    pid: int


async def steady_load(
    target: Target,
    key: Ed25519PrivateKey,
    *,
    rate: float,
    duration: float,
    stop: asyncio.Event | None = None,
    timeout_s: float = 15.0,
    locations: int = 7,
) -> list[Answer]:
    """Send ``rate`` signed deliveries a second for ``duration`` s (or until ``stop``)."""
    answers: list[Answer] = []
    # No pool limit: the schedule and the relay's deadline bound the concurrency, and a
    # client-side queue would count as the relay's latency.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        webhook_id = str(uuid.uuid4())
        payload = {"type": "ContactCreate", "locationId": f"loc-{i % locations}", "seq": i}
        body = as_delivery(payload, webhook_id=webhook_id)
        headers = {"X-GHL-Signature": sign_ed25519(key, body)}
        began = time.monotonic()
        status: int | str
        cause = ""
        try:
            async with http.post(f"{target.url}/webhooks/hoopai", data=body, headers=headers) as r:
                answer = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        else:
            if status >= 300:
                with contextlib.suppress(ValueError, AttributeError):
                    cause = str(json.loads(answer).get("error", ""))
        answers.append(Answer(webhook_id, began, time.monotonic(), status, cause))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        tasks = []
        start = time.monotonic()
        for i in range(round(rate * duration)):
            if stop is not None and stop.is_set():
                break
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, i)))
        await asyncio.gather(*tasks)
    return answers


def summarize(answers: Sequence[Answer]) -> dict[str, object]:
    """Counts by status, the span of the retryable answers, the slowest answer."""
    retryable = [a for a in answers if a.status in (429, 503)]
    window = (
        max(a.answered for a in retryable) - min(a.began for a in retryable) if retryable else 0
    )
    return {
        "requests": len(answers),
        "statuses": dict(Counter(str(a.status) for a in answers)),
        "causes": dict(Counter(a.cause for a in answers if a.cause)),
        "retryable_window_s": round(window, 1),
        "max_answer_s": round(max((a.seconds for a in answers), default=0.0), 2),
    }


async def missing_in_kafka(bootstrap: str, topic: str, answers: Iterable[Answer]) -> dict[str, int]:
    """Read ``topic`` fully; count the 2xx-answered ids absent from it, and the duplicates."""
    records = await consume_all(bootstrap, topic)
    ids = Counter(dict(r.headers)["ce_id"].decode() for r in records)
    acknowledged = {a.webhook_id for a in answers if a.acknowledged}
    refused = {a.webhook_id for a in answers if not a.acknowledged}
    return {
        "records": len(records),
        "acknowledged": len(acknowledged),
        "missing": len(acknowledged - ids.keys()),
        # requests not answered 2xx whose record landed anyway, after the deadline: the
        # sender's retry makes each a duplicate, never a loss
        "landed_unacknowledged": len(refused & ids.keys()),
        "duplicates": sum(n - 1 for n in ids.values()),
    }


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics named ``<prefix>.*``: later restarts recover fewer logs."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def rss_mib(pid: int) -> float:
    """The resident set size of a process, in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def relay_env(
    bootstrap: str, public_keys: Sequence[Path], prefix: str, **extra: str
) -> dict[str, str]:
    """The environment of a ``relay serve`` on 127.0.0.1:0 against ``bootstrap``."""
    return serve_env(
        bootstrap,
        public_keys,
        prefix,
        # The one topic the load uses is auto-created by its first record (RF 3, 3
        # partitions): creating all nine would add 27 partitions to each broker, and a
        # broker killed with many partitions spends its restart recovering their logs.
        **{
            "RELAY_CREATE_TOPICS": "false",
            "RELAY_READY_CHECK_INTERVAL_S": "0.5",
            # The teardown's SIGTERM need not wait the default 5 s; the SIGTERM test sets
            # its own.
            "RELAY_DRAIN_DELAY_S": "0.2",
            **extra,
        },
    )


@dataclass
class RelayProcess:
    """A running ``relay serve``: its URL, and its log lines with the time each arrived."""

    proc: asyncio.subprocess.Process
    url: str
    lines: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, env: dict[str, str], cwd: Path) -> RelayProcess:
        """Start it and keep reading its log, so the pipe never fills and blocks it."""
        proc, url = await start_serve(env, cwd)
        relay = cls(proc, url)
        relay._reader = asyncio.create_task(relay._read())
        return relay

    async def _read(self) -> None:
        """Collect the JSON log lines until the process closes its stdout."""
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):  # a traceback line is not JSON
                self.lines.append((time.monotonic(), json.loads(line)))

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def logged_at(self, message: str) -> float | None:
        """When (monotonic) the line with this message arrived, if it did."""
        return next((t for t, line in self.lines if line.get("message") == message), None)

    def warnings(self) -> dict[str, int]:
        """How many times each WARNING or ERROR line was logged (message, and cause if any)."""
        found = Counter(
            " ".join(str(line[k]) for k in ("message", "cause", "detail") if k in line)[:160]
            for _, line in self.lines
            if line.get("level") in ("warning", "error")
        )
        return dict(found)

    async def wait(self, timeout_s: float) -> int:
        """Wait for the exit (and the last log lines); return the exit status."""
        async with asyncio.timeout(timeout_s):
            code = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return code

    async def stop(self) -> None:
        """SIGTERM it if it still runs, SIGKILL after 30 s; for a test's teardown."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await self.wait(30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def until_ready(http: aiohttp.ClientSession, url: str, timeout_s: float = 60) -> float:
    """Poll ``/readyz`` until 200 (within ``timeout_s``); return when it came."""
    async with asyncio.timeout(timeout_s):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return time.monotonic()
            await asyncio.sleep(0.25)


async def warm_up(target: Target, key: Ed25519PrivateKey, timeout_s: float = 60) -> None:
    """Deliver until one is acknowledged: the topic's leaders are elected and known."""
    async with asyncio.timeout(timeout_s):
        while not any(a.acknowledged for a in await steady_load(target, key, rate=1, duration=1)):
            await asyncio.sleep(0.5)


async def watch(
    probe: ReadinessProbe | RssProbe, stop: asyncio.Event, every_s: float
) -> list[tuple[float, float]]:
    """Sample ``probe`` every ``every_s`` until ``stop``: (monotonic time, value) pairs."""
    samples: list[tuple[float, float]] = []
    while not stop.is_set():
        samples.append((time.monotonic(), await probe()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    return samples


async def loop_lag(
    stop: asyncio.Event, every_s: float = 0.1, stalls: list[tuple[float, float]] | None = None
) -> float:
    """The longest this event loop was late to wake a sleeper, in seconds, until ``stop``.

    The load's clock runs on this loop: a stall here delays the answers it measures (and an
    in-process relay's own work), so the tests report it beside the slowest answer. Each
    stall over 50 ms goes into ``stalls`` as (when it ended, how long), if given.
    """
    worst = 0.0
    while not stop.is_set():
        began = time.monotonic()
        await asyncio.sleep(every_s)
        late = time.monotonic() - began - every_s
        worst = max(worst, late)
        if stalls is not None and late > 0.05:
            stalls.append((time.monotonic(), late))
    return worst


@dataclass
class ReadinessProbe:
    """``/readyz``'s status (0 when it did not answer), as a number for :func:`watch`."""

    http: aiohttp.ClientSession
    target: Target

    async def __call__(self) -> float:
        """One GET /readyz."""
        try:
            async with self.http.get(f"{self.target.url}/readyz") as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0


@dataclass
class RssProbe:
    """The target relay's RSS in MiB (0 while it is gone), for :func:`watch`."""

    target: Target

    async def __call__(self) -> float:
        """One reading of /proc."""
        try:
            return rss_mib(self.target.pid)
        except (OSError, RuntimeError):  # killed, or a zombie without memory
            return 0.0
