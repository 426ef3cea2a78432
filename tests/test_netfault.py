"""Network faults between the relay and Kafka, under a steady signed load: nothing 2xx lost.

The ``netfault`` cluster (three brokers, RF 3, min ISR 2) is reached by clients only
through Toxiproxy, one proxy per broker (``tests/toxiproxy.py``); the brokers replicate
outside the proxies, so a toxic is a fault between the relay and one broker, as a bad link
or a half-dead load balancer would be. Each test runs one or two ``relay serve`` processes
(*lanes*: the shipped defaults, and the same with the spool on), sends each an open-loop
load (``tests/chaosutil.py``), injects the fault, removes it, then reads every lane's topic
from the beginning and looks up every id answered 2xx.

Each lane asserts: no 2xx-answered id missing from Kafka; every answer 200, 429 or 503
(the process never stops answering); none slower than the ack deadline plus 1 s; every
request begun ``RECOVERY_S`` after the repair answered 2xx. A spool lane asserts every
answer 2xx. ``make test`` runs the short versions; ``make chaos`` (``HOOPAI_CHAOS=1``)
the long ones, same code. Each lane prints one ``NETFAULT {...}`` line with its figures
(docs/reliability.md, "Network faults").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import localkafka
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.kafka.publisher import Publisher
from relay.settings import Settings
from tests import relayproc
from tests.chaosutil import (
    EVENT_FAMILY,
    HTTP_OUTCOMES,
    LONG,
    Answer,
    Marks,
    ReadinessProbe,
    Target,
    busiest_leader,
    delete_topics,
    first_ack_after,
    loop_lag,
    missing_in_kafka,
    pick,
    relay_env,
    restore,
    steady_load,
    summarize,
    until_ready,
    warm_up,
    watch,
)
from tests.kafkautil import describe_partitions, unique_topic
from tests.relayproc import ServeProcess
from tests.toxiproxy import BOTH, UPSTREAM, NetFault

pytestmark = pytest.mark.chaos

RATE = pick(40, 100)  # requests per second, per lane
DEADLINE_S = 4.0  # RELAY_ACK_TIMEOUT_MS's default, kept: the figures are the shipped ones
#: the issue's bound on any answer: the ack deadline plus 1 s
ANSWER_BOUND_S = DEADLINE_S + 1.0
#: after a repair, every request begun this much later is answered 2xx
RECOVERY_S = 5.0
BEFORE_S = pick(2, 10)  # load before the fault
FAULT_S = pick(5, 30)  # how long a toxic stays
AFTER_S = pick(7, 30)  # load after the repair: past RECOVERY_S, to see it
MAX_LOAD_S = 900  # a bound on any load, whatever a fault's repair takes
IN_SYNC_TIMEOUT_S = 180.0
#: the shipped spool settings but the directory (RELAY_SPOOL_AFTER_MS's default, 2 s)
SPOOL = "spool"


@dataclass
class Lane:
    """One ``relay serve`` with its own topic, and its load's answers once run."""

    name: str
    relay: ServeProcess
    target: Target
    topic: str
    answers: list[Answer] = field(default_factory=list)
    readiness: list[tuple[float, float]] = field(default_factory=list)
    #: the test's own event loop's stalls during the load (it times the answers): (end, s)
    stalls: list[tuple[float, float]] = field(default_factory=list)

    @property
    def spooled(self) -> bool:
        """Whether this lane's relay has the spool on."""
        return self.name == SPOOL


Lanes = Callable[..., Awaitable[list[Lane]]]


