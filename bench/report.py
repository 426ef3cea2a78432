"""The results of a run: ``results.json``, ``results.md`` and ``latency.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

Result = dict[str, Any]
NAMES: Final = {
    "http": "HTTP ceiling (bare aiohttp)",
    "verify": "verification ceiling (aiohttp + 1 Ed25519 verify)",
    "relay": "relay (`relay serve`, verify + Kafka acks=all)",
    "relay-nokafka": "relay without Kafka (`relay serve`, a delivery that does nothing)",
    "relay-workers": "relay, one worker per core (`relay serve --workers <cores>`)",
    "relay-spool": "relay, spooling (`relay serve`, verify + fsync to RELAY_SPOOL_DIR, Kafka away)",
    "bridge": "peer: Strimzi Kafka Bridge (no verify, Kafka acks=all)",
    "fastapi": "peer: FastAPI + aiokafka (verify + send_and_wait, acks=all)",
    "kafka": "Kafka ceiling (ProducerPerformance, acks=all)",
}
HEADLINE_GOAL: Final = 0.80
#: an open-loop point whose achieved rate is below this share of the offered one is marked
SUSTAINED: Final = 0.95


def headline(results: Result) -> float | None:
    """The relay's maximum over the verification ceiling's, if both were measured."""
    targets = results["targets"]
    if "relay" not in targets or "verify" not in targets:
        return None
    return float(targets["relay"]["max"]["rate"]) / float(targets["verify"]["max"]["rate"])


def _ms(point: Result) -> str:
    latency = point["latency_ms"]
    return " / ".join(f"{latency.get(p, float('nan')):.1f}" for p in ("p50", "p99", "p99.9"))


def _errors(point: Result) -> int:
    statuses = point["statuses"]
    bad = sum(n for code, n in statuses.items() if not code.startswith("2"))
    return int(bad + sum(point["errors"].values()))


def measured(results: Result) -> dict[str, Result]:
    """The targets that ran (a skipped one only has ``{"skipped": reason}``)."""
    return {name: t for name, t in results["targets"].items() if "skipped" not in t}


def markdown(results: Result) -> str:
    """The summary table, the per-point table, and the headline ratio."""
    ran = measured(results)
    fractions = [p["fraction"] for p in next(iter(ran.values()), {"points": []})["points"]]
    # CPU per request beside throughput: on a shared machine it is the steadier figure,
    # and at the open-loop points it is what a pod pays at its usual rates.
    cpu_head = " / ".join(["max", *(f"@{f:.0%}" for f in fractions)])
    head = ["target", "max /s", f"CPU ms / request (target): {cpu_head}"]
    head += [f"@{f:.0%}: p50 / p99 / p99.9 ms" for f in fractions]
    head += ["CPU ms / request (broker), max", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, target in results["targets"].items():
        if "skipped" in target:
            reason = " ".join(str(target["skipped"]).split()).replace("|", "/")
            cells = [NAMES.get(name, name), f"not run: {reason}"] + ["-"] * (len(head) - 2)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        top = target["max"]
        rss = max(p["peak_rss_kib"] for p in [top, *target["points"]]) / 1024
        cells = [NAMES.get(name, name), f"{top['rate']:,.0f}"]
        cells.append(" / ".join(f"{p['cpu_s_per_1k']:.3f}" for p in [top, *target["points"]]))
        cells += [
            _ms(p) + ("" if _sustained(p) else f" (only {p['rate']:,.0f}/s)")
            for p in target["points"]
        ]
        cells += [f"{top['broker_cpu_s_per_1k']:.3f}", f"{rss:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ratio = headline(results)
    if ratio is not None:
        verdict = "meets" if ratio >= HEADLINE_GOAL else "misses"
        lines += [
            "",
            f"**Headline: relay / verification ceiling = {ratio:.2f}** "
            f"({verdict} the goal of {HEADLINE_GOAL:.2f}).",
        ]
    targets = results["targets"]
    if {"relay-nokafka", "verify"} <= ran.keys():
        free = float(targets["relay-nokafka"]["max"]["rate"]) / float(
            targets["verify"]["max"]["rate"]
        )
        lines.append(f"\nRelay without Kafka / verification ceiling = {free:.2f}: the glue alone.")
    lines += ["", "Every point:", ""]
    head = [
        "target",
        "point",
        "generator",
        "offered /s",
        "achieved /s",
        "2xx",
        "not 2xx",
        "p50 / p99 / p99.9 ms",
        "generator late p99 ms",
        "send lag p99 ms",
        "target CPU s/1k",
        "broker CPU s/1k",
        "generator CPU s",
        "machine busy",
        "other cores (steal)",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, target in measured(results).items():
        for point in [target["max"], *target["points"]]:
            label = f"{point['fraction']:.0%}" if "fraction" in point else "max"
            offered = point["offered_rate"]
            lag = point["send_lag_ms"].get("p99")
            late = point.get("generator_late_ms", {}).get("p99")
            cells = [
                name,
                label,
                f"{point['tool']} ({point['mode']})",
                "-" if offered is None else f"{offered:,.0f}",
                f"{point['rate']:,.0f}",
                f"{point['ok']:,}",
                f"{_errors(point):,}",
                _ms(point),
                "-" if late is None else f"{late:.1f}",
                "-" if lag is None else f"{lag:.1f}",
                f"{point['cpu_s_per_1k']:.3f}",
                f"{point['broker_cpu_s_per_1k']:.3f}",
                "-" if point["loadgen_cpu_s"] is None else f"{point['loadgen_cpu_s']:.1f}",
                f"{point['system_busy']:.0%}",
                f"{point['other_cores']:.2f} ({point.get('steal_cores', 0.0):.2f})",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for name, target in measured(results).items():
        for point in [target["max"], *target["points"]]:
            outcomes = point.get("relay_outcomes", {})
            if set(outcomes) - {"accepted", "spooled"}:
                label = f"{point['fraction']:.0%}" if "fraction" in point else "max"
                lines.append(f"\nWARNING: {name} {label}: the relay answered {outcomes}.")
    return "\n".join(lines) + "\n"


def _sustained(point: Result) -> bool:
    offered = point["offered_rate"]
    return offered is None or float(point["rate"]) >= SUSTAINED * float(offered)


def plot(results: Result, path: Path) -> bool:
    """Latency against the offered rate, one colour per target; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(12, 5.5))
    styles = {"p50": "-", "p99": "--", "p99.9": ":"}
    for index, (name, target) in enumerate(measured(results).items()):
        points = sorted(target["points"], key=lambda p: float(p["offered_rate"]))
        colour = f"C{index}"
        xs = [float(p["offered_rate"]) for p in points]
        for percentile, style in styles.items():
            ys = [max(float(p["latency_ms"].get(percentile, 0.0)), 0.1) for p in points]
            axes.plot(xs, ys, style, color=colour)
            for x, y, point in zip(xs, ys, points, strict=True):
                axes.plot(x, y, "o" if _sustained(point) else "x", color=colour, markersize=6)
        axes.axvline(float(target["max"]["rate"]), color=colour, alpha=0.4, linewidth=1)
        axes.plot([], [], "-", color=colour, linewidth=6, label=NAMES.get(name, name))
    for percentile, style in styles.items():
        axes.plot([], [], style, color="grey", label=percentile)
    axes.plot([], [], "x", color="grey", label=f"achieved < {SUSTAINED:.0%} of offered")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered rate, requests (records) per second; thin vertical lines: each max")
    axes.set_ylabel("latency, ms (open loop, from the scheduled time)")
    axes.set_title(f"hoopai-relay bench {results['run_id']} (provisional: shared 2-core machine)")
    axes.grid(visible=True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write(results: Result, out: Path) -> None:
    """Write the three files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    if not plot(results, out / "latency.png"):
        print("bench: no matplotlib, so no plot: pip install matplotlib")


def main() -> int:
    """``python -m bench.report DIR``: rewrite the table and plot from ``DIR/results.json``."""
    import sys

    out = Path(sys.argv[1])
    write(json.loads((out / "results.json").read_text()), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
