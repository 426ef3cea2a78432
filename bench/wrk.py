"""wrk, closed-loop, cycling through the pre-signed requests (``cycle.lua``).

wrk keeps every connection busy: the next request goes out when the previous answer is
in. That measures the maximum throughput. Its latencies are closed-loop (coordinated
omission: a stall delays the requests that would have been sent meanwhile), so they are
kept in the JSON only as a curiosity; the latency figures come from the open-loop runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Final

SCRIPT: Final = Path(__file__).with_name("cycle.lua")
_MARK: Final = "BENCH_JSON "


def available() -> bool:
    """Whether ``wrk`` is on the PATH."""
    return shutil.which("wrk") is not None


def command(port: int, duration: float, connections: int) -> list[str]:
    """The wrk command line: one thread (see ``cycle.lua``), 10 s timeout per request."""
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        f"http://127.0.0.1:{port}/",
    ]


def parse(output: str, connections: int) -> dict[str, object]:
    """The measurement, in the Python load generator's shape, from wrk's output."""
    line = next(line for line in output.splitlines() if line.startswith(_MARK))
    raw = json.loads(line[len(_MARK) :])
    seconds = raw["duration_us"] / 1e6
    ok = raw["answers"] - raw["non_2xx"]
    errors = {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]}
    return {
        "tool": "wrk",
        "mode": "closed-loop",
        "connections": connections,
        "offered_rate": None,
        "duration_s": round(seconds, 3),
        "answers": raw["answers"],
        "ok": ok,
        "statuses": {"non_2xx": raw["non_2xx"]},
        "errors": errors,
        "rate": round(ok / seconds, 1),
        "latency_ms": {
            "p50": raw["p50_us"] / 1000,
            "p90": raw["p90_us"] / 1000,
            "p99": raw["p99_us"] / 1000,
            "p99.9": raw["p999_us"] / 1000,
            "max": raw["max_us"] / 1000,
        },
        "send_lag_ms": {},
        "generator_late_ms": {},
    }
