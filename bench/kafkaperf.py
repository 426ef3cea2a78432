"""Kafka's own ceiling: ``org.apache.kafka.tools.ProducerPerformance`` from the cached jars.

It produces fixed-size records (the median body size) with ``acks=all`` to one topic of the
same broker. Its latency is from ``send()`` to the ack, in whole milliseconds, and it is
not free of coordinated omission: when its throttle falls behind, records wait unmeasured.
Its CPU (from ``wait4``) includes the JVM's start-up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

_NUMBER: Final = r"([\d.]+)"
_SUMMARY: Final = re.compile(
    rf"{_NUMBER} records sent, {_NUMBER} records/sec \({_NUMBER} MB/sec\), "
    rf"{_NUMBER} ms avg latency, {_NUMBER} ms max latency, {_NUMBER} ms 50th, "
    rf"{_NUMBER} ms 95th, {_NUMBER} ms 99th, {_NUMBER} ms 99.9th"
)


def command(
    libs: Path, topic: str, records: int, size: int, throughput: float, bootstrap: str
) -> list[str]:
    """The ProducerPerformance command line (``throughput`` -1: as fast as it goes)."""
    return [
        os.environ.get("JAVA", "java"),
        "-Xms256m",
        "-Xmx512m",
        "-cp",
        f"{libs}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(size),
        "--throughput",
        str(round(throughput)),
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        "acks=all",
    ]


def parse(output: str, offered: float | None) -> dict[str, object]:
    """The final summary line, in the load generators' shape."""
    matches = _SUMMARY.findall(output)
    if not matches:
        raise RuntimeError(f"no ProducerPerformance summary in:\n{output[-2000:]}")
    sent, rate, _, _, latest, p50, p95, p99, p999 = (float(v) for v in matches[-1])
    return {
        "tool": "ProducerPerformance",
        "mode": "closed-loop" if offered is None else "throttled",
        "connections": None,
        "offered_rate": offered,
        "duration_s": round(sent / rate, 3) if rate else 0.0,
        "answers": int(sent),
        "ok": int(sent),
        "statuses": {},
        "errors": {},
        "rate": rate,
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99, "p99.9": p999, "max": latest},
        "send_lag_ms": {},
        "generator_late_ms": {},
    }
