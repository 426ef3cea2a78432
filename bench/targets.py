"""The processes of a run: the servers under test, and the measuring children.

Every server is started by the benchmark on 127.0.0.1 as a process of its own, so that
``/proc/<pid>`` holds its CPU and memory and nothing else. Only processes started here are
ever stopped, by their own pid.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import bridge
from bench.procstat import peak_rss_kib

REPO: Final = Path(__file__).resolve().parent.parent
#: the bench-only entry points of the relay with its delivery stood in for, by target
STAND_INS: Final = {"relay-nokafka": "bench.nokafka", "relay-floor": "bench.floor"}
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0
_OUTCOME: Final = re.compile(r'^relay_requests_total\{.*outcome="([a-z_]+)".*\} (\S+)$')


def add_relay_env_option(parser: argparse.ArgumentParser) -> None:
    """``--relay-env RELAY_X=V``, repeatable: settings for the relay under test."""
    parser.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="RELAY_X=V",
        help="an extra setting for the relay under test (repeatable)",
    )


def relay_env(args: argparse.Namespace) -> dict[str, str]:
    """The ``--relay-env`` settings, as a mapping."""
    return dict(kv.split("=", 1) for kv in args.relay_env)


def free_port() -> int:
    """A port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The environment without any ``RELAY_*``, with ``bench`` importable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


@dataclass
class Server:
    """A server under test."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None = None
    #: where readiness is asked: ``(port, path)``; by default ``/readyz`` on ``port``
    ready_at: tuple[int, str] | None = None

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.process.pid

    def wait_ready(self) -> None:
        """Return once ``/readyz`` answers 200 (for the relay: Kafka reached)."""
        port, path = self.ready_at or (self.port, "/readyz")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                url = f"http://127.0.0.1:{port}{path}"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S:.0f} s")

    def outcomes(self) -> Counter[str]:
        """The relay's ``relay_requests_total`` by outcome (empty for the ceilings)."""
        counts: Counter[str] = Counter()
        if self.metrics_port is None:
            return counts
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if match := _OUTCOME.match(line):
                    counts[match[1]] += int(float(match[2]))
        return counts

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``STOP_TIMEOUT_S``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """``argv`` under ``taskset -c cpus`` (its threads and children too), or as it is."""
    return [*argv] if cpus is None else ["taskset", "-c", cpus, *argv]


def _spawn(
    name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, cpus: str | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 -- argv built here
            pinned(argv, cpus),
            env=env,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def start_ceiling(
    name: str, logs: Path, public_key: Path | None, cpus: str | None = None
) -> Server:
    """The bare aiohttp app, with one Ed25519 verify per request if given a key."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.ceiling", "--port", str(port)]
    if public_key is not None:
        argv += ["--public-key", str(public_key)]
    return Server(name, _spawn(name, argv, child_env(), logs / f"{name}.log", cpus), port)


def start_relay(
    logs: Path,
    public_key: Path,
    prefix: str,
    bootstrap: str,
    extra: Mapping[str, str],
    cpus: str | None = None,
    *,
    stand_in: str | None = None,
) -> Server:
    """``relay serve`` trusting ``public_key``, on the real broker, with ``acks=all``.

    With ``stand_in`` (a key of :data:`STAND_INS`), the same relay with its delivery
    replaced: by one that does nothing (:mod:`bench.nokafka`, the glue's cost apart from
    the Kafka client's), or by the least a client can do (:mod:`bench.floor`).
    """
    port, metrics_port = free_port(), free_port()
    env = child_env(
        {
            "RELAY_HTTP_HOST": "127.0.0.1",
            "RELAY_HTTP_PORT": str(port),
            "RELAY_METRICS_PORT": str(metrics_port),
            "RELAY_PUBLIC_KEYS": str(public_key),
            "RELAY_ROUTES_FILE": str(REPO / "config" / "routes.toml"),
            "RELAY_TOPIC_PREFIX": prefix,
            "RELAY_CREATE_TOPICS": "true",
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "RELAY_DRAIN_DELAY_S": "0",
            **extra,
        }
    )
    # The working directory is the log folder: no config/relay.toml there, so only the
    # defaults and the variables above apply.
    module = [STAND_INS[stand_in]] if stand_in else ["relay", "serve"]
    argv = [sys.executable, "-m", *module]
    process = _spawn("relay", argv, env, logs / f"{stand_in or 'relay'}.log", cpus)
    return Server("relay", process, port, metrics_port)


def start_fastapi(
    logs: Path, public_key: Path, bootstrap: str, topic: str, cpus: str | None = None
) -> Server:
    """The FastAPI/aiokafka peer (:mod:`bench.peer_fastapi`) under uvicorn, one worker."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.peer_fastapi", "--port", str(port)]
    argv += ["--public-key", str(public_key), "--bootstrap", bootstrap, "--topic", topic]
    process = _spawn("fastapi", argv, child_env(), logs / "fastapi.log", cpus)
    return Server("fastapi", process, port)


def start_bridge(
    logs: Path, libs: Path, java: bridge.Java, bootstrap: str, cpus: str | None = None
) -> Server:
    """The Strimzi Kafka Bridge's JVM, producer endpoints only; ready when its ``/ready`` is."""
    port, management_port = free_port(), free_port()
    config = bridge.write_config(logs / "bridge", port, management_port, bootstrap)
    argv = bridge.command(java, libs, config)
    process = _spawn("bridge", argv, child_env(), logs / "bridge.log", cpus)
    return Server("bridge", process, port, ready_at=(management_port, "/ready"))


@dataclass(frozen=True, slots=True)
class Finished:
    """A child that ran to its end: its output, its CPU (``wait4``) and its peak RSS."""

    output: str
    cpu_s: float
    peak_rss_kib: int


def run_child(
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
    log: Path,
    on_flag: tuple[Path, Callable[[], None]] | None = None,
) -> Finished:
    """Run a measuring child to its end, within ``timeout`` seconds; its output and cost.

    With ``on_flag``, its callback runs once, as soon as the child has created that file.
    """
    with log.open("w+b") as out:
        process = subprocess.Popen(  # noqa: S603 -- argv built here
            argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        peak = 0
        while True:
            # Polled, not from wait4: ru_maxrss also counts the parent's memory at the fork.
            with contextlib.suppress(OSError, RuntimeError):  # not exec'd yet, or a zombie
                peak = max(peak, peak_rss_kib(process.pid))
            if on_flag is not None and on_flag[0].exists():
                on_flag[1]()
                on_flag = None
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                _, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {process.returncode}; see {log}:\n{output[-2000:]}")
    return Finished(output, usage.ru_utime + usage.ru_stime, peak)


def start_spooling_relay(
    logs: Path, public_key: Path, prefix: str, extra: Mapping[str, str], cpus: str | None = None
) -> Server:
    """The relay with its spool on and Kafka unreachable: every record takes the spool path.

    The bootstrap is a closed port, so the producer never connects and each verified
    record is fsynced to a fresh spool directory (removed at exit) and answered 200.
    """
    spool = Path(tempfile.mkdtemp(prefix="relay-spool-"))
    atexit.register(shutil.rmtree, spool, ignore_errors=True)
    closed = f"127.0.0.1:{free_port()}"
    spooling = {"RELAY_SPOOL_DIR": str(spool), **extra}
    server = start_relay(logs, public_key, prefix, closed, spooling, cpus)
    server.name = "relay-spool"
    return server