@pytest.fixture
async def lanes(
    netfault: NetFault,
    public_key_files: tuple[Path, ...],
    ed25519_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> AsyncIterator[Lanes]:
    """Start ready, warmed-up lanes by name (``default``, ``spool``); clean up after.

    After the test: the relays are stopped, every toxic removed, every broker running and
    answering, and the lanes' topics deleted.
    """
    started: list[Lane] = []

    async def start(*names: str) -> list[Lane]:
        for name in names:
            prefix = unique_topic(f"netfault-{name}")
            # The shipped probe interval (and so its timeout), not relay_env's 0.5 s: the
            # probe decides known_down, which refuses every request at once.
            extra = {"RELAY_READY_CHECK_INTERVAL_S": "2"}
            if name == SPOOL:
                extra["RELAY_SPOOL_DIR"] = str(tmp_path / name)
            env = relay_env(netfault.cluster.bootstrap, public_key_files, prefix, **extra)
            relay = await relayproc.start(env, tmp_path)
            target = Target(relay.url, relay.pid)
            started.append(Lane(name, relay, target, f"{prefix}.{EVENT_FAMILY}"))
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                await until_ready(http, relay.url)
            await warm_up(target, ed25519_key)
        return started[-len(names) :]

    yield start
    for lane in started:
        await lane.relay.stop()
    await asyncio.to_thread(netfault.proxy.reset)
    await asyncio.to_thread(restore, netfault.cluster)
    for lane in started:  # hygiene, not a check: a failed deletion leaves a few partitions
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(30):
                await delete_topics(netfault.cluster.bootstrap, lane.topic.rsplit(".", 1)[0])


async def under_load(
    lanes: list[Lane],
    key: Ed25519PrivateKey,
    fault: Callable[[Marks], Awaitable[None]],
    *,
    before_s: float = BEFORE_S,
    after_s: float = AFTER_S,
) -> Marks:
    """Load every lane, then ``fault`` (which returns once repaired), then ``after_s`` more.

    ``fault`` records the times of its steps in the marks; ``start``, ``repaired`` and
    ``end`` are added here. The answers and readiness samples go into the lanes. The
    client waits up to 60 s: a stall of this process (seconds, on the loaded machine) must
    not turn an answer into a client timeout; a relay's hang shows in :func:`slow`.
    """
    stop = asyncio.Event()
    marks: Marks = {"start": time.monotonic()}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        loads = [
            asyncio.create_task(
                steady_load(
                    lane.target, key, rate=RATE, duration=MAX_LOAD_S, stop=stop, timeout_s=60
                )
            )
            for lane in lanes
        ]
        probes = [
            asyncio.create_task(watch(ReadinessProbe(http, lane.target), stop, 0.5))
            for lane in lanes
        ]
        stalls: list[tuple[float, float]] = []
        lag = asyncio.create_task(loop_lag(stop, stalls=stalls))
        try:
            await asyncio.sleep(before_s)
            await fault(marks)
            marks["repaired"] = time.monotonic()
            await asyncio.sleep(after_s)
        finally:
            stop.set()
            answers = await asyncio.gather(*loads)
            readiness = await asyncio.gather(*probes)
            await lag
    marks["end"] = time.monotonic()
    for lane, got, ready in zip(lanes, answers, readiness, strict=True):
        lane.answers, lane.readiness, lane.stalls = got, ready, stalls
    return marks


def trouble(answers: list[Answer], t0: float) -> dict[str, dict[int, int]]:
    """Per second of the run (by when the request began), the non-2xx and the slow answers."""
    out: dict[str, Counter[int]] = {"non_2xx": Counter(), "slow": Counter()}
    for a in answers:
        if not a.acknowledged:
            out["non_2xx"][int(a.began - t0)] += 1
        if a.seconds > ANSWER_BOUND_S:  # before subtracting the test's stalls
            out["slow"][int(a.began - t0)] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


async def spool_drained(lane: Lane, timeout_s: float = 120) -> float:
    """Wait until the lane's spool is empty and it publishes directly; return when."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        asyncio.timeout(timeout_s),
    ):
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(f"{lane.target.url}/readyz") as response:
                    body = await response.json()
                spool = body.get("spool", {})
                if spool.get("mode") == "direct" and spool.get("records") == 0:
                    return time.monotonic()
            await asyncio.sleep(0.5)


def recovery_s(answers: list[Answer], repaired: float) -> float:
    """From the repair to the start of the last request begun after it and not answered 2xx.

    0 when every request begun after the repair was answered 2xx: the relay was back to
    accepting at once.
    """
    refused = [a.began for a in answers if a.began >= repaired and not a.acknowledged]
    return round(max(refused) - repaired, 2) if refused else 0.0


def answer_s(answer: Answer, stalls: list[tuple[float, float]]) -> float:
    """How long the relay took to answer: the time waited, less this process's own stalls.

    A stall of the test's event loop while a request was out delays when its answer is
    read (or when it is sent), not the relay: on this shared 2-core machine, one lasted
    1.5 s. The relay's own stalls are not subtracted, since this loop ran on through them.
    """
    stalled = sum(s for end, s in stalls if answer.began < end and end - s < answer.answered)
    return answer.seconds - stalled


def slow(lane: Lane) -> list[Answer]:
    """The answers slower than the ack deadline plus 1 s: a hang, for the sender."""
    return [a for a in lane.answers if answer_s(a, lane.stalls) > ANSWER_BOUND_S]


async def account(
    scenario: str, netfault: NetFault, lanes: list[Lane], marks: Marks, **figures: object
) -> dict[str, dict[str, object]]:
    """Read every lane's topic back, print its ``NETFAULT`` line, return the figures by lane."""
    out: dict[str, dict[str, object]] = {}
    t0 = marks["start"]
    for lane in lanes:
        line: dict[str, object] = {"scenario": scenario, "lane": lane.name}
        if lane.spooled:
            drained = await spool_drained(lane)
            line["spool_drained_after_repair_s"] = round(drained - marks["repaired"], 1)
        kafka = await missing_in_kafka(netfault.cluster.bootstrap, lane.topic, lane.answers)
        first = first_ack_after(lane.answers, marks["repaired"])
        line |= {
            "long": pick(0, 1) == 1,
            "rate": RATE,
            **summarize(lane.answers),
            "kafka": kafka,
            "recovery_s": recovery_s(lane.answers, marks["repaired"]),
            "first_2xx_after_repair_s": round(first - marks["repaired"], 2) if first else None,
            "marks_s": {k: round(v - t0, 1) for k, v in marks.items()},
            "max_answer_less_test_stalls_s": round(
                max((answer_s(a, lane.stalls) for a in lane.answers), default=0.0), 2
            ),
            "test_loop_stall_max_s": round(max((s for _, s in lane.stalls), default=0.0), 2),
            "by_second": trouble(lane.answers, t0),
            "relay_warnings": lane.relay.warnings(),
            **figures,
        }
        print("NETFAULT", json.dumps(line))
        out[lane.name] = line
    return out


def check(lanes: list[Lane], figures: dict[str, dict[str, object]], marks: Marks) -> None:
    """The assertions every scenario makes of every lane (the module docstring)."""
    for lane in lanes:
        kafka = figures[lane.name]["kafka"]
        assert isinstance(kafka, dict)
        assert kafka["missing"] == 0, (lane.name, kafka)
        assert {a.status for a in lane.answers} <= HTTP_OUTCOMES, lane.name
        assert slow(lane) == [], (lane.name, slow(lane)[:5])
        assert lane.relay.proc.poll() is None, f"{lane.name}: relay serve exited"
        assert recovery_s(lane.answers, marks["repaired"]) <= RECOVERY_S, lane.name
        assert first_ack_after(lane.answers, marks["repaired"]) is not None, lane.name
        if lane.spooled:
            assert {a.status for a in lane.answers} == {200}, (lane.name, summarize(lane.answers))


# Scenarios 1, 2, 3, 5: one toxic for FAULT_S, on the busiest leader or on every broker.
# (name, toxic type, streams, on every broker?, attributes)
TOXICS = [
    # 1. a slow link: 300 ms each way of the busiest leader's traffic, +-100 ms
    ("latency", "latency", BOTH, False, {"latency": 300, "jitter": 100}),
    # 2. a thin link: 16 KB/s each way to one broker
    ("bandwidth", "bandwidth", BOTH, False, {"rate": 16}),
    # 3. every connection to one broker reset (RST) 2 s after it opens, for as long
    ("reset_peer", "reset_peer", (UPSTREAM,), False, {"timeout": 2000}),
    # 5. every broker's segments cut to about 64 bytes, 200 us apart
    ("slicer", "slicer", BOTH, True, {"average_size": 64, "size_variation": 32, "delay": 200}),
]


@pytest.mark.parametrize(
    ("scenario", "kind", "streams", "everywhere", "attributes"),
    TOXICS,
    ids=[t[0] for t in TOXICS],
)
async def test_a_toxic_link_loses_no_acknowledged_event(
    netfault: NetFault,
    lanes: Lanes,
    ed25519_key: Ed25519PrivateKey,
    scenario: str,
    kind: str,
    streams: tuple[str, ...],
    everywhere: bool,
    attributes: dict[str, int],
) -> None:
    """Latency, bandwidth, resets, slicing: every 2xx in Kafka, answers within deadline + 1 s."""
    (lane,) = await lanes("default")
    leader = await busiest_leader(netfault.cluster, lane.topic)
    proxies = netfault.proxies() if everywhere else netfault.proxies(leader)

    async def fault(marks: Marks) -> None:
        async with netfault.proxy.toxic(proxies, scenario, kind, streams, **attributes):
            marks["toxic"] = time.monotonic()
            await asyncio.sleep(FAULT_S)

    marks = await under_load([lane], ed25519_key, fault)
    figures = await account(
        scenario, netfault, [lane], marks, proxies=proxies, toxic={kind: attributes}
    )
    check([lane], figures, marks)


async def test_a_black_hole_on_one_broker_then_all_answers_within_the_deadline(
    netfault: NetFault, lanes: Lanes, ed25519_key: Ed25519PrivateKey
) -> None:
    """4. Packets to one broker, then to all three, vanish (no RST), processes running.

    Without the spool: retryable answers within the deadline, never a hang. With it: only
    2xx, and every one in Kafka once drained.
    """
    plain, spooled = await lanes("default", SPOOL)
    leader = await busiest_leader(netfault.cluster, plain.topic)
    proxy = netfault.proxy

    async def fault(marks: Marks) -> None:
        # timeout=0: data is dropped and the connection is never closed, a black hole.
        async with proxy.toxic(netfault.proxies(leader), "blackhole", "timeout", BOTH, timeout=0):
            marks["one_broker"] = time.monotonic()
            await asyncio.sleep(FAULT_S)
            others = [n for n in netfault.cluster.nodes if n != leader]
            async with proxy.toxic(
                netfault.proxies(*others), "blackhole", "timeout", BOTH, timeout=0
            ):
                marks["all_brokers"] = time.monotonic()
                await asyncio.sleep(FAULT_S)

    marks = await under_load([plain, spooled], ed25519_key, fault)
    figures = await account(
        "blackhole", netfault, [plain, spooled], marks, blackholed_first=leader.node_id
    )
    check([plain, spooled], figures, marks)
    during_all = [a for a in plain.answers if marks["all_brokers"] + 1 <= a.began]
    during_all = [a for a in during_all if a.answered <= marks["repaired"]]
    assert during_all, "no request was answered while every broker was a black hole"
    assert {a.status for a in during_all} <= {429, 503}


async def in_sync(bootstrap: str) -> bool:
    """Whether every partition of every topic has all its replicas in sync."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        topics = await admin.list_topics()
        described = await admin.describe_topics(list(topics)) if topics else []
    finally:
        await admin.close()
    return all(
        p["error_code"] == 0 and set(p["isr"]) == set(p["replicas"])
        for t in described
        for p in t["partitions"]
    )


async def wait_in_sync(bootstrap: str) -> None:
    """Poll :func:`in_sync` until it holds, within ``IN_SYNC_TIMEOUT_S``."""
    async with asyncio.timeout(IN_SYNC_TIMEOUT_S):
        while True:
            with contextlib.suppress(KafkaError, TimeoutError):
                if await in_sync(bootstrap):
                    return
            await asyncio.sleep(1)


async def test_a_rolling_restart_loses_no_acknowledged_event(
    netfault: NetFault, lanes: Lanes, ed25519_key: Ed25519PrivateKey
) -> None:
    """6. Each broker in turn: controlled shutdown (SIGTERM), start, wait for every ISR full.

    As an operator upgrading Kafka would. Without the spool some requests may get 429 while
    leaders move (the share is printed); with it, only 2xx. ``make test`` restarts the
    busiest leader only: a broker's restart takes a minute on the shared machine.
    ``make chaos`` restarts all three.
    """
    plain, spooled = await lanes("default", SPOOL)
    cluster = netfault.cluster
    restarts: list[dict[str, float]] = []
    nodes = cluster.nodes if LONG else (await busiest_leader(cluster, plain.topic),)

    async def fault(marks: Marks) -> None:
        for node in nodes:
            t = {"sigterm": time.monotonic()}
            await asyncio.to_thread(localkafka.kill_node, cluster, node, signal.SIGTERM)
            t["stopped"] = time.monotonic()
            await asyncio.to_thread(restore, cluster, (node,))
            t["answering"] = time.monotonic()
            await wait_in_sync(cluster.bootstrap)
            t["in_sync"] = time.monotonic()
            marks[f"node{node.node_id}_in_sync"] = t["in_sync"]
            restarts.append({k: round(v - t["sigterm"], 1) for k, v in t.items()})

    marks = await under_load([plain, spooled], ed25519_key, fault)
    non_2xx = sum(not a.acknowledged for a in plain.answers)
    figures = await account(
        "rolling_restart",
        netfault,
        [plain, spooled],
        marks,
        restarted=[n.node_id for n in nodes],
        restarts=restarts,
        non_2xx_share_without_spool=round(non_2xx / len(plain.answers), 4),
    )
    check([plain, spooled], figures, marks)


def move_leaders(cluster: localkafka.Cluster, topic: str, partitions: list[dict[str, Any]]) -> None:
    """Reassign each partition away from its leader (``kafka-reassign-partitions``).

    The new replica list is the old one without the leader, plus the broker missing from
    it if there is one: 3 replicas become 2 (no data to copy, the leader moves at once),
    2 become 2 (one replica copied, the leader moves once it is in sync). The leader is
    never in the new list, so every move moves every partition's leadership.
    """
    brokers = [n.node_id for n in cluster.nodes]
    moves = []
    for p in partitions:
        kept = [r for r in p["replicas"] if r != p["leader"]]
        if len(kept) < 2:
            kept += [b for b in brokers if b not in p["replicas"]][:1]
        moves.append({"topic": topic, "partition": p["partition"], "replicas": kept})
    plan = {"version": 1, "partitions": moves}
    folder = localkafka.home() / cluster.name / "tools"
    folder.mkdir(parents=True, exist_ok=True)
    plan_file = folder / f"{topic}-reassign.json"
    plan_file.write_text(json.dumps(plan))
    localkafka.run_tool(
        cluster,
        "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
        "--reassignment-json-file",
        str(plan_file),
        "--execute",
    )


async def leaders_of(bootstrap: str, topic: str) -> list[int]:
    """Each partition's leader, by partition number."""
    partitions = await describe_partitions(bootstrap, topic)
    return [p["leader"] for p in sorted(partitions, key=lambda p: p["partition"])]


async def test_a_leadership_move_under_load_loses_no_acknowledged_event(
    netfault: NetFault, lanes: Lanes, ed25519_key: Ed25519PrivateKey
) -> None:
    """7. Every partition's leader moved to another broker by a reassignment, under load."""
    (lane,) = await lanes("default")
    cluster = netfault.cluster
    moves = int(pick(1, 3))
    leaders: list[list[int]] = []

    async def fault(marks: Marks) -> None:
        for move in range(moves):
            partitions = await describe_partitions(cluster.bootstrap, lane.topic)
            leaders.append(await leaders_of(cluster.bootstrap, lane.topic))
            await asyncio.to_thread(move_leaders, cluster, lane.topic, partitions)
            marks[f"move{move + 1}"] = time.monotonic()
            # The leaders have moved once the cluster says so (a copy may come first).
            async with asyncio.timeout(IN_SYNC_TIMEOUT_S):
                while True:
                    now = await leaders_of(cluster.bootstrap, lane.topic)
                    if all(a != b for a, b in zip(now, leaders[-1], strict=True)):
                        break
                    await asyncio.sleep(0.5)
            marks[f"moved{move + 1}"] = time.monotonic()
            await asyncio.sleep(pick(2, 10))
        leaders.append(now)

    marks = await under_load([lane], ed25519_key, fault)
    figures = await account("leader_move", netfault, [lane], marks, leaders=leaders)
    check([lane], figures, marks)
    for before, after in itertools.pairwise(leaders):
        assert all(a != b for a, b in zip(before, after, strict=True)), leaders


async def test_one_answering_broker_is_enough_for_the_probe(netfault: NetFault) -> None:
    """Every broker but one a black hole: the readiness probe still finds the cluster.

    Found by the latency scenario: the probe asked the brokers one after the other within
    one timeout, so a silent broker first in the list made the cluster look down, and the
    relay refused every request with 429 ``not_connected`` while two brokers were fine.
    The one left answering is the last the probe would have asked.
    """
    cluster = netfault.cluster
    settings = Settings(kafka_bootstrap_servers=tuple(cluster.bootstrap.split(",")))
    publisher = Publisher(settings)
    await publisher.connect()
    try:
        await publisher.probe(timeout_s=2)
        assert publisher.reachable
        assert publisher._producer is not None  # the unit under test reads its client's order
        client = publisher._producer.client
        order = [b.nodeId for b in client.cluster.brokers()]
        # A connection to each broker first, as a producer writing to every leader has:
        # aiokafka opens connections under one lock, so a connection still to be opened to
        # a silent broker holds up the others for its request timeout (left alone here).
        for node_id in order:
            assert await client.ready(node_id)
        silent = [cluster.node(n) for n in order[:-1]]
        async with netfault.proxy.toxic(netfault.proxies(*silent), "probe", "timeout", BOTH):
            await publisher.probe(timeout_s=2)
            assert publisher.reachable, f"brokers {order[:-1]} silent, {order[-1]} answering"
            assert not publisher.known_down
            last = [cluster.node(order[-1])]
            async with netfault.proxy.toxic(netfault.proxies(*last), "probe", "timeout", BOTH):
                await publisher.probe(timeout_s=2)
                assert not publisher.reachable  # the probe can fail: every broker silent
                assert publisher.known_down
    finally:
        await publisher.close()
