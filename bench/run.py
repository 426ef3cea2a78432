"""``python -m bench``: the relay against its ceilings, on 127.0.0.1 and the local broker.

For each target it measures the maximum throughput (closed loop, over keep-alive
connections), then the latency at fixed open-loop rates, by default 50% and 90% of that
target's own maximum. Each point runs against a freshly started target (so the relay's
per-process dedup window never sees a delivery twice), after a warm-up with a separate
set of deliveries. Results go to ``--out``: ``results.json``, ``results.md``, ``latency.png``.

Needs the local broker (``make kafka-up``, or ``python3 dev/localkafka.py up``); it never
starts or stops one. It uses topics of its own, ``bench-<run id>.*``, and deletes them at
the end unless ``--keep-topics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import bridge, deliveries, kafkaperf, report, wrk
from bench.procstat import Jiffies, cpu_seconds, peak_rss_kib
from bench.targets import (
    REPO,
    Server,
    add_relay_env_option,
    child_env,
    pinned,
    relay_env,
    run_child,
    start_bridge,
    start_ceiling,
    start_fastapi,
    start_relay,
    start_spooling_relay,
)
from relay.ingress.routing import all_topics, load_routes
from relay.kafka.options import client_options
from relay.kafka.topics import ensure_topics
from relay.settings import Settings

sys.path.insert(0, str(REPO / "dev"))
import localkafka  # the harness lives in dev/, outside the package

TARGETS: Final = (
    "http", "verify", "relay", "relay-nokafka", "relay-workers", "relay-spool", "bridge",
    "fastapi", "kafka",
)  # fmt: skip
#: the targets of more than one process, each wanting a core: pinned only where the
#: machine has a core for each besides the generator's
SPREAD: Final = ("relay-workers",)
#: the peers, each producing to a topic of its own, ``<prefix>.<target>``
PEERS: Final = ("bridge", "fastapi")
WARM_DELIVERIES: Final = 5000
#: the targets whose connections are primed first (the bridge: a Kafka producer each)
PRIMED: Final = ("bridge",)
#: time allowed for priming, on top of a point's own
PRIME_S: Final = 120.0
Result = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What one run does, from the command line."""

    duration: float
    warmup: float
    connections: int
    fractions: tuple[float, ...]
    use_wrk: bool
    bootstrap: str
    broker_pid: int
    prefix: str
    relay_env: dict[str, str]
    logs: Path
    requests: Path
    warm_requests: Path
    public_key: Path
    record_size: int
    #: the bridge's own request shape of the same deliveries: measured, warm-up
    bridge_requests: tuple[Path, Path] | None = None
    #: the bridge's jars and the Java that runs them, once found
    bridge_setup: tuple[Path, bridge.Java] | None = None
    #: ``taskset -c`` lists: the generator's core, and the target's; None: not pinned
    pins: tuple[str, str] | None = None

    def generator_cpus(self) -> str | None:
        """The generator's core (``taskset -c``), or None when not pinned."""
        return None if self.pins is None else self.pins[0]

    def target_cpus(self, target: str) -> str | None:
        """The target's cores: one for a single process; every other core for the workers."""
        if self.pins is None:
            return None
        cores = os.cpu_count() or 1
        if target in SPREAD:
            # On 2 cores, 2 workers on the one core left would measure one core shared.
            return f"1-{cores - 1}" if cores >= 3 else None
        return self.pins[1]

    def request_files(self, target: str) -> tuple[Path, Path]:
        """The measured and the warm-up requests in the shape ``target`` takes."""
        if target == "bridge" and self.bridge_requests is not None:
            return self.bridge_requests
        return self.requests, self.warm_requests


def _loadgen(
    plan: Plan,
    port: int,
    requests: Path,
    seconds: float,
    rate: float | None,
    prime: tuple[Path, tuple[Path, Path]] | None = None,
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--port",
        str(port),
        "--requests",
        str(requests),
        "--duration",
        str(seconds),
        "--connections",
        str(plan.connections),
    ]
    if prime is not None:
        prime_requests, (flag, go) = prime
        argv += ["--prime", str(prime_requests), "--primed-flag", str(flag), "--go-flag", str(go)]
    return argv if rate is None else [*argv, "--rate", f"{rate:.1f}"]


