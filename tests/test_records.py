import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ingress.catalogue import load_catalogue, partition_key
from relay.ingress.intake import intake
from relay.ingress.routing import Kind, Routes, load_routes, parse_event, route
from relay.ingress.signatures import Scheme, Verified
from relay.records import DEFAULT_SOURCE, Record, build_record, idempotency_key
from relay.tools.samples import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
ROUTES_TOML = ROOT / "config" / "routes.toml"
PAYLOADS = SAMPLES
PREFIX = "hoopai"
RECEIVED_AT = datetime(2026, 9, 2, 10, 11, 12, 345678, tzinfo=UTC)
SIGNATURE = "c2lnbmF0dXJl"  # base64, as received
WEBHOOK_ID = "7f3c2b9e-webhook"
TIMESTAMP = "2026-09-02T10:11:10.123Z"


@pytest.fixture(scope="module")
def routes() -> Routes:
    """Return the shipped routing table under the prefix "hoopai"."""
    return load_routes(ROUTES_TOML, PREFIX)


def delivery(name: str, **extra: object) -> bytes:
    """Return a published example as a real delivery: the example plus ``extra`` fields."""
    event = orjson.loads((PAYLOADS / name).read_bytes())
    event.update(extra)
    return orjson.dumps(event)


def record_for(
    body: bytes,
    routes: Routes,
    *,
    scheme: str = "ed25519",
    signature: str = SIGNATURE,
    received_at: datetime = RECEIVED_AT,
    source: str = DEFAULT_SOURCE,
) -> Record:
    """Parse, route and build the record for ``body`` as the handler does."""
    event = parse_event(body)
    return build_record(
        body=body,
        event=event,
        ce_id=idempotency_key(event, body),
        route=route(event, routes),
        scheme=scheme,
        signature=signature,
        received_at=received_at,
        source=source,
    )


def headers_of(record: Record) -> dict[str, bytes]:
    """Return the record's headers as a dict, checking that no name repeats."""
    names = [name for name, _ in record.headers]
    assert len(names) == len(set(names))
    return dict(record.headers)


# --- partition key ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "key"),
    [
        ({"locationId": "loc-1"}, b"loc-1"),
        ({"locationId": "loc-1", "altType": "location", "altId": "alt-1"}, b"loc-1"),
        ({"altType": "location", "altId": "alt-1"}, b"alt-1"),
        ({"locationId": "", "altType": "location", "altId": "alt-1"}, b"alt-1"),
        ({"locationId": 42, "altType": "location", "altId": "alt-1"}, b"alt-1"),
        ({"locationId": "l\u00f6c"}, "l\u00f6c".encode()),
        ({"altType": "company", "altId": "alt-1"}, None),
        ({"altType": "Location", "altId": "alt-1"}, None),
        ({"altType": "location", "altId": ""}, None),
        ({"altType": "location", "altId": ["alt-1"]}, None),
        ({"altId": "alt-1"}, None),
        ({"locationId": None}, None),
        ({}, None),
        ({"companyId": "co-1", "altType": "location", "altId": "alt-1"}, b"alt-1"),
        ({"companyId": "co-1", "id": "own-1"}, b"co-1"),
    ],
)
def test_partition_key(event: dict[str, object], key: bytes | None) -> None:
    """The key is locationId, else altId only when altType is "location", else companyId."""
    assert partition_key(event, load_catalogue().key)[0] == key


@pytest.mark.parametrize(
    ("event", "source"),
    [
        ({"locationId": "l", "altType": "location", "altId": "a", "companyId": "c"}, "location"),
        ({"altType": "location", "altId": "a", "companyId": "c"}, "alt"),
        ({"id": "i", "companyId": "c"}, "id"),
        ({"companyId": "c"}, "company"),
        ({"id": "i"}, "id"),
        ({"companyId": ""}, "none"),
    ],
)
def test_partition_key_of_a_location_event(event: dict[str, object], source: str) -> None:
    """A Location event falls back to its own id before the company; the source is named."""
    chain = load_catalogue().key_chain("locations")
    assert partition_key(event, chain)[1] == source


