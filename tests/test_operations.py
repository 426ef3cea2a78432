"""Operating the relay: readiness, metrics, TLS on the ingress."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import localkafka
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from relay import appkeys
from relay.ingress.routing import KNOWN_EVENT_TYPES
from relay.ingress.signatures import Reason
from relay.metrics import Outcome
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests.certs import self_signed
from tests.kafkautil import stalled
from tests.relayutil import RunningRelay, StartRelay, scrape


async def ready(http: aiohttp.ClientSession, relay: RunningRelay) -> tuple[int, dict[str, object]]:
    """GET /readyz: status and body."""
    async with http.get(f"{relay.url}/readyz") as response:
        return response.status, await response.json()


async def wait_ready_status(
    http: aiohttp.ClientSession, relay: RunningRelay, status: int
) -> dict[str, object]:
    """Poll /readyz until it answers ``status`` (within 30 s); return the body."""
    async with asyncio.timeout(30):
        while True:
            got, body = await ready(http, relay)
            if got == status:
                return body
            await asyncio.sleep(0.1)


async def test_readiness_without_kafka_names_the_problem(
    http: aiohttp.ClientSession, start_relay: StartRelay
) -> None:
    """With no broker to reach, /readyz is 503 and says the producer has not started."""
    relay = await start_relay(wait_connected=False, kafka_bootstrap_servers=("127.0.0.1:1",))
    status, body = await ready(http, relay)
    assert status == 503
    assert body["problems"] == ["kafka: producer not started"]
    async with http.get(f"{relay.url}/healthz") as response:
        assert response.status == 200


async def test_readiness_follows_the_cluster_and_shutdown(
    http: aiohttp.ClientSession,
    kafka_cluster: localkafka.Cluster,
    start_relay: StartRelay,
) -> None:
    """/readyz goes 503 while every broker is stalled, back to 200 on its own, 503 on shutdown."""
    relay = await start_relay(
        kafka_bootstrap_servers=tuple(kafka_cluster.bootstrap.split(",")),
        ready_check_interval_s=0.5,
    )
    assert await wait_ready_status(http, relay, 200) == {"status": "ready"}
    with stalled(kafka_cluster):
        body = await wait_ready_status(http, relay, 503)
        assert body["problems"] == ["kafka: cluster unreachable"]
    await wait_ready_status(http, relay, 200)
    relay.app[appkeys.SHUTTING_DOWN].set()
    assert (await wait_ready_status(http, relay, 503))["problems"] == ["shutting down"]


async def test_metrics_scrape_names_and_closed_label_sets(
    http: aiohttp.ClientSession, relay: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """/metrics on its own port has the documented names; no label value comes from a payload."""
    hostile = as_delivery({"type": "Evil<script>x</script>", "locationId": "l"})
    bodies = [as_delivery({"type": "ContactCreate", "locationId": "l"}), hostile, b"[1]"]
    for body in [*bodies, bodies[0]]:  # the repeat is a duplicate
        headers = {"X-GHL-Signature": sign_ed25519(ed25519_key, body)}
        async with http.post(relay.webhook_url, data=body, headers=headers) as response:
            assert response.status == 200
    async with http.post(relay.webhook_url, data=b"{}") as response:
        assert response.status == 401
    text = await scrape(http, relay)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "relay_requests",
        "relay_unauthenticated_requests",
        "relay_unavailable_requests",
        "relay_kafka_producer_errors",
        "relay_request_duration_seconds",
        "relay_kafka_produce_duration_seconds",
        "relay_signature_verify_duration_seconds",
        "relay_in_flight_requests",
        "relay_build_info",
    ):
        assert name in families, name
    requests = {
        (s.labels["outcome"], s.labels["event_type"]): s.value
        for s in families["relay_requests"].samples
        if s.name == "relay_requests_total"
    }
    assert requests == {
        ("accepted", "ContactCreate"): 1,
        ("unrouted", "other"): 1,
        ("deadletter", "other"): 1,
        ("duplicate", "ContactCreate"): 1,
        ("unauthenticated", "none"): 1,
    }
    allowed_types = KNOWN_EVENT_TYPES | {"Invoice", "other", "none"}
    for sample in families["relay_requests"].samples:
        assert sample.labels["outcome"] in set(Outcome)
        assert sample.labels["event_type"] in allowed_types
    reasons = {s.labels["reason"] for s in families["relay_unauthenticated_requests"].samples}
    assert reasons == {Reason.MISSING.value}
    assert "Evil" not in text


async def test_tls_ingress_with_a_self_signed_certificate(
    http: aiohttp.ClientSession,
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    """With a certificate configured the relay speaks HTTPS only; a client trusting it gets 200."""
    cert_file, key_file = self_signed(tmp_path)
    relay = await start_relay(tls_cert_file=cert_file, tls_key_file=key_file)
    assert relay.url.startswith("https://")
    trust = ssl.create_default_context(cafile=str(cert_file))
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-tls"})
    headers = {"X-GHL-Signature": sign_ed25519(ed25519_key, body)}
    async with http.post(relay.webhook_url, data=body, headers=headers, ssl=trust) as response:
        assert response.status == 200
    plain = relay.webhook_url.replace("https://", "http://")
    with pytest.raises(aiohttp.ClientError):
        async with http.post(plain, data=body, headers=headers) as response:
            await response.read()
