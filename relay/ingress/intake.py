"""Verified bytes in, the record for Kafka out: the pure step of the request path.

No I/O and no state: the handler reads and verifies the body, then calls :func:`intake`,
then hands the record to the delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from relay.ingress.routing import Route, Routes, parse_event, route
from relay.ingress.signatures import Verified
from relay.records import Record, build_record, idempotency_key


@dataclass(frozen=True, slots=True)
class Intake:
    """What a verified body turns into."""

    #: where it goes and why: routed, unrouted or dead-lettered
    route: Route
    record: Record
    #: the idempotency key, computed once: the record's header, the dedup window, the answer
    ce_id: str


def intake(
    body: bytes, verdict: Verified, routes: Routes, *, source: str, received_at: datetime
) -> Intake:
    """Parse, route and build the record of one verified ``body``."""
    event = parse_event(body)
    where = route(event, routes)
    ce_id = idempotency_key(event, body)
    record = build_record(
        body=body,
        event=event,
        ce_id=ce_id,
        route=where,
        scheme=verdict.scheme.value,
        signature=verdict.signature,
        received_at=received_at,
        source=source,
    )
    return Intake(where, record, ce_id)
