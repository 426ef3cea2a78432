"""The relay end to end: real sockets, real signatures, the real broker."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from relay import appkeys
from relay.ingress.routing import KNOWN_EVENT_TYPES
from relay.tools.deliveries import as_delivery, sign_ed25519, sign_rsa
from tests.kafkautil import consume, describe_partitions
from tests.relayutil import PAYLOADS, RunningRelay, StartRelay, post, post_signed

#: published example → the family its body is routed to (AppointmentUpdate/Delete examples
#: say "AppointmentCreate" and the InboundMessage Call one "OutboundMessage": same family)
FAMILIES = {
    "Appointment": "appointments",
    "Contact": "contacts",
    "Inbound": "messages",
    "Outbound": "messages",
    "Invoice": "invoices",
    "Note": "notes",
    "Opportunity": "opportunities",
    "Task": "tasks",
}
#: the published examples of HoopAI's 17 events (tests/test_events.py sends all 63 events')
EXAMPLES = sorted(p for p in PAYLOADS.glob("*.json") if p.name.split(".")[0] in KNOWN_EVENT_TYPES)


def family_of(path: Path) -> str:
    """The topic family a published example belongs to."""
    return next(f for prefix, f in FAMILIES.items() if path.name.startswith(prefix))


def headers_of(record: Any) -> dict[str, bytes]:
    """A record's headers as a dict (the relay writes each name once)."""
    return {name: bytes(value) for name, value in record.headers}


async def test_every_published_event_lands_in_its_topic(
    http: aiohttp.ClientSession, relay: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """Each of the 17 events (and variants) lands in its topic: key, exact bytes, headers."""
    sent: dict[str, tuple[Path, bytes, str, dict[str, Any]]] = {}
    for path in EXAMPLES:
        payload = json.loads(path.read_bytes())
        body = as_delivery(payload)
        signature = sign_ed25519(ed25519_key, body)
        status, answer, _ = await post(http, relay, body, X_GHL_Signature=signature)
        assert status == 200, (path.name, answer)
        assert answer["topic"] == relay.topic(family_of(path))
        sent[orjson.loads(body)["webhookId"]] = (path, body, signature, orjson.loads(body))

    by_family: dict[str, int] = {}
    for path, *_ in sent.values():
        by_family[family_of(path)] = by_family.get(family_of(path), 0) + 1
    for family, count in by_family.items():
        for record in await consume(_bootstrap(relay), relay.topic(family), count):
            headers = headers_of(record)
            path, body, signature, event = sent[headers["ce_id"].decode()]
            assert family_of(path) == family
            assert record.value == body
            location = event.get("locationId") or event.get("altId")
            assert isinstance(location, str)
            assert record.key == location.encode()
            assert headers["ce_specversion"] == b"1.0"
            assert headers["ce_source"] == b"hoopai-relay"
            assert headers["ce_time"] == event["timestamp"].encode()
            assert headers["content-type"] == b"application/json"
            assert headers["hoopai_signature"] == signature.encode()
            assert headers["hoopai_signature_scheme"] == b"ed25519"
            source = b"location" if "locationId" in event else b"alt"
            assert headers["hoopai_key_source"] == source
            expected_type = event.get("type", "Invoice")
            assert headers["ce_type"] == f"com.hoopai.{expected_type}".encode()


def _bootstrap(relay: RunningRelay) -> str:
    return ",".join(relay.settings.kafka_bootstrap_servers)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'{\n  "type": "ContactCreate",\n  "locationId": "loc-pretty",\n'
            b'  "webhookId": "wh-pretty",\n  "name": "  spaced   out  "\n}\n',
            id="pretty-printed",
        ),
        pytest.param(
            '{"type":"NoteCreate","locationId":"loc-\u00e9","webhookId":"wh-utf8",'
            '"body":"Zo\u00eb \u6f22\u5b57 \U0001f389 \\u00e9"}'.encode(),
            id="non-ascii",
        ),
    ],
)
async def test_body_bytes_are_untouched(
    http: aiohttp.ClientSession,
    relay: RunningRelay,
    ed25519_key: Ed25519PrivateKey,
    body: bytes,
) -> None:
    """Pretty-printed and non-ASCII bodies reach Kafka byte for byte, keyed by location."""
    status, answer, _ = await post_signed(http, relay, ed25519_key, body)
    assert status == 200, answer
    (record,) = await consume(_bootstrap(relay), answer["topic"], 1)
    assert record.value == body
    assert record.key == orjson.loads(body)["locationId"].encode()


async def test_legacy_rsa_accepted_when_enabled(
    http: aiohttp.ClientSession, start_relay: StartRelay, rsa_key: RSAPrivateKey
) -> None:
    """With legacy RSA on, an X-WH-Signature alone is verified and its scheme recorded."""
    relay = await start_relay(accept_legacy_rsa=True)
    body = as_delivery({"type": "TaskCreate", "locationId": "loc-rsa"})
    status, answer, _ = await post(http, relay, body, X_WH_Signature=sign_rsa(rsa_key, body))
    assert status == 200, answer
    (record,) = await consume(_bootstrap(relay), relay.topic("tasks"), 1)
    assert record.value == body
    assert headers_of(record)["hoopai_signature_scheme"] == b"rsa-sha256"


