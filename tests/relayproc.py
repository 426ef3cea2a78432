"""``relay serve`` as a process of its own, for figures about that process (RSS, fds).

A relay in the test's own process would share its memory, descriptors and event loop
with the load generator; the fuzz, overload and memory tests use this one instead.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.relayutil import serve_env


@dataclass(frozen=True)
class ServeProcess:
    """A running ``relay serve``: its process, ports, topic prefix and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    prefix: str
    log: Path

    @property
    def webhook_url(self) -> str:
        """Where HoopAI would POST."""
        return f"http://127.0.0.1:{self.port}/webhooks/hoopai"

    def rss_mib(self) -> float:
        """The process's resident memory now (``VmRSS``), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"/proc/{self.proc.pid}/status has no VmRSS")

    def scrape(self) -> str:
        """The relay's /metrics text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text

    def bucket_quantile(self, histogram: str, outcome: str, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (0-1) of one outcome."""
        buckets = []
        for line in self.scrape().splitlines():
            if line.startswith(f"{histogram}_bucket{{") and f'outcome="{outcome}"' in line:
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets.append((float(le), float(line.split()[-1])))
        buckets.sort()
        total = buckets[-1][1] if buckets else 0.0
        return next((le for le, count in buckets if count >= q * total), 0.0)

    def metric(self, name: str, default: float | None = None) -> float:
        """One sample from the relay's /metrics, by its name and labels as exposed there.

        ``name`` is written as the exposition writes it: ``process_open_fds``, or
        ``relay_requests_total{event_type="none",outcome="too_large"}``. An absent sample
        is ``default``, or an error without one.
        """
        for line in self.scrape().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        if default is None:
            raise AssertionError(f"{name} not in /metrics")
        return default


@contextlib.contextmanager
def serve(
    kafka_bootstrap: str, public_keys: tuple[Path, ...], folder: Path, prefix: str, **settings: str
) -> Iterator[ServeProcess]:
    """Run ``relay serve`` on 127.0.0.1 with ``RELAY_<NAME>`` for each setting; stop it after."""
    variables = {f"RELAY_{name.upper()}": value for name, value in settings.items()}
    env = serve_env(kafka_bootstrap, public_keys, prefix, **variables)
    log = folder / "relay.log"
    # The log goes to a file: a pipe nobody reads would fill and stall the relay.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve"], env=env, cwd=folder, stdout=out, stderr=out
        )
    try:
        port, metrics_port = wait_listening(proc, log)
        yield ServeProcess(proc, port, metrics_port, prefix, log)
    finally:
        proc.terminate()
        proc.wait(timeout=40)


def wait_listening(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, int]:
    """The webhook and metrics ports from the 'listening' log line, within 30 s.

    ``proc`` may be ``relay serve`` or a ``podman run`` of the image; lines that are not
    the relay's JSON (podman's own warnings) are passed over.
    """
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        assert proc.poll() is None, log.read_text()
        for line in log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("message") == "listening":
                return int(entry["http"][1]), int(entry["metrics"][1])
        time.sleep(0.1)
    raise AssertionError(f"relay serve did not listen within 30 s: {log.read_text()}")