def test_partition_key_of_published_examples(routes: Routes) -> None:
    """A contact keys by its locationId, a type-less invoice by its location altId."""
    contact = record_for(delivery("ContactCreate.json"), routes)
    assert contact.key == b"ve9EPM428h8vShlRW1KT"
    assert headers_of(contact)["hoopai_key_source"] == b"location"
    invoice = record_for((PAYLOADS / "InvoiceCreate.json").read_bytes(), routes)
    assert invoice.key == b"6578278e879ad2646715ba9c"
    assert headers_of(invoice)["hoopai_key_source"] == b"alt"


# --- idempotency key ----------------------------------------------------------------------


def test_idempotency_key_is_the_webhook_id() -> None:
    """A non-empty string webhookId is the id, whatever the body."""
    assert idempotency_key({"webhookId": WEBHOOK_ID}, b"anything") == WEBHOOK_ID


@pytest.mark.parametrize(
    "event",
    [{}, {"webhookId": ""}, {"webhookId": 17}, {"webhookId": None}, "not_json", "not_object"],
)
def test_idempotency_key_falls_back_to_the_body_digest(event: dict[str, object] | str) -> None:
    """Without a usable webhookId the id is "sha256:" and the hex digest of the raw body."""
    body = b'{"type": "ContactCreate"}'
    assert idempotency_key(event, body) == "sha256:" + hashlib.sha256(body).hexdigest()


def test_idempotency_key_digest_is_stable_per_body() -> None:
    """A re-delivery of the same bytes gets the same id; different bytes, a different one."""
    body = (PAYLOADS / "InvoicePaid.json").read_bytes()
    again = bytes(bytearray(body))
    other = body.replace(b'"amountDue": 0', b'"amountDue": 1')
    assert other != body
    first = idempotency_key(parse_event(body), body)
    assert first == idempotency_key(parse_event(again), again)
    assert first != idempotency_key(parse_event(other), other)
    assert first.startswith("sha256:")
    assert len(first) == len("sha256:") + 64


# --- records --------------------------------------------------------------------------------


def test_record_of_a_real_delivery(routes: Routes) -> None:
    """A signed delivery carries its topic, key, raw body and CloudEvents headers."""
    body = delivery("ContactCreate.json", webhookId=WEBHOOK_ID, timestamp=TIMESTAMP)
    record = record_for(body, routes, source="https://relay.example/hoopai")
    assert record.topic == "hoopai.contacts"
    assert record.key == b"ve9EPM428h8vShlRW1KT"
    assert record.value is body
    assert headers_of(record) == {
        "ce_specversion": b"1.0",
        "ce_id": WEBHOOK_ID.encode(),
        "ce_type": b"com.hoopai.ContactCreate",
        "ce_source": b"https://relay.example/hoopai",
        "ce_time": TIMESTAMP.encode(),
        "content-type": b"application/json",
        "hoopai_signature": SIGNATURE.encode(),
        "hoopai_signature_scheme": b"ed25519",
        "hoopai_key_source": b"location",
    }


@pytest.mark.parametrize("name", sorted(p.name for p in PAYLOADS.glob("*.json")))
def test_value_is_the_body_for_every_published_example(routes: Routes, name: str) -> None:
    """The record's value is the very bytes object received, never re-serialised."""
    body = (PAYLOADS / name).read_bytes()
    record = record_for(body, routes)
    assert record.value is body
    assert record.topic.startswith(PREFIX + ".")
    assert record.topic != PREFIX + ".deadletter"


def test_rsa_scheme_header(routes: Routes) -> None:
    """A body verified with the legacy RSA key says so in its scheme header."""
    record = record_for(delivery("NoteCreate.json"), routes, scheme="rsa-sha256")
    assert headers_of(record)["hoopai_signature_scheme"] == b"rsa-sha256"


