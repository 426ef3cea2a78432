"""``relay serve --workers N``: several processes on one port, one ``/metrics``, one shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.settings import Settings
from relay.spool.frames import SEGMENT_SUFFIX
from relay.tools.deliveries import as_delivery, sign_ed25519
from relay.workers import stranded_spools, worker_env
from tests import relayproc
from tests.kafkautil import consume_all, unique_topic
from tests.relayproc import ServeProcess
from tests.relayutil import free_port, serve_env

WORKERS = 2
DELIVERIES = 60


def worker_pids(supervisor: ServeProcess) -> set[int]:
    """The pids that logged "listening": the workers (they share the supervisor's log)."""
    return supervisor.pids_saying("listening")


@pytest.fixture
async def supervisor(
    kafka_bootstrap: str, public_key_files: tuple[Path, ...], tmp_path: Path
) -> AsyncIterator[ServeProcess]:
    """``relay serve --workers 2`` on a fixed free port, its workers listening."""
    port, metrics_port = free_port(), free_port()
    prefix = unique_topic("workers")
    env = serve_env(
        kafka_bootstrap,
        public_key_files,
        prefix,
        RELAY_HTTP_PORT=str(port),
        RELAY_METRICS_PORT=str(metrics_port),
        RELAY_CREATE_TOPICS="true",
        RELAY_DRAIN_DELAY_S="0",
        RELAY_SHUTDOWN_GRACE_S="10",
        RELAY_LOG_LEVEL="DEBUG",
    )
    running = relayproc.launch(env, tmp_path, "--workers", str(WORKERS), prefix=prefix)
    running.port, running.metrics_port = port, metrics_port  # the supervisor's, fixed above
    try:
        await running.wait_until(lambda s: len(worker_pids(s)) == WORKERS)
        # Every worker has its own producer: wait for each, not for whichever /readyz hits.
        await running.wait_until(lambda s: len(s.pids_saying("kafka producer started")) == WORKERS)
        yield running
    finally:
        for pid in [running.pid, *worker_pids(running)]:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        await running.wait(30)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (and been reaped, or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_workers_share_the_port_and_the_metrics(
    supervisor: ServeProcess, kafka_bootstrap: str, ed25519_key: Ed25519PrivateKey
) -> None:
    """Deliveries spread over both workers, all land in Kafka, /metrics counts them all."""
    topic = f"{supervisor.prefix}.contacts"
    bodies = [
        as_delivery({"type": "ContactCreate", "locationId": f"loc-{i % 5}"})
        for i in range(DELIVERIES)
    ]
    # A connection per request, so the kernel's SO_REUSEPORT hash sees many source ports.
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def post(body: bytes) -> int:
            headers = {"X-GHL-Signature": sign_ed25519(ed25519_key, body)}
            async with http.post(
                f"{supervisor.url}/webhooks/hoopai", data=body, headers=headers
            ) as r:
                return r.status

        statuses = await asyncio.gather(*(post(body) for body in bodies))
        async with http.get(f"http://127.0.0.1:{supervisor.metrics_port}/metrics") as scrape:
            exposition = await scrape.text()

    assert statuses == [200] * DELIVERIES
    accepted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("relay_requests_total{") and 'outcome="accepted"' in line
    )
    assert accepted == DELIVERIES
    records = await consume_all(kafka_bootstrap, topic)
    in_kafka = {dict(r.headers)["ce_id"] for r in records}
    assert {orjson.loads(b)["webhookId"].encode() for b in bodies} <= in_kafka

    supervisor.proc.send_signal(signal.SIGTERM)
    assert await supervisor.wait(20) == 0
    assert supervisor.pids_saying("request") == worker_pids(
        supervisor
    )  # both served (odds of not: 2**-59)
    assert all(gone(pid) for pid in worker_pids(supervisor))


async def test_a_dead_worker_takes_the_others_down(supervisor: ServeProcess) -> None:
    """SIGKILL one worker: the supervisor stops the other and exits 1, for a restart."""
    first, second = sorted(worker_pids(supervisor))
    os.kill(first, signal.SIGKILL)
    assert await supervisor.wait(20) == 1
    assert gone(second)
    assert any(line["message"].startswith("a worker exited") for line in supervisor.lines())


def test_stranded_spools_are_those_no_process_of_this_run_drains(tmp_path: Path) -> None:
    """Segments in the folder of a process that this process count does not start are found."""
    for folder in (tmp_path, tmp_path / "worker-0", tmp_path / "worker-3"):
        folder.mkdir(exist_ok=True)
        (folder / f"{1:020d}{SEGMENT_SUFFIX}").write_bytes(b"x")
    (tmp_path / "worker-1").mkdir()  # empty: nothing stranded there

    assert stranded_spools(tmp_path, 1) == [tmp_path / "worker-0", tmp_path / "worker-3"]
    assert stranded_spools(tmp_path, 2) == [tmp_path, tmp_path / "worker-3"]
    assert stranded_spools(tmp_path, 4) == [tmp_path]


def test_each_worker_gets_its_own_spool_and_a_share_of_the_cap(tmp_path: Path) -> None:
    """Worker i spools into worker-<i> with cap / N, and writes its metrics to files."""
    settings = Settings(spool_dir=tmp_path, spool_max_bytes=3000, workers=3)
    env = worker_env(settings, {"PATH": "/bin"}, "metrics-dir", 2)
    assert env["RELAY_SPOOL_DIR"] == str(tmp_path / "worker-2")
    assert env["RELAY_SPOOL_MAX_BYTES"] == "1000"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "metrics-dir"
    assert env["RELAY_WORKERS"] == "1"
    assert "RELAY_SPOOL_DIR" not in worker_env(Settings(workers=3), {}, "metrics-dir", 2)


def test_serve_refuses_to_strand_a_spool(tmp_path: Path) -> None:
    """A spool left by one process, then `serve --workers 2`: exit 2 naming the folder."""
    (tmp_path / f"{1:020d}{SEGMENT_SUFFIX}").write_bytes(b"x")
    env = {"PATH": os.environ.get("PATH", ""), "RELAY_SPOOL_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--workers", "2"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f": {tmp_path} still hold(s) records" in done.stderr
    assert "RELAY_WORKERS=2" in done.stderr