def _measure(
    plan: Plan,
    label: str,
    argv: list[str],
    env: dict[str, str],
    server: Server | None,
    parse: Callable[[str], Result],
    primed: tuple[Path, Path] | None = None,
) -> Result:
    """Run one measuring child; add what the target, the broker and the machine spent.

    Without a server, the child is the target (Kafka's ProducerPerformance). With
    ``primed`` (the generator's flag and go-ahead files), the counters are read once the
    generator has primed its connections, and then it is told to go.
    """
    pid = server.pid if server else None
    machine0, broker0, target0 = Jiffies.now(), 0.0, 0.0
    counts = None

    def begin() -> None:
        nonlocal machine0, broker0, target0, counts
        machine0, broker0 = Jiffies.now(), cpu_seconds(plan.broker_pid)
        target0 = cpu_seconds(pid) if pid else 0.0
        counts = server.outcomes() if server else None
        if primed is not None:
            primed[1].touch()

    if primed is None:
        begin()
    on_flag = None if primed is None else (primed[0], begin)
    log = plan.logs / f"{label}.out"
    child = run_child(argv, env, plan.duration * 3 + 60 + PRIME_S, log, on_flag)
    machine1, broker_cpu = Jiffies.now(), cpu_seconds(plan.broker_pid) - broker0
    target_cpu = cpu_seconds(pid) - target0 if pid else child.cpu_s
    result = parse(child.output)
    if server and counts is not None and server.metrics_port:
        result["relay_outcomes"] = outcomes = dict(server.outcomes() - counts)
        if set(outcomes) - {"accepted", "spooled"}:
            print(f"bench: WARNING {label}: relay outcomes {outcomes}", file=sys.stderr)
    # The relay's own count also has the requests in flight when wrk stopped.
    ok = max(int(result["ok"]), sum(result.get("relay_outcomes", {}).values()), 1)
    ours = target_cpu + broker_cpu + (child.cpu_s if pid else 0.0)
    result.update(
        target_cpu_s=round(target_cpu, 3),
        cpu_s_per_1k=round(target_cpu / ok * 1000, 4),
        broker_cpu_s_per_1k=round(broker_cpu / ok * 1000, 4),
        peak_rss_kib=peak_rss_kib(pid) if pid else child.peak_rss_kib,
        system_busy=round(machine1.busy_since(machine0), 3),
        other_cores=round(machine1.others_since(machine0, ours), 2),
        steal_cores=round(machine1.steal_since(machine0), 2),
    )
    # The Python generator reports its own CPU without its start-up; wrk's is from wait4.
    result.setdefault("loadgen_cpu_s", round(child.cpu_s, 3) if pid else None)
    return result


def _start(plan: Plan, target: str) -> Server:
    cpus = plan.target_cpus(target)
    if target in ("relay", "relay-nokafka", "relay-workers"):
        env = plan.relay_env
        if target == "relay-workers":
            env = {"RELAY_WORKERS": str(os.cpu_count() or 1), **env}
        stand_in = target if target == "relay-nokafka" else None
        server = start_relay(
            plan.logs, plan.public_key, plan.prefix, plan.bootstrap, env, cpus, stand_in=stand_in
        )
        server.name = target
        return server
    if target == "relay-spool":
        return start_spooling_relay(plan.logs, plan.public_key, plan.prefix, plan.relay_env, cpus)
    if target == "fastapi":
        topic = f"{plan.prefix}.fastapi"
        return start_fastapi(plan.logs, plan.public_key, plan.bootstrap, topic, cpus)
    if target == "bridge" and plan.bridge_setup is not None:
        return start_bridge(plan.logs, *plan.bridge_setup, plan.bootstrap, cpus)
    key = plan.public_key if target == "verify" else None
    return start_ceiling(target, plan.logs, key, cpus)