def test_unknown_scheme_is_refused(routes: Routes) -> None:
    """Only the two schemes the relay verifies may be named."""
    with pytest.raises(ValueError, match="signature scheme"):
        record_for(delivery("NoteCreate.json"), routes, scheme="hmac-sha256")


def test_ce_time_falls_back_to_received_at(routes: Routes) -> None:
    """Without a payload timestamp ce_time is received_at in RFC 3339 UTC with "Z"."""
    record = record_for((PAYLOADS / "TaskCreate.json").read_bytes(), routes)
    assert headers_of(record)["ce_time"] == b"2026-09-02T10:11:12.345Z"


def test_ce_time_converts_received_at_to_utc(routes: Routes) -> None:
    """A received_at in another zone is converted to UTC."""
    plus2 = timezone(timedelta(hours=2))
    received = datetime(2026, 9, 2, 12, 0, 0, tzinfo=plus2)
    record = record_for(delivery("TaskCreate.json"), routes, received_at=received)
    assert headers_of(record)["ce_time"] == b"2026-09-02T10:00:00.000Z"


@pytest.mark.parametrize(
    "timestamp",
    ["2021-11-26T12:41:02.193Z", "2021-11-26T12:41:02Z", "2021-11-26T12:41:02.193+05:30"],
)
def test_ce_time_is_the_payload_timestamp_verbatim(routes: Routes, timestamp: str) -> None:
    """An RFC 3339 payload timestamp is ce_time as sent, even on an old retry."""
    record = record_for(delivery("TaskCreate.json", timestamp=timestamp), routes)
    assert headers_of(record)["ce_time"] == timestamp.encode()


@pytest.mark.parametrize(
    "timestamp",
    [
        1700000000,
        None,
        "",
        "yesterday",
        "2021-11-26",
        "2021-11-26 12:41:02Z",
        "2021-13-26T12:41:02Z",
        "2021-11-26T12:41:02",
        "\u0662021-11-26T12:41:02Z",
    ],
)
def test_ce_time_ignores_a_timestamp_that_is_not_rfc3339(routes: Routes, timestamp: object) -> None:
    """A missing, non-string or non-RFC 3339 timestamp gives way to received_at."""
    record = record_for(delivery("TaskCreate.json", timestamp=timestamp), routes)
    assert headers_of(record)["ce_time"] == b"2026-09-02T10:11:12.345Z"


def test_naive_received_at_is_refused(routes: Routes) -> None:
    """received_at must be timezone-aware: a naive time has no defined UTC instant."""
    with pytest.raises(ValueError, match="timezone-aware"):
        record_for(delivery("TaskCreate.json"), routes, received_at=datetime(2026, 9, 2))


def test_typeless_invoice_record(routes: Routes) -> None:
    """A type-less invoice goes to invoices as com.hoopai.Invoice, keyed by its location."""
    body = (PAYLOADS / "InvoicePaid.json").read_bytes()
    record = record_for(body, routes)
    headers = headers_of(record)
    assert record.topic == "hoopai.invoices"
    assert record.key == b"6578278e879ad2646715ba9c"
    assert headers["ce_type"] == b"com.hoopai.Invoice"
    assert headers["ce_id"] == b"sha256:" + hashlib.sha256(body).hexdigest().encode()


def test_unrouted_record_keeps_the_verbatim_type(routes: Routes) -> None:
    """An unknown type goes to unrouted with its type verbatim in ce_type, still keyed."""
    record = record_for(b'{"type": "AppExploded", "companyId": "co"}', routes)
    assert record.topic == "hoopai.unrouted"
    assert record.key == b"co"
    assert headers_of(record)["ce_type"] == b"com.hoopai.AppExploded"
    assert headers_of(record)["hoopai_key_source"] == b"company"
    assert "hoopai_deadletter_reason" not in headers_of(record)


