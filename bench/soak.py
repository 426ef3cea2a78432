"""``python -m bench.soak`` (``make soak``): the relay at a steady rate for 10 minutes.

Does its memory stay flat? It measures the relay's maximum first (wrk, closed loop, 10 s;
or take ``--rate``), then offers ``--fraction`` of it (0.5) open-loop for ``--duration``
seconds (600) with deliveries that are all distinct, so the relay's dedup window fills
up to its cap as it would in production, while it samples the relay's resident memory
(``VmRSS``) and CPU every ``--every`` seconds (5).

It writes ``soak.json`` (every sample, the load generator's result, the summary) and
``soak.png`` (memory and CPU over time) to ``--out`` (``bench/results/soak-<run id>``), and
prints the summary. "Flat" is read from the second half of the run, after the dedup
window is full: the slope of a least-squares line through its samples, in MiB per minute.

Needs the local broker (``make kafka-up``) and, for the maximum, wrk.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import secrets
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import deliveries, wrk
from bench.procstat import cpu_seconds, tree
from bench.targets import REPO, add_relay_env_option, child_env, relay_env, start_relay

sys.path.insert(0, str(REPO / "dev"))
import localkafka  # the harness lives in dev/, outside the package

MAX_SECONDS: Final = 10.0
CONNECTIONS: Final = 64
#: the relay's default dedup window: how many ids it remembers, bounded
DEDUP_WINDOW: Final = 100_000


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the relay: seconds since the load began, memory, CPU so far."""

    t_s: float
    rss_mib: float
    cpu_s: float


def rss_mib(pid: int) -> float:
    """Resident set size now (``VmRSS``) in MiB, added up over the process and its workers."""
    total_kib = 0
    for process in tree(pid):
        status = Path(f"/proc/{process}/status").read_text().splitlines()
        total_kib += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return total_kib / 1024


def slope_mib_per_min(samples: list[Sample]) -> float:
    """The least-squares slope of memory over time, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    fit = statistics.linear_regression([s.t_s for s in samples], [s.rss_mib for s in samples])
    return fit.slope * 60


def summary(samples: list[Sample], duration: float) -> dict[str, float]:
    """Memory at the start, the end and its peak; the second half's slope; CPU per second."""
    second_half = [s for s in samples if s.t_s >= duration / 2]
    first_minute = [s.rss_mib for s in samples if s.t_s < 60] or [samples[0].rss_mib]
    last_minute = [s.rss_mib for s in samples if s.t_s >= duration - 60] or [samples[-1].rss_mib]
    span = max(samples[-1].t_s - samples[0].t_s, 1e-9)
    return {
        "rss_first_minute_mib": round(statistics.median(first_minute), 1),
        "rss_last_minute_mib": round(statistics.median(last_minute), 1),
        "rss_peak_mib": round(max(s.rss_mib for s in samples), 1),
        "second_half_slope_mib_per_min": round(slope_mib_per_min(second_half), 3),
        "cpu_cores": round((samples[-1].cpu_s - samples[0].cpu_s) / span, 3),
    }


def _max_rate(port: int, requests: Path, log: Path) -> float:
    """The relay's closed-loop maximum, by wrk."""
    argv = wrk.command(port, MAX_SECONDS, CONNECTIONS)
    env = child_env({"BENCH_REQUESTS": str(requests)})
    with log.open("w") as out:
        done = subprocess.run(  # noqa: S603 -- argv built by bench.wrk
            argv, env=env, stdout=subprocess.PIPE, stderr=out, text=True, check=True,
            timeout=MAX_SECONDS * 3 + 30,
        )  # fmt: skip
    return float(wrk.parse(done.stdout, CONNECTIONS)["rate"])  # type: ignore[arg-type]


def _sample(pid: int, began: float, every: float, stop: threading.Event) -> list[Sample]:
    """Sample ``pid`` every ``every`` seconds until ``stop`` is set."""
    samples: list[Sample] = []
    while not stop.is_set():
        with contextlib.suppress(OSError, StopIteration):  # a process ended meanwhile
            samples.append(Sample(time.monotonic() - began, rss_mib(pid), cpu_seconds(pid)))
        stop.wait(every)
    return samples


