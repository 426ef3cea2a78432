"""``python -m bench.rounds``: the issue-21 ratios, measured in interleaved rounds.

``python -m bench`` measures each target in turn, a minute or more apart. On a shared
virtual machine whose speed drifts from minute to minute by more than a change saves, a
ratio of two targets measured that way moves by ±0.1 from one run to the next
(docs/benchmarks.md, issue 21). Here the ratio's targets run side by side for the whole
run, each pinned to core 1 (only the one under load uses it), and are measured in short
rounds, one after the other, the order rotated each round. A round's ratios are taken
from figures seconds apart, and the report gives each ratio's median over the rounds with
its range, so the drift shows as spread instead of as a result.

Each round measures, per target: the maximum (wrk, closed loop), then the CPU per request
at one open-loop rate common to all targets (``--fraction`` of the relay's maximum in the
first round, or ``--rate``, to compare runs): the issue's "at the same rate". Needs the
local broker (``make kafka-up``) and wrk. ``relay-floor`` is the relay on
:mod:`bench.floor`'s client, the least a Kafka client can do at the same batching: a bound
on what any change to the relay's client can reach.

The relay's window of recent ids is off here (``RELAY_DEDUP_WINDOW=0``): the targets live
through every round and see the same deliveries again, which the window would answer as
duplicates, without producing. Its cost on the happy path is one set lookup and one
insertion per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import deliveries, wrk
from bench.floor import create_topics
from bench.procstat import cpu_seconds
from bench.run import manage_topics
from bench.targets import (
    REPO,
    Server,
    child_env,
    pinned,
    run_child,
    start_ceiling,
    start_fastapi,
    start_relay,
)
from relay.ingress.routing import all_topics, load_routes

TARGETS: Final = ("verify", "relay-nokafka", "relay-floor", "relay", "fastapi")
#: (numerator, denominator) of each ratio reported, where both ran
RATIOS: Final = (
    ("relay", "verify"),
    ("relay-nokafka", "verify"),
    ("relay-floor", "verify"),
    ("relay", "fastapi"),
    ("relay-nokafka", "fastapi"),
    ("relay-floor", "fastapi"),
)
_GENERATOR_CPU: Final = "0"
_TARGET_CPU: Final = "1"


def _start(target: str, logs: Path, key: Path, prefix: str, bootstrap: str) -> Server:
    if target == "verify":
        return start_ceiling("verify", logs, key, _TARGET_CPU)
    if target == "fastapi":
        return start_fastapi(logs, key, bootstrap, f"{prefix}.fastapi", _TARGET_CPU)
    server = start_relay(
        logs,
        key,
        prefix,
        bootstrap,
        {"RELAY_DEDUP_WINDOW": "0"},
        _TARGET_CPU,
        stand_in=None if target == "relay" else target,
    )
    server.name = target
    return server


def _point(
    server: Server, requests: Path, seconds: float, connections: int, rate: float | None, log: Path
) -> dict[str, float]:
    """One measurement against a running target: its rate, CPU per request, p99."""
    if rate is None:
        argv = wrk.command(server.port, seconds, connections)
        env = child_env({"BENCH_REQUESTS": str(requests)})
    else:
        argv = [sys.executable, "-m", "bench.loadgen", "--port", str(server.port)]
        argv += ["--requests", str(requests), "--duration", str(seconds)]
        argv += ["--connections", str(connections), "--rate", f"{rate:.1f}"]
        env = child_env()
    before = cpu_seconds(server.pid)
    child = run_child(pinned(argv, _GENERATOR_CPU), env, seconds * 3 + 60, log)
    cpu = cpu_seconds(server.pid) - before
    # Both generators' JSON has the same shape (bench/wrk.py follows bench/loadgen.py's).
    result: dict[str, Any] = (
        wrk.parse(child.output, connections) if rate is None else json.loads(child.output)
    )
    ok = int(result["ok"])
    if ok == 0:
        raise RuntimeError(f"{server.name}: no request answered 2xx; see its log in {log.parent}")
    return {
        "rate": float(result["rate"]),
        "cpu_ms_per_request": round(cpu / ok * 1000, 4),
        "p99_ms": float(result["latency_ms"]["p99"]),
        "not_ok": int(result["answers"]) - int(result["ok"]),
    }


def _median_range(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f} to {max(values):.3f})"


def report(rounds: list[dict[str, dict[str, dict[str, float]]]]) -> str:
    """The rounds as Markdown: each round's figures, then each ratio's median and range."""
    lines = [
        "| round | target | max /s | CPU ms/request at max | same rate /s | CPU ms/request "
        "there | p99 there ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, one in enumerate(rounds, 1):
        for target, got in one.items():
            peak, same = got["max"], got["same_rate"]
            lines.append(
                f"| {n} | {target} | {peak['rate']:,.0f} | {peak['cpu_ms_per_request']:.3f} | "
                f"{same['rate']:,.0f} | {same['cpu_ms_per_request']:.3f} | {same['p99_ms']:.1f} |"
            )
    lines += ["", "| ratio | max throughput: median (range) | CPU per request at the same rate |"]
    lines.append("|---|---|---|")
    for top, bottom in RATIOS:
        if not all(top in one and bottom in one for one in rounds):
            continue
        by_rate = [one[top]["max"]["rate"] / one[bottom]["max"]["rate"] for one in rounds]
        by_cpu = [
            one[top]["same_rate"]["cpu_ms_per_request"]
            / one[bottom]["same_rate"]["cpu_ms_per_request"]
            for one in rounds
        ]
        lines.append(f"| {top} / {bottom} | {_median_range(by_rate)} | {_median_range(by_cpu)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Start the targets, run the rounds, print and keep the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.rounds", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="per point (4)")
    parser.add_argument(
        "--fraction", type=float, default=0.5, help="the common rate, of the relay's max (0.5)"
    )
    parser.add_argument(
        "--rate", type=float, help="the common rate in requests/s (to compare two runs)"
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--out", type=Path, default=Path("bench/results/rounds"))
    args = parser.parse_args(argv)
    targets = args.targets.split(",")
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"--targets: no target {', '.join(sorted(unknown))}")
    if (os.cpu_count() or 1) < 2 or not wrk.available():
        raise SystemExit("bench.rounds: needs 2 cores or more, and wrk")
    out: Path = args.out.resolve()  # the targets run in it, and read the key from it
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    print("bench.rounds: signing 40000 deliveries ...", file=sys.stderr, flush=True)
    requests = deliveries.write_requests(
        deliveries.build(40_000, key, locations=500, seed=6), out / "requests.bin"
    )
    public = deliveries.write_public_key(key, out / "bench-ed25519.pem")
    prefix = f"bench-rounds-{secrets.token_hex(3)}"
    topics = [
        *all_topics(load_routes(REPO / "config" / "routes.toml", prefix)),
        f"{prefix}.fastapi",
    ]
    # All of them, writable: the floor target writes to the relay's topics without retrying.
    asyncio.run(create_topics(args.bootstrap, topics))
    servers = {t: _start(t, out, public, prefix, args.bootstrap) for t in targets}
    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
    try:
        for server in servers.values():
            server.wait_ready()
            _point(server, requests, 2, args.connections, None, out / f"{server.name}-warm.out")
        same_rate: float | None = args.rate
        for n in range(args.rounds):
            order = targets[n % len(targets) :] + targets[: n % len(targets)]
            maxima = {
                t: _point(servers[t], requests, args.seconds, args.connections, None, out / "w.out")
                for t in order
            }
            if same_rate is None:
                same_rate = args.fraction * maxima.get("relay", maxima[order[0]])["rate"]
            there = {
                t: _point(
                    servers[t], requests, args.seconds, args.connections, same_rate, out / "l.out"
                )
                for t in order
            }
            one = {t: {"max": maxima[t], "same_rate": there[t]} for t in targets}
            rounds.append(one)
            print(f"bench.rounds: round {n + 1} done", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
        asyncio.run(manage_topics(args.bootstrap, topics, delete=True))
    (out / "rounds.json").write_text(json.dumps(rounds, indent=1))
    text = report(rounds)
    (out / "rounds.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