@pytest.mark.parametrize("body", [b"{}", b'{"type": 5}', b'{"type": ""}'])
def test_unrouted_record_without_a_type(routes: Routes, body: bytes) -> None:
    """A body with no usable type is com.hoopai.unknown."""
    record = record_for(body, routes)
    assert record.topic == "hoopai.unrouted"
    assert headers_of(record)["ce_type"] == b"com.hoopai.unknown"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1, 2]", b"not_object"),
        (b'"x"', b"not_object"),
        (b"{", b"not_json"),
        (b"\xff", b"not_json"),
    ],
)
def test_deadletter_record(routes: Routes, body: bytes, reason: bytes) -> None:
    """A dead letter keeps the raw body, a digest id, no key and its reason header."""
    record = record_for(body, routes)
    headers = headers_of(record)
    assert record.topic == "hoopai.deadletter"
    assert record.key is None
    assert record.value is body
    assert headers["ce_type"] == b"com.hoopai.unknown"
    assert headers["ce_id"] == b"sha256:" + hashlib.sha256(body).hexdigest().encode()
    assert headers["ce_time"] == b"2026-09-02T10:11:12.345Z"
    assert headers["hoopai_key_source"] == b"none"
    assert headers["hoopai_deadletter_reason"] == reason


def test_record_is_immutable(routes: Routes) -> None:
    """A Record is a frozen value."""
    record = record_for(b"{}", routes)
    with pytest.raises(AttributeError):
        record.topic = "elsewhere"  # type: ignore[misc]  # assigning a frozen field on purpose


# --- properties ---------------------------------------------------------------------------


@settings(database=None, max_examples=300)
@given(body=st.binary(max_size=512), signature=st.text(max_size=100))
def test_build_record_never_raises(routes: Routes, body: bytes, signature: str) -> None:
    """Any body and any signature text build a record with UTF-8 headers under the prefix."""
    event = parse_event(body)
    got = route(event, routes)
    record = build_record(
        body=body,
        event=event,
        ce_id=idempotency_key(event, body),
        route=got,
        scheme="ed25519",
        signature=signature,
        received_at=RECEIVED_AT,
        source=DEFAULT_SOURCE,
    )
    assert record.value is body
    assert record.topic.startswith(PREFIX + ".")
    for _, value in record.headers:
        value.decode("utf-8")
    assert (got.kind is Kind.DEADLETTER) == ("hoopai_deadletter_reason" in headers_of(record))


@settings(database=None, max_examples=200)
@given(
    event=st.dictionaries(
        st.sampled_from(["type", "locationId", "altId", "altType", "webhookId", "timestamp"]),
        st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30) | st.just("location"),
    )
)
def test_build_record_never_raises_for_odd_fields(routes: Routes, event: dict[str, object]) -> None:
    """Odd values in the fields the record reads never break it."""
    body = orjson.dumps(event)
    record = record_for(body, routes)
    headers = headers_of(record)
    assert record.value is body
    assert headers["ce_specversion"] == b"1.0"
    webhook_id = event.get("webhookId")
    if isinstance(webhook_id, str) and webhook_id:
        assert headers["ce_id"] == webhook_id.encode()
    else:
        assert headers["ce_id"].startswith(b"sha256:")


@pytest.mark.parametrize("webhook_id", [WEBHOOK_ID, None])
def test_intake_builds_the_record_the_handler_delivers(
    routes: Routes, webhook_id: str | None
) -> None:
    """The pure step: one ce_id (webhookId, else the digest) in the answer and the header."""
    extra = {} if webhook_id is None else {"webhookId": webhook_id}
    body = delivery("NoteCreate.json", **extra)
    verdict = Verified(Scheme.ED25519, SIGNATURE)
    taken = intake(body, verdict, routes, source=DEFAULT_SOURCE, received_at=RECEIVED_AT)
    assert taken.ce_id == idempotency_key(parse_event(body), body)
    assert taken.ce_id == (webhook_id or "sha256:" + hashlib.sha256(body).hexdigest())
    assert headers_of(taken.record)["ce_id"] == taken.ce_id.encode()
    assert taken.record == record_for(body, routes)
    assert taken.route == route(parse_event(body), routes)