def _forgeries(
    body: bytes, ed25519_key: Ed25519PrivateKey, rsa_key: RSAPrivateKey
) -> list[tuple[str, dict[str, str], str]]:
    other_key = Ed25519PrivateKey.generate()
    good = sign_ed25519(ed25519_key, body)
    raw = base64.b64decode(good)
    return [
        ("missing", {}, "missing"),
        ("n/a", {"X-GHL-Signature": "N/A"}, "missing"),
        ("empty", {"X-GHL-Signature": ""}, "missing"),
        ("undecodable", {"X-GHL-Signature": "not*base64!"}, "not_base64"),
        ("short", {"X-GHL-Signature": base64.b64encode(raw[:63]).decode()}, "bad_length"),
        ("long", {"X-GHL-Signature": base64.b64encode(raw + b"\0").decode()}, "bad_length"),
        ("wrong key", {"X-GHL-Signature": sign_ed25519(other_key, body)}, "bad_signature"),
        (
            "other body",
            {"X-GHL-Signature": sign_ed25519(ed25519_key, body + b" ")},
            "bad_signature",
        ),
        (
            "flipped bit",
            {"X-GHL-Signature": base64.b64encode(bytes([raw[0] ^ 1]) + raw[1:]).decode()},
            "bad_signature",
        ),
        ("rsa in ed25519 header", {"X-GHL-Signature": sign_rsa(rsa_key, body)}, "bad_length"),
        ("legacy rsa, disabled", {"X-WH-Signature": sign_rsa(rsa_key, body)}, "legacy_disabled"),
    ]


async def test_forgeries_get_401_and_produce_nothing(
    http: aiohttp.ClientSession,
    relay: RunningRelay,
    ed25519_key: Ed25519PrivateKey,
    rsa_key: RSAPrivateKey,
) -> None:
    """Every forgery answers 401 with its reason, counts in the metric, and reaches no topic."""
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-forged"})
    metrics = relay.app[appkeys.METRICS]
    for name, headers, reason in _forgeries(body, ed25519_key, rsa_key):
        before = metrics.unauthenticated.labels(reason=reason)._value.get()
        async with http.post(relay.webhook_url, data=body, headers=headers) as response:
            answer = await response.json()
            assert (response.status, answer["reason"]) == (401, reason), name
        assert metrics.unauthenticated.labels(reason=reason)._value.get() == before + 1, name

    sentinel = as_delivery({"type": "ContactCreate", "locationId": "loc-sentinel"})
    status, _, _ = await post_signed(http, relay, ed25519_key, sentinel)
    assert status == 200
    # The topic holds exactly the sentinel: none of the forgeries was produced before it.
    (record,) = await consume(_bootstrap(relay), relay.topic("contacts"), 1)
    assert record.value == sentinel
    assert record.offset == 0


async def test_unknown_type_goes_to_unrouted(
    http: aiohttp.ClientSession, relay: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """An authentic event of a type the catalogue does not know is kept in unrouted, 2xx."""
    body = as_delivery({"type": "AppExploded", "locationId": "loc-app"})
    status, answer, _ = await post_signed(http, relay, ed25519_key, body)
    assert (status, answer["outcome"], answer["topic"]) == (
        200,
        "unrouted",
        relay.topic("unrouted"),
    )
    (record,) = await consume(_bootstrap(relay), relay.topic("unrouted"), 1)
    assert record.value == body
    assert headers_of(record)["ce_type"] == b"com.hoopai.AppExploded"


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"[1, 2, 3]", b"not_object"), (b"not json at all", b"not_json"), (b"\xff\xfe", b"not_json")],
)
async def test_authentic_non_object_goes_to_deadletter(
    http: aiohttp.ClientSession,
    relay: RunningRelay,
    ed25519_key: Ed25519PrivateKey,
    body: bytes,
    reason: bytes,
) -> None:
    """An authentic body that is no JSON object is dead-lettered with its reason, and 2xx."""
    status, answer, _ = await post_signed(http, relay, ed25519_key, body)
    assert (status, answer["outcome"]) == (200, "deadletter")
    (record,) = await consume(_bootstrap(relay), relay.topic("deadletter"), 1)
    assert record.value == body
    assert record.key is None
    assert headers_of(record)["hoopai_deadletter_reason"] == reason


