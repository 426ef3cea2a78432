"""Helpers for the fault tests: a steady signed load, readiness and RSS probes.

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
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import localkafka  # dev/, on the path by pytest's `pythonpath` setting
from aiokafka.admin import AIOKafkaAdminClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.tools.deliveries import as_delivery, sign_ed25519
from tests.kafkautil import consume_all, describe_partitions
from tests.relayproc import rss_mib
from tests.relayutil import serve_env

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


#: the times of a fault's steps (``time.monotonic``), by name
Marks = dict[str, float]
RESTART_TIMEOUT_S = 180.0  # for a broker to answer again after its restart


def restore(cluster: localkafka.Cluster, nodes: tuple[localkafka.Node, ...] = ()) -> None:
    """Resume stopped nodes, start dead ones (all, or ``nodes``), and wait until they answer.

    The wait is by Metadata answers alone, with more time than localkafka.wait_ready's
    90 s: a JVM took 64 s to start here while other jobs loaded the machine.
    """
    nodes = nodes or cluster.nodes
    for node in nodes:
        with contextlib.suppress(localkafka.KafkaHarnessError):  # not running: started below
            localkafka.kill_node(cluster, node, signal.SIGCONT)
        localkafka.start_node(cluster, node)
    want = {n.node_id for n in cluster.nodes}
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    for node in nodes:
        while not want <= set(localkafka.metadata_brokers(node.port) or ()):
            if time.monotonic() > deadline:
                raise localkafka.KafkaHarnessError(
                    f"node {node.node_id} not ready in {RESTART_TIMEOUT_S:.0f} s:\n"
                    + localkafka.logs(cluster, 40)
                )
            time.sleep(0.25)


async def busiest_leader(cluster: localkafka.Cluster, topic: str) -> localkafka.Node:
    """The broker leading most of the topic's partitions, from the cluster's metadata."""
    partitions = await describe_partitions(cluster.bootstrap, topic)
    leaders = Counter(p["leader"] for p in partitions if p["leader"] >= 0)
    return cluster.node(leaders.most_common(1)[0][0])


def first_ack_after(answers: list[Answer], t: float) -> float | None:
    """When the first 2xx to a request begun after ``t`` came, if one did."""
    return min((a.answered for a in answers if a.began >= t and a.acknowledged), default=None)
