"""Every published HighLevel example, signed, through ``relay serve`` into the real broker.

One relay process (real sockets) and one consumer serve the whole parametrized set: the
module fixture sends every sample of ``relay/tools/samples`` once, then reads the records back;
each test checks one sample's record against ``relay/tools/samples/sources.toml`` and the
catalogue. The property tests at the end send generated bodies through the same relay.
"""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.ingress.catalogue import KEY_SOURCES, load_catalogue
from relay.tools.deliveries import sign_ed25519
from relay.tools.samples import SAMPLES, sample, sample_names
from tests import rawhttp, relayproc
from tests.kafkautil import consume_ids, unique_topic
from tests.relayproc import ServeProcess

CATALOGUE = load_catalogue()
SOURCES: list[dict[str, Any]] = tomllib.loads((SAMPLES / "sources.toml").read_text())["sample"]
BY_NAME = {entry["name"]: entry for entry in SOURCES}
#: every name a record's ce_type can carry -> its family
FAMILY = {e.name: e.family for e in CATALOGUE.events} | {s.name: s.family for s in CATALOGUE.shapes}
#: the headers of every record before the catalogue, the one it added, and the W3C trace
#: context every record carries since issue 18 (relay/tracing.py)
HEADERS = {
    "ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type",
    "hoopai_signature", "hoopai_signature_scheme", "hoopai_key_source", "traceparent",
}  # fmt: skip

# HoopAI's 17 events, as the relay routed and keyed their published examples before the
# catalogue existed: (sample, family, key, ce_type). Unchanged, plus hoopai_key_source.
SEEDS: list[tuple[str, str, str, str]] = [
    ("AppointmentCreate", "appointments", "0007BWpSzSwfiuSl0tR2", "AppointmentCreate"),
    ("AppointmentDelete", "appointments", "0007BWpSzSwfiuSl0tR2", "AppointmentCreate"),
    ("AppointmentUpdate", "appointments", "0007BWpSzSwfiuSl0tR2", "AppointmentCreate"),
    ("ContactCreate", "contacts", "ve9EPM428h8vShlRW1KT", "ContactCreate"),
    ("ContactDelete", "contacts", "ve9EPM428h8vShlRW1KT", "ContactDelete"),
    ("ContactDndUpdate", "contacts", "ve9EPM428h8vShlRW1KT", "ContactDndUpdate"),
    ("ContactDndUpdate.docs-2026-08", "contacts", "ve9EPM428h8vShlRW1KT", "ContactDndUpdate"),
    ("ContactTagUpdate", "contacts", "ve9EPM428h8vShlRW1KT", "ContactTagUpdate"),
    ("ContactUpdate", "contacts", "ve9EPM428h8vShlRW1KT", "ContactUpdate"),
    ("InboundMessage", "messages", "l1C08ntBrFjLS0elLIYU", "InboundMessage"),
    ("InboundMessage.Call", "messages", "0d48aEf7q67DAu134bpy", "OutboundMessage"),
    ("InboundMessage.Email", "messages", "kF4NJ5gzRyQF2gKFD34G", "InboundMessage"),
    ("InboundMessage.Voicemail", "messages", "0dalah57827q67DAuXUxbpy", "InboundMessage"),
    ("InvoiceCreate", "invoices", "6578278e879ad2646715ba9c", "Invoice"),
    ("InvoicePaid", "invoices", "6578278e879ad2646715ba9c", "Invoice"),
    ("NoteCreate", "notes", "ve9EPM428h8vShlRW1KT", "NoteCreate"),
    ("OpportunityCreate", "opportunities", "ve9EPM428h8vShlRW1KT", "OpportunityCreate"),
    ("OpportunityStageUpdate", "opportunities", "ve9EPM428h8vShlRW1KT", "OpportunityStageUpdate"),
    ("OpportunityUpdate", "opportunities", "ve9EPM428h8vShlRW1KT", "OpportunityUpdate"),
    ("OutboundMessage", "messages", "l1C08ntBrFjLS0elLIYU", "OutboundMessage"),
    ("OutboundMessage.CallAndVoicemail", "messages", "0d48aEf7q67DAu134bpy", "OutboundMessage"),
    ("OutboundMessage.Email", "messages", "kF4NJ5gzRyQF2gKFD34G", "OutboundMessage"),
    ("OutboundMessage.VoicemailViaWorkflow", "messages", "0d48aEf7q67DAuXUxbpy", "OutboundMessage"),
    ("TaskCreate", "tasks", "ve9EPM428h8vShlRW1KT", "TaskCreate"),
]


READY = rawhttp.request(None, method=b"GET", path=b"/readyz")


def as_delivered(raw: bytes, webhook_id: str) -> bytes:
    """The published bytes with a top-level ``webhookId`` added, as real deliveries carry.

    Nothing else changes (not even the layout). Examples that already carry a webhookId are
    sent exactly as published.
    """
    if b'"webhookId"' in raw:
        return raw
    head = raw.rstrip()
    assert head.endswith(b"}"), "a published example is a JSON object"
    return head[:-1].rstrip() + b',\n  "webhookId": "' + webhook_id.encode() + b'"\n}\n'


