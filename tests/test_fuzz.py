"""Property-based deliveries against ``relay serve`` in its own process, over bare sockets.

Hypothesis builds signed deliveries and mutates them (bytes flipped in the body or the
signature, truncations, the signature moved, repeated or replaced, noise headers, random
bodies signed correctly). Each answer must be one of the documented statuses, never a
5xx; a 200 only for an authentic body; the process must stay alive. At the end every
record in the topics the relay answered with must verify against the test key.

``make test`` runs 200 examples; ``make chaos`` (``HOOPAI_CHAOS=1``) 5,000;
``RELAY_FUZZ_EXAMPLES`` sets any number. The test prints one ``FUZZ {...}`` line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.tools.deliveries import as_delivery, sign_ed25519
from tests import rawhttp, relayproc
from tests.kafkautil import consume_all, unique_topic
from tests.relayproc import ServeProcess

pytestmark = pytest.mark.chaos

CHAOS = os.environ.get("HOOPAI_CHAOS") == "1"
EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "5000" if CHAOS else "200"))
#: what the relay may answer to anything a sender can put in one well-framed request
DOCUMENTED = {200, 400, 401, 408, 413, 415, 417, 429}
EVENT_TYPES = ["ContactCreate", "NoteCreate", "InboundMessage", "AppInstall", "", "Contact"]
MUTATIONS = [
    "valid", "random body", "flip body", "truncate body", "flip signature",
    "truncate signature", "random signature", "wrong key", "legacy header", "repeated",
    "noise headers",
]  # fmt: skip
#: header names a noise header may also take: the ones the relay reads
SENSITIVE = [b"Content-Type", b"Content-Encoding", b"X-WH-Signature", b"Expect", b"Connection"]


@dataclass(frozen=True)
class Case:
    """One request: its bytes, and whether its body is authentic."""

    mutation: str
    data: bytes
    #: the body is signed correctly by the test key
    authentic: bool
    #: nothing but a well-formed authentic delivery: must be accepted (or shed, 429)
    clean: bool


@pytest.fixture(scope="module")
def fuzz_relay(
    kafka_bootstrap: str,
    public_key_files: tuple[Path, ...],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeProcess]:
    """``relay serve`` for the whole fuzz run, with topics of its own."""
    with relayproc.serve(
        kafka_bootstrap, public_key_files, tmp_path_factory.mktemp("fuzz"), unique_topic("fuzz")
    ) as relay:
        yield relay


def _payloads() -> st.SearchStrategy[bytes]:
    """Delivery bodies: JSON events of known and unknown types, or any bytes at all."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=30)
    )
    events = st.builds(
        lambda kind, location, extra, webhook_id: as_delivery(
            {"type": kind, "locationId": location, **extra},
            webhook_id=webhook_id,
            timestamp="2026-11-28T12:00:00.000Z",
        ),
        st.sampled_from(EVENT_TYPES),
        st.text(min_size=1, max_size=20),
        st.dictionaries(st.text(max_size=10), scalars, max_size=5),
        st.uuids().map(str),
    )
    return st.one_of(events, st.binary(max_size=4096))


def _flip(data: bytes, index: int, mask: int) -> bytes:
    """``data`` with one byte XORed by a non-zero ``mask``."""
    i = index % len(data)
    return data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]


@st.composite
def cases(draw: st.DrawFn, key: Ed25519PrivateKey) -> Case:
    """A signed delivery, then one mutation of it."""
    body = draw(_payloads())
    mutation = draw(st.sampled_from(MUTATIONS))
    signature = sign_ed25519(key, body).encode()
    raw_signature = base64.b64decode(signature)
    headers: list[rawhttp.Header] = [(b"Content-Type", b"application/json")]
    index, mask = draw(st.integers(0, 1 << 16)), draw(st.integers(1, 255))
    if mutation == "flip body" and body:
        body = _flip(body, index, mask)
    elif mutation == "truncate body" and body:
        body = body[: index % len(body)]
    elif mutation == "flip signature":
        signature = base64.b64encode(_flip(raw_signature, index, mask))
    elif mutation == "truncate signature":
        signature = signature[: index % len(signature)]
    elif mutation == "random signature":
        signature = draw(
            st.binary(max_size=120).filter(lambda v: b"\r" not in v and b"\n" not in v)
        )
    elif mutation == "wrong key":
        signature = sign_ed25519(Ed25519PrivateKey.generate(), body).encode()
    if mutation == "legacy header":
        headers.append((b"X-WH-Signature", signature))
    elif mutation == "repeated":
        other = draw(st.sampled_from([signature, b"", b"N/A", base64.b64encode(bytes(64))]))
        pair = [(b"X-GHL-Signature", signature), (b"x-ghl-signature", other)]
        headers += pair if draw(st.booleans()) else pair[::-1]
    else:
        headers.append((b"X-GHL-Signature", signature))
    if mutation == "noise headers":
        names = st.one_of(
            st.sampled_from(SENSITIVE), st.from_regex(rb"\A[A-Za-z0-9-]{1,20}\Z", fullmatch=True)
        )
        values = st.binary(max_size=200).filter(lambda v: b"\r" not in v and b"\n" not in v)
        headers += draw(st.lists(st.tuples(names, values), max_size=8))
    # Authentic: what the relay would verify is the key's signature over these bytes (a
    # mutation may leave them intact: an empty body has no byte to flip).
    authentic = mutation not in ("legacy header", "repeated") and _verifies(key, body, signature)
    return Case(
        mutation=mutation,
        data=rawhttp.request(body, headers),
        authentic=authentic,
        clean=mutation in ("valid", "random body"),
    )


def _verifies(key: Ed25519PrivateKey, value: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (base64, as the record carries it) is the key's over ``value``."""
    try:
        key.public_key().verify(base64.b64decode(signature, validate=True), value)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def test_fuzzed_deliveries_never_5xx_never_forged_into_kafka(
    fuzz_relay: ServeProcess, kafka_bootstrap: str, ed25519_key: Ed25519PrivateKey
) -> None:
    """Every answer is documented, 200 only for authentic bodies; Kafka holds only verified."""
    statuses: Counter[str] = Counter()
    topics: set[str] = set()
    accepted: set[str] = set()  # the ids answered 200 (duplicates name no topic)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases(ed25519_key))
    def one(case: Case) -> None:
        reply = rawhttp.exchange_sync(fuzz_relay.port, case.data)
        statuses[f"{case.mutation}:{reply.status}"] += 1
        assert fuzz_relay.proc.poll() is None, "the relay died"
        assert reply.status in DOCUMENTED, (case, reply)
        if reply.status == 200:
            assert case.authentic, (case, reply)
            answer = json.loads(reply.body)
            accepted.add(answer["id"])
            if "topic" in answer:
                topics.add(answer["topic"])
        if case.clean:
            assert reply.status in (200, 429), (case, reply)

    one()
    records = {topic: asyncio.run(consume_all(kafka_bootstrap, topic)) for topic in sorted(topics)}
    unverified = [
        (topic, r.offset)
        for topic, rs in records.items()
        for r in rs
        if not _verifies(ed25519_key, r.value, dict(r.headers)["hoopai_signature"])
    ]
    missing = accepted - {dict(r.headers)["ce_id"].decode() for rs in records.values() for r in rs}
    print(
        "FUZZ "
        + json.dumps(
            {
                "examples": sum(statuses.values()),
                "records": sum(len(rs) for rs in records.values()),
                "answers": dict(sorted(statuses.items())),
            }
        )
    )
    assert not unverified
    assert not missing
    assert fuzz_relay.proc.poll() is None
