"""The Kafka record for one verified webhook: key, CloudEvents headers, the raw body.

Headers follow the CloudEvents Kafka protocol binding in binary mode: the body is the
event data, byte for byte as HoopAI signed it, and the event attributes are ``ce_*``
headers. Pure functions; :func:`build_record` runs on every request, so it stays cheap.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from relay.ingress import catalogue
from relay.ingress.routing import Kind, Route

__all__ = [
    "DEFAULT_SOURCE",
    "SIGNATURE_SCHEMES",
    "Record",
    "build_record",
    "cloudevents_headers",
    "format_time",
    "idempotency_key",
    "with_headers",
]

#: ``ce_source`` when the operator configures none.
DEFAULT_SOURCE: Final = "hoopai-relay"
#: The values of the ``hoopai_signature_scheme`` header.
SIGNATURE_SCHEMES: Final = frozenset({"ed25519", "rsa-sha256"})

_TYPE_PREFIX: Final = "com.hoopai."
_UNKNOWN_TYPE: Final = "com.hoopai.unknown"
_SPECVERSION: Final = ("ce_specversion", b"1.0")
_CONTENT_TYPE: Final = ("content-type", b"application/json")
# RFC 3339 date-time in the form every CloudEvents SDK parses: "T", upper-case "Z" or a
# numeric offset, at most nanoseconds. fromisoformat then checks the field ranges.
_RFC3339_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_RFC3339_MAX: Final = 64
# Headers from closed sets, made once rather than encoded on every request.
_SCHEME_HEADERS: Final = {
    s: ("hoopai_signature_scheme", s.encode("ascii")) for s in SIGNATURE_SCHEMES
}
_KEY_SOURCE_HEADERS: Final = {
    s: ("hoopai_key_source", s.encode("ascii"))
    for s in (*catalogue.KEY_SOURCES.values(), catalogue.NO_KEY)
}


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record, ready for the producer."""

    topic: str
    key: bytes | None
    #: the raw request body: the very bytes object received, never re-serialised.
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def _utf8(text: str) -> bytes:
    """Encode ``text`` as UTF-8; stray surrogates are escaped rather than raising."""
    return text.encode("utf-8", "backslashreplace")


def idempotency_key(event: dict[str, object] | str, body: bytes) -> str:
    """Return the payload's ``webhookId``, else ``sha256:`` and the hex digest of the body."""
    if not isinstance(event, str):
        webhook_id = event.get("webhookId")
        if isinstance(webhook_id, str) and webhook_id:
            return webhook_id
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _rfc3339(value: object) -> str | None:
    """Return ``value`` unchanged when it is an RFC 3339 date-time string, else None."""
    if not isinstance(value, str) or len(value) > _RFC3339_MAX:
        return None
    if _RFC3339_RE.fullmatch(value) is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:  # e.g. month 13, or a leap second fromisoformat cannot represent
        return None
    return value


def format_time(when: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with millisecond precision and ``Z``."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    utc = when.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


def cloudevents_headers(
    *, ce_id: str, ce_type: str, source: str, ce_time: str
) -> list[tuple[str, bytes]]:
    """The CloudEvents headers (binary mode) every record starts with, signed or not."""
    return [
        _SPECVERSION,
        ("ce_id", _utf8(ce_id)),
        ("ce_type", _utf8(ce_type)),
        ("ce_source", _utf8(source)),
        ("ce_time", ce_time.encode("ascii")),
        _CONTENT_TYPE,
    ]


def build_record(
    *,
    body: bytes,
    event: dict[str, object] | str,
    ce_id: str,
    route: Route,
    scheme: str,
    signature: str,
    received_at: datetime,
    source: str,
) -> Record:
    """Build the record for a verified body routed by :func:`relay.ingress.routing.route`.

    ``ce_id`` is :func:`idempotency_key` of the same body, computed once by the caller,
    which also needs it for the answer and the dedup window.
    """
    scheme_header = _SCHEME_HEADERS.get(scheme)
    if scheme_header is None:
        raise ValueError(f"unknown signature scheme: {scheme!r}")
    event_type = route.event_type
    ce_type = _TYPE_PREFIX + event_type if event_type else _UNKNOWN_TYPE
    timestamp = None if isinstance(event, str) else _rfc3339(event.get("timestamp"))
    ce_time = timestamp if timestamp is not None else format_time(received_at)
    headers = cloudevents_headers(ce_id=ce_id, ce_type=ce_type, source=source, ce_time=ce_time)
    headers += [("hoopai_signature", _utf8(signature)), scheme_header]
    key, key_source = (
        (None, catalogue.NO_KEY)
        if isinstance(event, str)
        else catalogue.partition_key(event, route.key_chain)
    )
    # Which field the key is: consumers tell agency-level events (company) from the rest.
    headers.append(_KEY_SOURCE_HEADERS[key_source])
    if route.kind is Kind.DEADLETTER and route.reason is not None:
        headers.append(("hoopai_deadletter_reason", route.reason.encode("ascii")))
    return Record(topic=route.topic, key=key, value=body, headers=tuple(headers))


def with_headers(record: Record, extra: tuple[tuple[str, bytes], ...]) -> Record:
    """``record`` with ``extra`` headers after its own (the trace context, per delivery)."""
    return Record(record.topic, record.key, record.value, record.headers + extra)