def post(relay: ServeProcess, key: Ed25519PrivateKey, body: bytes) -> rawhttp.Reply:
    """POST ``body`` signed with ``key``, as HighLevel does, over a socket of its own."""
    headers = [
        (b"Content-Type", b"application/json"),
        (b"X-GHL-Signature", sign_ed25519(key, body).encode()),
    ]
    return rawhttp.exchange_sync(relay.port, rawhttp.request(body, headers))


@dataclass(frozen=True)
class Delivered:
    """One sample as sent, the relay's answer, and the record read back from Kafka."""

    body: bytes
    status: int | None
    answer: dict[str, Any]
    record: Any


@pytest.fixture(scope="module")
def events_relay(
    kafka_bootstrap: str,
    public_key_files: tuple[Path, ...],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeProcess]:
    """One ``relay serve`` for the module, with the shipped routes and topics of its own."""
    with relayproc.serve(
        kafka_bootstrap, public_key_files, tmp_path_factory.mktemp("events"), unique_topic("ev")
    ) as relay:
        # Ready: the producer is up and a broker answered, so no delivery meets a 429.
        give_up = time.monotonic() + 60
        while rawhttp.exchange_sync(relay.port, READY).status != 200:
            assert time.monotonic() < give_up, relay.log.read_text()
            time.sleep(0.2)
        yield relay


@pytest.fixture(scope="module")
def delivered(
    events_relay: ServeProcess, kafka_bootstrap: str, ed25519_key: Ed25519PrivateKey
) -> dict[str, Delivered]:
    """Every sample sent once, signed; each with its answer and its record from the broker."""
    sent: dict[str, tuple[bytes, rawhttp.Reply]] = {}
    for name in sample_names():
        body = as_delivered(sample(name), f"wh-{events_relay.prefix}-{name}")
        sent[name] = (body, post(events_relay, ed25519_key, body))
    answers = {name: json.loads(reply.body) for name, (_, reply) in sent.items()}
    topics = {answer["topic"] for answer in answers.values() if "topic" in answer}
    ids = {answer["id"] for answer in answers.values() if "id" in answer}
    records = asyncio.run(consume_ids(kafka_bootstrap, topics, ids))
    return {
        name: Delivered(body, reply.status, answers[name], records.get(answers[name].get("id")))
        for name, (body, reply) in sent.items()
    }


# --- the samples and their sources ------------------------------------------------------


def test_every_sample_has_its_source_and_every_event_a_sample() -> None:
    """sources.toml lists each sample file once; the 63 catalogue events all have a sample."""
    assert sorted(BY_NAME) == sample_names()
    assert len(SOURCES) == len(BY_NAME)
    assert {entry["event"] for entry in SOURCES} == {e.name for e in CATALOGUE.events}
    assert len(CATALOGUE.events) == 63


@pytest.mark.parametrize("entry", SOURCES, ids=[e["name"] for e in SOURCES])
def test_sample_source_cites_its_page_and_agrees_with_the_catalogue(entry: dict[str, Any]) -> None:
    """A sample names its page and the fence line; its expectations follow the catalogue."""
    event = next(e for e in CATALOGUE.events if e.name == entry["event"])
    site = f"https://marketplace.gohighlevel.com/docs/webhook/{event.name}"
    assert entry["source"] in (event.docs, site)
    assert ("line" in entry) == entry["source"].startswith("docs/webhook events/")
    assert entry["name"].split(".")[0] == event.name
    # Recognised as the page's event, as its family-level shape, or as the (wrong) type the
    # page published, which the catalogue's note for the event names.
    shapes = {s.name for s in CATALOGUE.shapes if event.name in s.events}
    assert entry["recognised_as"] in {event.name} | shapes or entry["recognised_as"] in event.note
    assert FAMILY[entry["recognised_as"]] == event.family
    fields = [f for f, source in KEY_SOURCES.items() if source == entry["key_source"]]
    assert fields
    assert fields[0] in event.location
    body = orjson.loads(sample(entry["name"]))
    assert body[fields[0]] == entry["key"]


# --- every published example through the relay -----------------------------------------


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_published_example_through_the_relay(
    delivered: dict[str, Delivered], events_relay: ServeProcess, name: str
) -> None:
    """The signed example lands in its family's topic, keyed and typed as the catalogue says."""
    entry, got = BY_NAME[name], delivered[name]
    topic = f"{events_relay.prefix}.{FAMILY[entry['recognised_as']]}"
    assert (got.status, got.answer.get("outcome"), got.answer.get("topic")) == (
        200,
        "accepted",
        topic,
    ), got.answer
    record = got.record
    assert record is not None, f"{name}: no record in {topic}"
    headers = dict(record.headers)
    assert record.topic == topic
    assert record.key is not None
    assert record.key == entry["key"].encode()
    assert headers["ce_type"] == f"com.hoopai.{entry['recognised_as']}".encode()
    assert headers["hoopai_key_source"] == entry["key_source"].encode()
    assert record.value == got.body  # byte for byte, as signed