def _http_point(plan: Plan, target: str, rate: float | None, label: str) -> Result:
    """One point against a fresh target: warm up, then measure."""
    print(f"bench: {target} {label} ...", file=sys.stderr, flush=True)
    requests, warm_requests = plan.request_files(target)
    # A primed target's connections each get one warm-up request before the clock starts;
    # wrk cannot do that, so the Python generator measures its maximum too.
    primed = target in PRIMED
    stem = plan.logs / f"{target}-{label}"
    flags = {
        phase: (
            stem.with_name(f"{stem.name}-{phase}.primed"),
            stem.with_name(f"{stem.name}-{phase}.go"),
        )
        for phase in ("warmup", "measure")
    }
    server = _start(plan, target)
    try:
        server.wait_ready()
        prime = (warm_requests, flags["warmup"]) if primed else None
        warm = pinned(
            _loadgen(plan, server.port, warm_requests, plan.warmup, rate, prime),
            plan.generator_cpus(),
        )
        go = flags["warmup"][1]
        run_child(
            warm,
            child_env(),
            plan.warmup * 3 + 60 + PRIME_S,
            plan.logs / f"{target}-{label}-warmup.out",
            (flags["warmup"][0], go.touch) if primed else None,
        )
        if rate is None and plan.use_wrk and not primed:
            argv = pinned(
                wrk.command(server.port, plan.duration, plan.connections), plan.generator_cpus()
            )
            env = child_env({"BENCH_REQUESTS": str(requests)})
            result = _measure(
                plan,
                f"{target}-{label}",
                argv,
                env,
                server,
                lambda out: wrk.parse(out, plan.connections),
            )
        else:
            prime = (warm_requests, flags["measure"]) if primed else None
            argv = pinned(
                _loadgen(plan, server.port, requests, plan.duration, rate, prime),
                plan.generator_cpus(),
            )
            result = _measure(
                plan,
                f"{target}-{label}",
                argv,
                child_env(),
                server,
                json.loads,
                flags["measure"] if primed else None,
            )
    finally:
        server.stop()
    print(f"bench: {target} {label}: {result['rate']:.0f}/s", file=sys.stderr, flush=True)
    return result


def _kafka_point(plan: Plan, topic: str, rate: float | None, label: str, records: int) -> Result:
    print(f"bench: kafka {label} ...", file=sys.stderr, flush=True)
    libs = localkafka.cache_dir() / "libs"
    argv = pinned(
        kafkaperf.command(libs, topic, records, plan.record_size, rate or -1, plan.bootstrap),
        plan.target_cpus("kafka"),
    )
    result = _measure(
        plan, f"kafka-{label}", argv, dict(os.environ), None, lambda out: kafkaperf.parse(out, rate)
    )
    print(f"bench: kafka {label}: {result['rate']:.0f}/s", file=sys.stderr, flush=True)
    return result


def _points(
    max_point: Result, fractions: Sequence[float], run: Callable[[float, str], Result]
) -> Result:
    rate = float(max_point["rate"])
    points = []
    for fraction in fractions:
        point = run(rate * fraction, f"{fraction:.0%}")
        points.append({"fraction": fraction, **point})
    return {"max": max_point, "points": points}


def measure_target(plan: Plan, target: str, topic: str) -> Result:
    """The maximum, then each fraction of it."""
    if target == "kafka":
        # A first, unreported run warms the broker and sizes the maximum's run to --duration.
        calibration = _kafka_point(plan, topic, None, "calibration", 150_000)
        records = max(10_000, int(float(calibration["rate"]) * plan.duration))
        max_point = _kafka_point(plan, topic, None, "max", records)
        return _points(
            max_point,
            plan.fractions,
            lambda rate, label: _kafka_point(
                plan, topic, rate, label, max(1000, int(rate * plan.duration))
            ),
        )
    max_point = _http_point(plan, target, None, "max")
    return _points(
        max_point, plan.fractions, lambda rate, label: _http_point(plan, target, rate, label)
    )


