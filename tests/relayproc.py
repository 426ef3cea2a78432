"""``relay serve`` as a process of its own: the one harness every process test uses.

A relay in the test's own process would share its memory, descriptors and event loop with
the load generator, and could not be sent SIGTERM; the shutdown, workers, fuzz, overload,
chaos and spool tests start ``python -m relay serve`` here instead. Its JSON log goes to a
file, never a pipe: a pipe nobody reads (a synchronous test, a busy loop) would fill and
stall the relay. The log lines are read back from that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.relayutil import serve_env

#: how long a relay may take to log "listening"
START_TIMEOUT_S = 30.0
_numbers = itertools.count()


def rss_mib(pid: int) -> float:
    """The resident memory of a process now (``VmRSS``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


@dataclass
class ServeProcess:
    """A running ``relay serve`` (or a ``--workers`` supervisor): its process and its log."""

    proc: subprocess.Popen[bytes]
    #: the webhook and metrics ports of its "listening" line (0 until it is read)
    port: int
    metrics_port: int
    #: the topic prefix it was started with, for the tests that read its topics
    prefix: str
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def url(self) -> str:
        """The base URL of the webhook port."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        """Where HoopAI would POST."""
        return f"{self.url}/webhooks/hoopai"

    def text(self) -> str:
        """The whole log so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (see :func:`json_lines`)."""
        return json_lines(self.log)

    def pids_saying(self, message: str) -> set[int]:
        """The pids that logged ``message`` (the supervisor's workers share its log)."""
        return {line["pid"] for line in self.lines() if line.get("message") == message}

    def logged_at(self, message: str) -> float | None:
        """When (``time.monotonic``) the first line with ``message`` was logged, if it was."""
        for line in self.lines():
            if line.get("message") == message:
                wall = datetime.fromisoformat(str(line["time"])).timestamp()
                return wall - time.time() + time.monotonic()
        return None

    def warnings(self) -> dict[str, int]:
        """How many times each WARNING or ERROR line was logged (message, and cause if any)."""
        found = Counter(
            " ".join(str(line[k]) for k in ("message", "cause", "detail") if k in line)[:160]
            for line in self.lines()
            if line.get("level") in ("warning", "error")
        )
        return dict(found)

    def rss_mib(self) -> float:
        """The process's resident memory now, in MiB."""
        return rss_mib(self.pid)

    def scrape(self) -> str:
        """The relay's /metrics text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text

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

    async def wait_until(
        self, predicate: Callable[[ServeProcess], bool], timeout_s: float = START_TIMEOUT_S
    ) -> None:
        """Poll the log until ``predicate(self)`` holds."""
        async with asyncio.timeout(timeout_s):
            while not predicate(self):
                await asyncio.sleep(0.05)

    async def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit; its exit status."""
        async with asyncio.timeout(timeout_s):
            while (code := self.proc.poll()) is None:
                await asyncio.sleep(0.05)
        return code

    async def stop(self) -> None:
        """SIGTERM it if it still runs, SIGKILL after 30 s; for a test's teardown."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await self.wait(30)
            except TimeoutError:
                self.proc.kill()
                self.proc.wait(10)


def json_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log (a traceback line, or podman's own, is left out)."""
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                found.append(entry)
    return found


def listening(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, int] | None:
    """The webhook and metrics ports of the "listening" line, once logged; fail on an exit.

    ``proc`` may be ``relay serve`` or a ``podman run`` of the image. The metrics port of
    a ``--workers`` worker is the supervisor's, logged as a word: 0 here.
    """
    assert proc.poll() is None, f"relay serve exited: {log.read_text()[-3000:]}"
    for entry in json_lines(log):
        if entry.get("message") == "listening":
            metrics = entry["metrics"]
            return int(entry["http"][1]), int(metrics[1]) if isinstance(metrics, list) else 0
    return None


def wait_listening(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, int]:
    """:func:`listening`, waited for (blocking) within ``START_TIMEOUT_S``."""
    give_up = time.monotonic() + START_TIMEOUT_S
    while (ports := listening(proc, log)) is None:
        assert time.monotonic() < give_up, f"not listening: {log.read_text()[-3000:]}"
        time.sleep(0.05)
    return ports


def launch(env: dict[str, str], cwd: Path, *args: str, prefix: str = "") -> ServeProcess:
    """Start ``python -m relay serve *args`` in ``cwd`` with exactly ``env``; no waiting."""
    log = cwd / f"relay-{next(_numbers)}.log"
    with log.open("wb") as out:
        # Popen only forks: it returns at once, nothing here waits on the child.
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ServeProcess(proc, 0, 0, prefix, log)


async def start(env: dict[str, str], cwd: Path, *args: str, prefix: str = "") -> ServeProcess:
    """Start ``relay serve`` and return once it logged "listening" (its ports are known)."""
    relay = launch(env, cwd, *args, prefix=prefix)
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while (ports := listening(relay.proc, relay.log)) is None:
                await asyncio.sleep(0.05)
    except BaseException:
        await relay.stop()
        raise
    relay.port, relay.metrics_port = ports
    return relay


def _env(
    bootstrap: str, public_keys: tuple[Path, ...], prefix: str, settings: dict[str, str]
) -> dict[str, str]:
    """``serve_env`` with ``RELAY_<NAME>`` for each of ``settings``."""
    variables = {f"RELAY_{name.upper()}": value for name, value in settings.items()}
    return serve_env(bootstrap, public_keys, prefix, **variables)


@contextlib.asynccontextmanager
async def running(
    bootstrap: str, public_keys: tuple[Path, ...], folder: Path, prefix: str, **settings: str
) -> AsyncIterator[ServeProcess]:
    """``relay serve`` on 127.0.0.1 with ``RELAY_<NAME>`` for each setting, for the block."""
    relay = await start(_env(bootstrap, public_keys, prefix, settings), folder, prefix=prefix)
    try:
        yield relay
    finally:
        await relay.stop()


@contextlib.contextmanager
def serve(
    bootstrap: str, public_keys: tuple[Path, ...], folder: Path, prefix: str, **settings: str
) -> Iterator[ServeProcess]:
    """:func:`running` for synchronous code (a module fixture of hypothesis tests)."""
    relay = launch(_env(bootstrap, public_keys, prefix, settings), folder, prefix=prefix)
    try:
        relay.port, relay.metrics_port = wait_listening(relay.proc, relay.log)
        yield relay
    finally:
        relay.proc.terminate()
        relay.proc.wait(timeout=40)


def command(
    env: dict[str, str], *args: str, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    """``relay ARGS`` (a tool: ``spool``, ``redrive``) run to its end, as an operator does."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def spawn(env: dict[str, str], cwd: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``relay ARGS`` started in the background (to be interrupted); its output goes to a file."""
    log = cwd / f"command-{next(_numbers)}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", *args], env=env, cwd=cwd, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, log