@pytest.mark.parametrize(("name", "family", "key", "ce_type"), SEEDS)
def test_seed_event_behaves_as_before(
    delivered: dict[str, Delivered],
    events_relay: ServeProcess,
    name: str,
    family: str,
    key: str,
    ce_type: str,
) -> None:
    """HoopAI's 17 events keep their topic, key, ce_type and headers; plus key source, trace."""
    record = delivered[name].record
    assert record.topic == f"{events_relay.prefix}.{family}"
    assert record.key == key.encode()
    headers = dict(record.headers)
    assert headers.keys() == HEADERS
    assert headers["ce_type"] == f"com.hoopai.{ce_type}".encode()
    source = b"alt" if family == "invoices" else b"location"
    assert headers["hoopai_key_source"] == source


def test_seed_table_names_every_sample_of_the_17() -> None:
    """The table above covers every sample of a seed event (the 17 HoopAI lists)."""
    from relay.ingress.routing import KNOWN_EVENT_TYPES

    seeds = [n for n in sample_names() if n.split(".")[0] in KNOWN_EVENT_TYPES]
    assert sorted(seeds) == sorted(name for name, *_ in SEEDS)


# --- properties, through the same relay ---------------------------------------------------

#: keys no shape requires: a body made of these alone cannot have any shape
_SHAPE_KEYS = {k for s in CATALOGUE.shapes for k in (*s.requires, *s.requires_any)}
_OTHER_KEYS = st.text(max_size=12).filter(lambda k: k not in _SHAPE_KEYS and k != "type")
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
JSON_VALUES: st.SearchStrategy[object] = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
#: any field at all, the fields the shapes and keys look at included
ANY_FIELDS = st.dictionaries(
    st.sampled_from(sorted(_SHAPE_KEYS | {"locationId", "altId", "altType", "companyId", "id"}))
    | st.text(max_size=12),
    JSON_VALUES | st.sampled_from(["location", "SMS", "one_time"]),
    max_size=8,
)
# A `type` the catalogue cannot read as an event: lower-case first (every event name, alias
# and family prefix of the shipped routes file starts upper-case), or not a string at all.
UNKNOWN_TYPES = st.from_regex(r"\A[a-z0-9_]{0,16}\Z", fullmatch=True) | JSON_SCALARS.filter(
    lambda v: not isinstance(v, str)
)


@st.composite
def recognised_bodies(draw: st.DrawFn) -> tuple[dict[str, object], str]:
    """A JSON object with a catalogue ``type`` value and any other fields; its family."""
    kind = draw(st.sampled_from(sorted(CATALOGUE.by_type)))
    body: dict[str, object] = draw(ANY_FIELDS)
    body["type"] = kind
    return body, CATALOGUE.by_type[kind].family


@st.composite
def unrecognisable_bodies(draw: st.DrawFn) -> dict[str, object]:
    """A JSON object no event name, alias or shape can claim."""
    body: dict[str, object] = draw(st.dictionaries(_OTHER_KEYS, JSON_VALUES, max_size=6))
    if draw(st.booleans()):
        body["type"] = draw(UNKNOWN_TYPES)
    return body


def test_recognised_type_goes_to_its_family_whatever_else(
    events_relay: ServeProcess, ed25519_key: Ed25519PrivateKey
) -> None:
    """A body whose type names an event goes to that event's family, whatever its fields."""

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=recognised_bodies())
    def one(case: tuple[dict[str, object], str]) -> None:
        body, family = case
        body["webhookId"] = str(uuid.uuid4())  # each example a delivery of its own
        reply = post(events_relay, ed25519_key, orjson.dumps(body))
        answer = json.loads(reply.body)
        assert (reply.status, answer["outcome"]) == (200, "accepted"), (body, answer)
        assert answer["topic"] == f"{events_relay.prefix}.{family}", (body, answer)

    one()


def test_unrecognisable_body_goes_to_unrouted_never_deadletter_nor_4xx(
    events_relay: ServeProcess, ed25519_key: Ed25519PrivateKey
) -> None:
    """A JSON object the catalogue cannot recognise is kept in unrouted, answered 200."""

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=unrecognisable_bodies())
    def one(body: dict[str, object]) -> None:
        body["webhookId"] = str(uuid.uuid4())
        reply = post(events_relay, ed25519_key, orjson.dumps(body))
        answer = json.loads(reply.body)
        assert (reply.status, answer["outcome"]) == (200, "unrouted"), (body, answer)
        assert answer["topic"] == f"{events_relay.prefix}.unrouted"

    one()