def plot(samples: list[Sample], path: Path, title: str) -> None:
    """Memory (left axis) and CPU in cores (right axis) over the run, as a PNG."""
    import matplotlib  # the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t_s / 60 for s in samples]
    fig, memory = plt.subplots(figsize=(8, 4))
    memory.plot(minutes, [s.rss_mib for s in samples], color="tab:blue", label="RSS")
    memory.set_xlabel("minutes under load")
    memory.set_ylabel("relay RSS (MiB)", color="tab:blue")
    memory.set_ylim(bottom=0)
    cpu = memory.twinx()
    cores = [(b.cpu_s - a.cpu_s) / max(b.t_s - a.t_s, 1e-9) for a, b in itertools.pairwise(samples)]
    cpu.plot(minutes[1:], cores, color="tab:orange", alpha=0.6, label="CPU")
    cpu.set_ylabel("relay CPU (cores)", color="tab:orange")
    cpu.set_ylim(bottom=0)
    memory.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--rate", type=float, help="requests/s (default: fraction x the max)")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the max (0.5)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples (5)")
    add_relay_env_option(parser)
    parser.add_argument("--out", type=Path, help="results folder (bench/results/soak-<id>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every request was answered 2xx."""
    args = _parser().parse_args(argv)
    broker = localkafka.CLUSTERS["single"]
    if localkafka.metadata_brokers(broker.nodes[0].port) is None:
        raise SystemExit(f"bench.soak: no local broker at {broker.bootstrap}: run `make kafka-up`")
    if args.rate is None and not wrk.available():
        raise SystemExit("bench.soak: measuring the max needs wrk (apt-get install wrk); or --rate")
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
    out: Path = args.out or REPO / "bench" / "results" / f"soak-{run_id}"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = relay_env(args)
    key = Ed25519PrivateKey.generate()
    public_key = deliveries.write_public_key(key, logs / "soak-ed25519.pem")
    prefix = f"soak-{run_id}"

    rate = args.rate
    if rate is None:
        print("bench.soak: measuring the max (wrk, 10 s) ...", file=sys.stderr, flush=True)
        probe = deliveries.build(20_000, key, locations=500, seed=11, tag="m")
        probe_file = deliveries.write_requests(probe, logs / "max-requests.bin")
        server = start_relay(logs, public_key, f"{prefix}-max", broker.bootstrap, settings)
        try:
            server.wait_ready()
            rate = round(args.fraction * _max_rate(server.port, probe_file, logs / "wrk.log"), 1)
        finally:
            server.stop()
    count = int(rate * args.duration * 1.02) + 100
    print(f"bench.soak: signing {count} deliveries for {rate}/s ...", file=sys.stderr, flush=True)
    requests = deliveries.write_requests(
        deliveries.build(count, key, locations=500, seed=12, tag="s"), logs / "requests.bin"
    )

    server = start_relay(logs, public_key, prefix, broker.bootstrap, settings)
    try:
        server.wait_ready()
        argv = [
            sys.executable, "-m", "bench.loadgen", "--port", str(server.port),
            "--requests", str(requests), "--duration", str(args.duration),
            "--connections", str(CONNECTIONS), "--rate", f"{rate:.1f}",
        ]  # fmt: skip
        print(f"bench.soak: {args.duration:.0f} s at {rate}/s ...", file=sys.stderr, flush=True)
        stop = threading.Event()
        began = time.monotonic()
        samples: list[Sample] = []
        sampler = threading.Thread(
            target=lambda: samples.extend(_sample(server.pid, began, args.every, stop))
        )
        sampler.start()
        try:
            done = subprocess.run(  # noqa: S603 -- argv built here
                argv, env=child_env(), capture_output=True, text=True, check=True,
                timeout=args.duration * 2 + 120,
            )  # fmt: skip
        finally:
            stop.set()
            sampler.join()
        load: dict[str, Any] = json.loads(done.stdout)
        outcomes = dict(server.outcomes())
    finally:
        server.stop()

    result = {
        "run_id": run_id,
        "rate": rate,
        "duration_s": args.duration,
        "deliveries": count,
        "dedup_window": int(settings.get("RELAY_DEDUP_WINDOW", DEDUP_WINDOW)),
        "relay_env": settings,
        "summary": summary(samples, args.duration),
        "load": load,
        "relay_outcomes": outcomes,
        "samples": [[round(s.t_s, 1), round(s.rss_mib, 2), round(s.cpu_s, 3)] for s in samples],
    }
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(samples, out / "soak.png", f"relay at {rate:.0f} requests/s for {args.duration:.0f} s")
    latency = load["latency_ms"]
    print(
        json.dumps(
            {
                **result["summary"],
                "rate_offered": rate,
                "rate_achieved": load["rate"],
                "statuses": load["statuses"],
                "p50_p99_p999_ms": [latency.get(p) for p in ("p50", "p99", "p99.9")],
                "out": str(out),
            }
        )
    )
    return 0 if set(load["statuses"]) <= {"200"} and not load["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
