"""A stalled cluster: the relay answers the retryable status within its deadline, then recovers."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import localkafka
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.sending import as_delivery, sign_ed25519
from tests.relayutil import RunningRelay, StartRelay


async def deliver(http: aiohttp.ClientSession, relay: RunningRelay, key: Ed25519PrivateKey) -> int:
    """Send one fresh signed delivery; return the status."""
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-stall"})
    headers = {"X-GHL-Signature": sign_ed25519(key, body)}
    async with http.post(relay.webhook_url, data=body, headers=headers) as response:
        return response.status


async def test_stalled_brokers_get_429_within_deadline_then_recover(
    kafka_cluster: localkafka.Cluster,
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
) -> None:
    """SIGSTOP every broker: 429 within the ack deadline, no 2xx; SIGCONT: 2xx again."""
    relay = await start_relay(
        kafka_bootstrap_servers=tuple(kafka_cluster.bootstrap.split(",")), ack_timeout_ms=1500
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        assert await deliver(http, relay, ed25519_key) == 200
        for node in kafka_cluster.nodes:
            localkafka.kill_node(kafka_cluster, node, signal.SIGSTOP)
        try:
            for _ in range(3):
                began = time.monotonic()
                assert await deliver(http, relay, ed25519_key) == 429
                assert time.monotonic() - began < 1.5 + 1.0  # deadline plus slack
        finally:
            for node in kafka_cluster.nodes:
                localkafka.kill_node(kafka_cluster, node, signal.SIGCONT)
        statuses: list[int] = []
        async with asyncio.timeout(60):
            while not statuses or statuses[-1] != 200:
                statuses.append(await deliver(http, relay, ed25519_key))
        assert set(statuses) <= {200, 429}
