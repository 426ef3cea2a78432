"""Pre-signed deliveries: distinct bodies, built and signed before the clock starts.

Every one of the 17 HoopAI event types is equally likely; each type's body is one of its
published samples (``relay/tools/samples``). Each delivery gets a unique ``webhookId``, a fresh
``timestamp``, its own object id and one of ``locations`` location ids, and is signed with
an Ed25519 key made for this run only. The relay under test trusts the public half
(``RELAY_PUBLIC_KEYS``).

The requests are stored as complete HTTP/1.1 requests, each behind its length in ten ASCII
digits, so that the Python load generator and wrk's Lua script both read them unchanged.
Each target gets the request shape it understands, built from the same deliveries: a
HoopAI delivery (:meth:`Delivery.http_request`), or a Strimzi Kafka Bridge produce request
carrying the same body and the same key (:func:`bridge_request`).
"""

from __future__ import annotations

import base64
import random
import statistics
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.app import WEBHOOK_PATH
from relay.ingress.routing import KNOWN_EVENT_TYPES
from relay.tools.deliveries import as_delivery, sign_ed25519
from relay.tools.samples import sample, sample_names

_LENGTH_DIGITS: Final = 10


@dataclass(frozen=True, slots=True)
class Delivery:
    """One body, its ``X-GHL-Signature`` and its location id (the Kafka key)."""

    event_type: str
    body: bytes
    signature: str
    location: str

    def http_request(self) -> bytes:
        """The whole request as it goes on the wire (keep-alive, no port in ``Host``)."""
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            f"X-GHL-Signature: {self.signature}\r\nContent-Length: {len(self.body)}\r\n\r\n"
        )
        return head.encode("ascii") + self.body


#: the bridge's embedded format whose values are base64 bytes, stored in Kafka unchanged
BRIDGE_CONTENT_TYPE: Final = "application/vnd.kafka.binary.v2+json"


def bridge_request(delivery: Delivery, topic: str) -> bytes:
    """The same record as a Strimzi Kafka Bridge produce request (``POST /topics/<topic>``).

    The binary embedded format carries key and value base64-encoded, so the record lands in
    Kafka byte for byte as the relay writes it: the body as value, the location id as key.
    """
    record = {
        "key": base64.b64encode(delivery.location.encode()).decode("ascii"),
        "value": base64.b64encode(delivery.body).decode("ascii"),
    }
    body = orjson.dumps({"records": [record]})
    head = (
        f"POST /topics/{topic} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {BRIDGE_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def templates() -> dict[str, list[dict[str, object]]]:
    """The published samples of each of the 17 event types, keyed by type.

    A sample's ``type`` is set to the type its file is named for (some published examples
    carry another type); the invoice samples stay without one, as HighLevel publishes them.
    """
    found: dict[str, list[dict[str, object]]] = {}
    for name in sample_names():
        event_type = name.split(".")[0]
        payload = orjson.loads(sample(name))
        if not isinstance(payload, dict) or event_type not in KNOWN_EVENT_TYPES:
            continue
        if "type" in payload:
            payload["type"] = event_type
        found.setdefault(event_type, []).append(payload)
    missing = KNOWN_EVENT_TYPES - found.keys()
    if missing:
        raise RuntimeError(f"relay/tools/samples has no sample of {sorted(missing)}")
    return found


def build(
    count: int, key: Ed25519PrivateKey, *, locations: int, seed: int, tag: str = "b"
) -> list[Delivery]:
    """``count`` distinct signed deliveries; ``tag`` keeps two sets' object ids apart."""
    rng = random.Random(seed)  # noqa: S311 -- test data, not secrets
    by_type = templates()
    types = sorted(by_type)
    location_ids = [f"bench-loc-{n:05d}" for n in range(locations)]
    out = []
    for n in range(count):
        event_type = rng.choice(types)
        payload = dict(rng.choice(by_type[event_type]))
        location = rng.choice(location_ids)
        if payload.get("altType") == "location":
            payload["altId"] = location
        else:
            payload["locationId"] = location
        object_field = "_id" if "_id" in payload else "id"
        payload[object_field] = f"{tag}{n:09d}"
        body = as_delivery(payload, webhook_id=str(uuid.uuid4()))
        out.append(Delivery(event_type, body, sign_ed25519(key, body), location))
    return out


def median_body_size(deliveries: Sequence[Delivery]) -> int:
    """The median body length in bytes (the record size for Kafka's own benchmark)."""
    return round(statistics.median(len(d.body) for d in deliveries))


def write_public_key(key: Ed25519PrivateKey, path: Path) -> Path:
    """Write the public half as PEM (for ``RELAY_PUBLIC_KEYS``); return ``path``."""
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def write_requests(
    deliveries: Sequence[Delivery],
    path: Path,
    build: Callable[[Delivery], bytes] = Delivery.http_request,
) -> Path:
    """Store the deliveries as length-prefixed HTTP requests made by ``build``; return ``path``."""
    with path.open("wb") as out:
        for delivery in deliveries:
            raw = build(delivery)
            out.write(b"%0*d" % (_LENGTH_DIGITS, len(raw)))
            out.write(raw)
    return path


def read_requests(path: Path) -> list[bytes]:
    """The requests :func:`write_requests` stored."""
    return list(_split(path.read_bytes()))


def _split(data: bytes) -> Iterator[bytes]:
    at = 0
    while at < len(data):
        length = int(data[at : at + _LENGTH_DIGITS])
        at += _LENGTH_DIGITS
        yield data[at : at + length]
        at += length
