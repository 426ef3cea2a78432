"""A stalled cluster: the relay answers the retryable status within its deadline, then recovers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import localkafka
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay import appkeys
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests.kafkautil import stalled
from tests.relayutil import RunningRelay, StartRelay


async def deliver(
    http: aiohttp.ClientSession, relay: RunningRelay, key: Ed25519PrivateKey
) -> tuple[int, dict[str, Any]]:
    """Send one fresh signed delivery; return the status and the JSON answer."""
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-stall"})
    headers = {"X-GHL-Signature": sign_ed25519(key, body)}
    async with http.post(relay.webhook_url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def warm_up(http: aiohttp.ClientSession, relay: RunningRelay, key: Ed25519PrivateKey) -> None:
    """Deliver until one is acknowledged (within 30 s): the topic exists, leaders are elected.

    The first record to a new topic on a just-started cluster can take longer than a short
    test deadline; that is set-up, not the behaviour under test.
    """
    async with asyncio.timeout(30):
        while (await deliver(http, relay, key))[0] != 200:
            await asyncio.sleep(0.2)


async def test_stalled_brokers_get_429_within_deadline_then_recover(
    kafka_cluster: localkafka.Cluster,
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
) -> None:
    """SIGSTOP every broker: 429 within the ack deadline, no 2xx; SIGCONT: 2xx again.

    The cause is ``ack_timeout`` until the readiness probe notices the stall, and
    ``not_connected``, answered at once, after it (README, "What the relay does with a delivery").
    """
    relay = await start_relay(
        kafka_bootstrap_servers=tuple(kafka_cluster.bootstrap.split(",")), ack_timeout_ms=1500
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        await warm_up(http, relay, ed25519_key)
        with stalled(kafka_cluster):
            for _ in range(3):
                began = time.monotonic()
                status, answer = await deliver(http, relay, ed25519_key)
                assert status == 429
                assert answer["error"] in {"ack_timeout", "not_connected"}
                assert time.monotonic() - began < 1.5 + 1.0  # deadline plus slack
        statuses: list[int] = []
        async with asyncio.timeout(60):
            while not statuses or statuses[-1] != 200:
                statuses.append((await deliver(http, relay, ed25519_key))[0])
        assert set(statuses) <= {200, 429}


async def test_in_flight_limit_sheds_at_once(
    kafka_cluster: localkafka.Cluster,
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
) -> None:
    """With the in-flight limit reached, a further delivery gets 429 'overloaded' at once."""
    relay = await start_relay(
        kafka_bootstrap_servers=tuple(kafka_cluster.bootstrap.split(",")),
        ack_timeout_ms=3000,
        max_in_flight=1,
    )
    metrics = relay.app[appkeys.METRICS]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        await warm_up(http, relay, ed25519_key)
        # The warm-up may itself have timed out once (set-up): count from here.
        before = {
            cause: metrics.unavailable.labels(cause=cause)._value.get()
            for cause in ("overloaded", "ack_timeout")
        }
        with stalled(kafka_cluster):
            waiting = asyncio.create_task(deliver(http, relay, ed25519_key))
            async with asyncio.timeout(5):
                while (metrics.registry.get_sample_value("relay_in_flight_requests") or 0) < 1:
                    await asyncio.sleep(0.01)
            status, answer = await deliver(http, relay, ed25519_key)
            assert (status, answer["error"]) == (429, "overloaded")
            assert (await waiting)[1]["error"] == "ack_timeout"
    for cause in ("overloaded", "ack_timeout"):
        assert metrics.unavailable.labels(cause=cause)._value.get() == before[cause] + 1
