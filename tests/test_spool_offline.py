"""``relay spool status|export|drain`` on a spool whose relay was killed and never restarted."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.tools.deliveries import as_delivery, sign_ed25519
from tests import relayproc
from tests.kafkautil import consume, unique_topic
from tests.relayutil import closed_port, serve_env

SPOOLED = {"drain_delay_s": "0", "spool_after_ms": "300"}


def spool_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``relay spool ARGS`` as an operator runs it."""
    return relayproc.command(env, "spool", *args)


async def test_orphaned_spool_status_refusal_and_drain(
    kafka_bootstrap: str,
    public_key_files: tuple[Path, ...],
    ed25519_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    """Killed -9 while spooling, never restarted: status shows it, drain empties it in order.

    Against the same spool held by a live relay, drain refuses and names the lock.
    """
    prefix = unique_topic("orphan")
    spool = tmp_path / "spool"
    answered: dict[str, list[str]] = defaultdict(list)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
        relayproc.running(
            closed_port(), public_key_files, tmp_path, prefix, spool_dir=str(spool), **SPOOLED
        ) as killed,
    ):

        async def load(location: str) -> None:
            """One location's deliveries in order, until the relay dies under us."""
            for n in range(300):
                webhook_id = f"{location}-{n}"
                body = as_delivery(
                    {"type": "ContactCreate", "locationId": location}, webhook_id=webhook_id
                )
                headers = {"X-GHL-Signature": sign_ed25519(ed25519_key, body)}
                try:
                    async with http.post(killed.webhook_url, data=body, headers=headers) as r:
                        assert r.status == 200, await r.text()
                except aiohttp.ClientError:
                    return
                answered[location].append(webhook_id)

        workers = [asyncio.create_task(load(f"loc{w}")) for w in range(4)]
        async with asyncio.timeout(60):
            while sum(map(len, answered.values())) < 120:
                await asyncio.sleep(0.05)
        killed.proc.send_signal(signal.SIGKILL)
        await killed.wait(10)
        await asyncio.gather(*workers)
    total = sum(map(len, answered.values()))
    env = serve_env(kafka_bootstrap, public_key_files, prefix)

    shown = spool_cli(env, "status", str(spool), "--json")
    assert shown.returncode == 0, shown.stderr
    (state,) = [json.loads(line) for line in shown.stdout.splitlines()]
    assert state["held_by_live_relay"] is False
    assert state["records"] >= total  # also any fsynced whose answer the kill cut off
    assert state["topics"] == {f"{prefix}.contacts": state["records"]}
    exported = spool_cli(env, "export", str(spool))
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(lines) == state["records"]
    assert {json.loads(line["value"])["webhookId"] for line in lines} >= {
        i for ids in answered.values() for i in ids
    }

    # A live relay takes the spool (Kafka still away, so it keeps the records): refused.
    live_env = serve_env(closed_port(), public_key_files, prefix, RELAY_SPOOL_DIR=str(spool))
    live = await relayproc.start(live_env, tmp_path, prefix=prefix)
    try:
        refused = spool_cli(env, "drain", str(spool))
        held = spool_cli(env, "status", str(spool))
    finally:
        live.proc.send_signal(signal.SIGKILL)  # never restarted: the spool stays orphaned
        await live.wait(10)
    assert refused.returncode == 2, refused
    assert "a live relay holds this spool's lock" in refused.stderr
    assert "HELD by a live relay" in held.stdout

    drained = spool_cli(env, "drain", str(spool), "--timeout", "90")
    assert drained.returncode == 0, drained.stderr
    assert f"{state['records']} records delivered" in drained.stdout
    assert not list(spool.glob("*.seg"))
    after = spool_cli(env, "status", str(spool), "--json")
    assert json.loads(after.stdout)["records"] == 0

    records = await consume(kafka_bootstrap, f"{prefix}.contacts", state["records"])
    by_key: dict[str, list[str]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        ce_id = dict(rec.headers)["ce_id"].decode()
        if ce_id not in by_key[rec.key.decode()]:
            by_key[rec.key.decode()].append(ce_id)
    for location, ids in answered.items():
        assert by_key[location][: len(ids)] == ids, f"{location}: missing or out of order"