async def manage_topics(bootstrap: str, names: Sequence[str], *, delete: bool) -> None:
    """Create the topics ``names`` (the peers'), or delete those of them that exist."""
    options = client_options(Settings(kafka_bootstrap_servers=(bootstrap,)))
    if not delete:
        await ensure_topics(options, names, None, None)
        return
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if ours := [name for name in names if name in existing]:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def _first_line(argv: list[str]) -> str:
    """The first line a version command prints (java and wrk print it on stderr)."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    return next(iter((done.stdout + done.stderr).splitlines()), "?")


def machine(use_wrk: bool) -> Result:
    """What the figures were taken on."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?"
    )
    versions = {}
    names = ("hoopai-relay", "aiohttp", "aiokafka", "cryptography", "pynacl", "orjson")
    # The FastAPI peer's stack, from the bench extra.
    for name in (*names, "fastapi", "starlette", "uvicorn", "uvloop", "httptools"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kafka": localkafka.kafka_version(),
        "java": _first_line([os.environ.get("JAVA", "java"), "-version"]),
        "wrk": _first_line(["wrk", "--version"]).split(" [")[0] if use_wrk else None,
        "packages": versions,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _prepare(
    args: argparse.Namespace, logs: Path, bridge_topic: str | None
) -> tuple[Path, Path, Path, int, tuple[Path, Path] | None]:
    """Sign the deliveries; the request files, the public key, the median body size.

    With a ``bridge_topic``, the same two sets are also written as bridge requests. The
    measured set and the warm-up set are distinct, so that no delivery the relay saw while
    warming up comes back during the measurement.
    """
    key = Ed25519PrivateKey.generate()
    measured = deliveries.build(args.deliveries, key, locations=args.locations, seed=args.seed)
    warm = deliveries.build(
        WARM_DELIVERIES, key, locations=args.locations, seed=args.seed + 1, tag="w"
    )
    bridge_files = None
    if bridge_topic is not None:

        def build(delivery: deliveries.Delivery) -> bytes:
            return deliveries.bridge_request(delivery, bridge_topic)

        bridge_files = (
            deliveries.write_requests(measured, logs / "bridge-requests.bin", build),
            deliveries.write_requests(warm, logs / "bridge-warm-requests.bin", build),
        )
    return (
        deliveries.write_requests(measured, logs / "requests.bin"),
        deliveries.write_requests(warm, logs / "warm-requests.bin"),
        deliveries.write_public_key(key, logs / "bench-ed25519.pem"),
        deliveries.median_body_size(measured),
        bridge_files,
    )


def _bridge_setup(logs: Path) -> tuple[Path, bridge.Java] | str:
    """The bridge's jars and its Java, or why it cannot run here."""
    try:
        java = bridge.find_java()
        return bridge.fetch(java, logs / "bridge-fetch.log"), java
    except bridge.BridgeUnavailable as exc:
        return str(exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, of {', '.join(TARGETS)} (all)",
    )
    parser.add_argument("--fractions", default="0.5,0.9", help="open-loop rates, of each max")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (64)")
    parser.add_argument(
        "--deliveries", type=int, default=40_000, help="distinct pre-signed deliveries (40000)"
    )
    parser.add_argument("--locations", type=int, default=500, help="distinct locationIds (500)")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument(
        "--max-tool",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="closed-loop generator for the maximum (auto: wrk if installed)",
    )
    parser.add_argument(
        "--pin",
        choices=("auto", "on", "off"),
        default="auto",
        help="generator on core 0, each target on core 1, by taskset (auto: where there "
        "are 2 cores or more and taskset is installed)",
    )
    add_relay_env_option(parser)
    parser.add_argument("--out", type=Path, help="results folder (bench/results/<run id>)")
    parser.add_argument("--keep-topics", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every target was measured."""
    args = _parser().parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(targets) - set(TARGETS):
        raise SystemExit(f"bench: unknown target(s) {sorted(unknown)}; choose of {TARGETS}")
    use_wrk = args.max_tool == "wrk" or (args.max_tool == "auto" and wrk.available())
    if args.max_tool == "wrk" and not wrk.available():
        raise SystemExit(
            "bench: wrk is not installed (apt-get install wrk), or use --max-tool python"
        )
    can_pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if args.pin == "on" and not can_pin:
        raise SystemExit("bench: --pin on needs taskset (util-linux) and 2 cores or more")
    pin = args.pin == "on" or (args.pin == "auto" and can_pin)
    broker = localkafka.CLUSTERS["single"]
    # The harness's own check that the pid in its pid file is really that broker.
    pid = localkafka._read_pid(broker, broker.nodes[0])
    if pid is None or localkafka.metadata_brokers(broker.nodes[0].port) is None:
        raise SystemExit(f"bench: no local broker at {broker.bootstrap}: run `make kafka-up`")
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
    out: Path = args.out or REPO / "bench" / "results" / run_id
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    print(f"bench: signing {args.deliveries} + {WARM_DELIVERIES} deliveries ...", file=sys.stderr)
    prefix = f"bench-{run_id}"
    setup = _bridge_setup(logs) if "bridge" in targets else None
    skipped = {"bridge": setup} if isinstance(setup, str) else {}
    for target, reason in skipped.items():
        print(f"bench: WARNING {target} cannot run here: {reason}", file=sys.stderr)
    bridge_topic = f"{prefix}.bridge" if "bridge" in targets and not skipped else None
    requests, warm_requests, public_key, record_size, bridge_files = _prepare(
        args, logs, bridge_topic
    )
    plan = Plan(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        fractions=tuple(float(f) for f in args.fractions.split(",")),
        use_wrk=use_wrk,
        bootstrap=broker.bootstrap,
        broker_pid=pid,
        prefix=prefix,
        relay_env=relay_env(args),
        logs=logs,
        requests=requests,
        warm_requests=warm_requests,
        public_key=public_key,
        record_size=record_size,
        bridge_requests=bridge_files,
        bridge_setup=None if isinstance(setup, str) else setup,
        pins=("0", "1") if pin else None,
    )
    kafka_topic = f"{plan.prefix}.kafka-ceiling"
    relay_topics = all_topics(load_routes(REPO / "config" / "routes.toml", plan.prefix))
    peer_topics = [f"{plan.prefix}.{peer}" for peer in PEERS if peer in targets]
    results: Result = {
        "run_id": run_id,
        "command": shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine(use_wrk),
            "bridge": None
            if plan.bridge_setup is None
            else {"version": bridge.version(), "java": plan.bridge_setup[1].version},
        },
        "settings": {
            **{k: str(v) for k, v in vars(args).items()},
            "record_size": plan.record_size,
            "event_types": len(deliveries.templates()),
            "max_tool": "wrk" if use_wrk else "python",
            # The broker is not the benchmark's: never pinned, it shares whichever core.
            "pinned": {"generator": plan.generator_cpus(), "target": plan.target_cpus("relay")},
        },
        "targets": {},
    }
    began = time.monotonic()
    try:
        ours = [*([kafka_topic] if "kafka" in targets else []), *peer_topics]
        if ours:
            asyncio.run(manage_topics(plan.bootstrap, ours, delete=False))
        for target in targets:
            if target in skipped:
                results["targets"][target] = {"skipped": skipped[target]}
                continue
            results["targets"][target] = measure_target(plan, target, kafka_topic)
    finally:
        if not args.keep_topics:
            every = [*relay_topics, kafka_topic, *peer_topics]
            asyncio.run(manage_topics(plan.bootstrap, every, delete=True))
        for name in (
            "requests.bin",
            "warm-requests.bin",
            "bridge-requests.bin",
            "bridge-warm-requests.bin",
        ):
            (logs / name).unlink(missing_ok=True)
    results["seconds"] = round(time.monotonic() - began, 1)
    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report.write(results, out)
    print(f"bench: results in {out}", file=sys.stderr)
    print((out / "results.md").read_text())
    return 0
