"""``relay serve`` as a real process: JSON logs, and SIGTERM under load loses nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.tools.deliveries import as_delivery, sign_ed25519
from tests import relayproc
from tests.kafkautil import consume_all, unique_topic
from tests.relayutil import serve_env

DELIVERIES = 400
WORKERS = 16
SIGTERM_AFTER = 100
MARKER = "BODY-MARKER-never-logged"


async def test_sigterm_under_load_loses_no_acknowledged_event(
    kafka_bootstrap: str,
    public_key_files: tuple[Path, ...],
    ed25519_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    """SIGTERM mid-load: readiness 503, drain, exit 0, and every 2xx-answered event in Kafka."""
    prefix = unique_topic("shutdown")
    env = serve_env(
        kafka_bootstrap,
        public_key_files,
        prefix,
        RELAY_DRAIN_DELAY_S="1.5",
        RELAY_SHUTDOWN_GRACE_S="10",
        RELAY_READY_CHECK_INTERVAL_S="0.5",
    )
    relay = await relayproc.start(env, tmp_path)  # cwd without a config/relay.toml
    url = relay.url
    bodies = [
        as_delivery({"type": "ContactUpdate", "locationId": f"loc-{i % 7}", "note": MARKER})
        for i in range(DELIVERIES)
    ]
    signatures = [sign_ed25519(ed25519_key, body) for body in bodies]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(DELIVERIES):
        queue.put_nowait(i)
    answers: dict[int, int | str] = {}
    sigterm_sent = asyncio.Event()
    ready_during_drain: list[int] = []

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            headers = {"X-GHL-Signature": signatures[i]}
            try:
                async with http.post(
                    f"{url}/webhooks/hoopai", data=bodies[i], headers=headers
                ) as r:
                    answers[i] = r.status
            except aiohttp.ClientError as exc:  # the listener closed: no answer, not a 2xx
                answers[i] = type(exc).__name__
            if len(answers) == SIGTERM_AFTER and not sigterm_sent.is_set():
                relay.proc.send_signal(signal.SIGTERM)
                sigterm_sent.set()

    async def watch_readiness(http: aiohttp.ClientSession) -> None:
        await sigterm_sent.wait()
        while relay.proc.poll() is None:
            try:
                async with http.get(f"{url}/readyz") as response:
                    ready_during_drain.append(response.status)
            except aiohttp.ClientError:
                return
            await asyncio.sleep(0.05)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.timeout(60):
        watcher = asyncio.create_task(watch_readiness(http))
        await asyncio.gather(*(worker(http) for _ in range(WORKERS)))
        returncode = await relay.wait(60)
        await watcher
    log = relay.text()

    assert returncode == 0, log
    assert 503 in ready_during_drain
    acknowledged = {i for i, status in answers.items() if status == 200}
    assert len(acknowledged) > SIGTERM_AFTER  # requests were still served while draining
    assert set(answers.values()) - {200} <= {429, 503, "ServerDisconnectedError",
                                             "ClientConnectorError", "ClientOSError"}  # fmt: skip

    records = await consume_all(kafka_bootstrap, f"{prefix}.contacts")
    in_kafka = {headers["ce_id"] for headers in (dict(r.headers) for r in records)}
    expected = {orjson.loads(bodies[i])["webhookId"].encode() for i in acknowledged}
    assert expected <= in_kafka

    lines: list[dict[str, Any]] = [json.loads(line) for line in log.splitlines() if line]
    events = [line["message"] for line in lines if line.get("event") == "shutdown"]
    assert events == [
        "shutdown: draining",
        "shutdown: closing the listener, finishing in-flight requests",
        "shutdown: done",
    ]
    assert MARKER not in log
    assert not any(sig in log for sig in signatures)


async def test_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    """Ctrl-C drains (``drain_delay_s``, here 30 s); Ctrl-C again ends it at once, exit 130."""
    # The broker is not needed to shut down.
    env = serve_env(
        "127.0.0.1:1", (), "hoopai", RELAY_DRAIN_DELAY_S="30", RELAY_SHUTDOWN_GRACE_S="40"
    )
    relay = await relayproc.start(env, tmp_path)
    try:
        relay.proc.send_signal(signal.SIGINT)
        await relay.wait_until(lambda r: r.logged_at("shutdown: draining") is not None, 10)
        second = time.monotonic()
        relay.proc.send_signal(signal.SIGINT)
        returncode = await relay.wait(5)
        took = time.monotonic() - second
    finally:
        if relay.proc.poll() is None:
            relay.proc.kill()
            relay.proc.wait(10)
    assert returncode == 130
    assert took < 5
    messages = [line["message"] for line in relay.lines()]
    rest = messages[messages.index("shutdown: draining") + 1 :]
    assert rest == ["shutdown: second signal, stopping at once"]