async def test_kafka_unreachable_answers_429_within_the_deadline(
    http: aiohttp.ClientSession, start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """With no broker to reach, an authentic event gets 429 with Retry-After, not a hang."""
    relay = await start_relay(
        wait_connected=False, kafka_bootstrap_servers=("127.0.0.1:1",), ack_timeout_ms=2000
    )
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-down"})
    began = time.monotonic()
    status, answer, response = await post_signed(http, relay, ed25519_key, body)
    elapsed = time.monotonic() - began
    assert (status, answer["outcome"], answer["error"]) == (429, "unavailable", "not_connected")
    assert response.headers["Retry-After"] == "5"
    assert elapsed < 2.0 + 1.0  # the deadline, plus slack for a loaded machine


async def test_unavailable_status_is_configurable(
    http: aiohttp.ClientSession, start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """RELAY_UNAVAILABLE_STATUS=503 answers 503 instead of 429."""
    relay = await start_relay(
        wait_connected=False, kafka_bootstrap_servers=("127.0.0.1:1",), unavailable_status=503
    )
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-down"})
    status, _, response = await post_signed(http, relay, ed25519_key, body)
    assert status == 503
    assert "Retry-After" in response.headers


async def test_recent_ids_window_answers_a_repeat_without_producing(
    http: aiohttp.ClientSession, relay: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A re-delivery of an acknowledged webhook answers 200 'duplicate' and adds no record."""
    body = as_delivery({"type": "OpportunityCreate", "locationId": "loc-dedup"})
    first = await post_signed(http, relay, ed25519_key, body)
    second = await post_signed(http, relay, ed25519_key, body)
    assert (first[0], first[1]["outcome"]) == (200, "accepted")
    assert (second[0], second[1]["outcome"]) == (200, "duplicate")
    assert second[1]["id"] == first[1]["id"]
    marker = as_delivery({"type": "OpportunityCreate", "locationId": "loc-dedup"})
    await post_signed(http, relay, ed25519_key, marker)
    records = await consume(_bootstrap(relay), relay.topic("opportunities"), 2)
    assert [r.value for r in records] == [body, marker]


async def test_digest_id_for_a_delivery_without_webhook_id(
    http: aiohttp.ClientSession, start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A thin body without webhookId gets ce_id from its digest, the same on re-delivery."""
    relay = await start_relay(dedup_window=0)
    body = b'{"type":"ContactCreate","locationId":"loc-thin"}'
    ids = [(await post_signed(http, relay, ed25519_key, body))[1]["id"] for _ in range(2)]
    records = await consume(_bootstrap(relay), relay.topic("contacts"), 2)
    assert ids[0] == ids[1]
    assert ids[0].startswith("sha256:")
    assert {headers_of(r)["ce_id"].decode() for r in records} == {ids[0]}


async def test_concurrent_deliveries_are_all_acknowledged(
    http: aiohttp.ClientSession, relay: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """Fifty concurrent deliveries for one location are all 2xx and all in Kafka, in order."""
    bodies = [
        as_delivery({"type": "ContactUpdate", "locationId": "loc-many", "seq": i})
        for i in range(50)
    ]
    answers = await asyncio.gather(*(post_signed(http, relay, ed25519_key, b) for b in bodies))
    assert {status for status, _, _ in answers} == {200}
    records = await consume(_bootstrap(relay), relay.topic("contacts"), 50)
    assert {r.value for r in records} == set(bodies)
    assert len({r.partition for r in records}) == 1  # one location, one partition


async def test_record_refused_by_the_broker_is_retryable(
    http: aiohttp.ClientSession, start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A record over the broker's message.max.bytes gets 429 'produce_failed', never 2xx."""
    relay = await start_relay(max_body_bytes=4 * 1024 * 1024)
    body = as_delivery({"type": "NoteCreate", "locationId": "loc-big", "body": "n" * 2_000_000})
    status, answer, _ = await post_signed(http, relay, ed25519_key, body)
    assert (status, answer["error"]) == (429, "produce_failed")
    metrics = relay.app[appkeys.METRICS]
    assert metrics.unavailable.labels(cause="produce_failed")._value.get() == 1


@pytest.mark.parametrize(("partitions", "expected"), [(2, 2), (None, 3)])
async def test_create_topics_at_start(
    start_relay: StartRelay, partitions: int | None, expected: int
) -> None:
    """RELAY_CREATE_TOPICS creates every routed topic, with the broker's default if unset."""
    relay = await start_relay(create_topics=True, topic_partitions=partitions)
    bootstrap = _bootstrap(relay)
    for family in ("contacts", "messages", "invoices", "unrouted", "deadletter"):
        async with asyncio.timeout(10):  # a new topic's leaders take a moment to show
            while not (
                partitions_seen := await describe_partitions(bootstrap, relay.topic(family))
            ):
                await asyncio.sleep(0.1)
        assert len(partitions_seen) == expected


async def test_gzip_bytes_without_the_header_are_kept_as_sent(
    http: aiohttp.ClientSession, relay: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """Signed gzip bytes without Content-Encoding are never inflated: dead-lettered verbatim."""
    body = gzip.compress(as_delivery({"type": "ContactCreate", "locationId": "loc-gz"}))
    status, answer, _ = await post_signed(http, relay, ed25519_key, body)
    assert status == 200, answer
    (record,) = await consume(_bootstrap(relay), relay.topic("deadletter"), 1)
    assert record.value == body
