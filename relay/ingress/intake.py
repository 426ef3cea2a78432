"""Verified bytes in, the record for Kafka out: the pure step of the request path.

No I/O and no state: the handler reads and verifies the body (or, on a workflow path,
checks its token), then calls :func:`intake` (or :func:`workflow_intake`), then hands the
record to the delivery.

A workflow body is published untouched, as a signed one is. What differs is what a
workflow body lacks: no ``webhookId`` (so ``ce_id`` follows the source's ``idempotency``),
no ``timestamp`` (``ce_time`` is when the relay received it), no ``type`` (``ce_type`` is
``com.hoopai.workflow.<name>``), and its key is at a path the operator names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from relay.ingress.catalogue import NO_KEY
from relay.ingress.routing import Kind, Route, Routes, metric_type, parse_event, route
from relay.ingress.signatures import Verified
from relay.records import Record, build_record, cloudevents_headers, format_time, idempotency_key
from relay.workflows import Idempotency, WorkflowSource, topic_of

#: the ``event_type`` label of an authenticated workflow request in relay_requests_total
WORKFLOW_EVENT_TYPE: Final = "workflow"
#: longest body field taken as a workflow key or id; a longer one counts as missing
MAX_FIELD_CHARS: Final = 256
_WORKFLOW_TYPE_PREFIX: Final = "com.hoopai.workflow."
#: ``hoopai_auth``: how a workflow request was authenticated (never the token itself)
_AUTH: Final = ("hoopai_auth", b"token")
#: ``hoopai_key_source`` of a workflow record keyed by the source's ``key`` path
KEY_FROM_PATH: Final = "path"


@dataclass(frozen=True, slots=True)
class Intake:
    """What a verified (or token-authenticated) body turns into."""

    #: where it goes and why: routed, unrouted or dead-lettered
    route: Route
    record: Record
    #: the idempotency key, computed once: the record's header, the dedup window, the answer
    ce_id: str
    #: the ``event_type`` label: one of a closed set, never read from the payload as is
    event_type: str
    #: the key of the window of recent ids; None for an id that is never repeated
    dedup_key: str | None


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
    return Intake(where, record, ce_id, metric_type(where), dedup_key=ce_id)


def field_at(event: dict[str, object], path: tuple[str, ...]) -> str | None:
    """The string (or integer) at a dotted path of the body, or None if there is none.

    None for an absent field, an intermediate value that is not an object, an empty
    string, a boolean, a float, or anything longer than :data:`MAX_FIELD_CHARS`.
    """
    if not path:
        return None
    value: object = event
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_FIELD_CHARS:
        return value
    return None


def _workflow_id(
    source: WorkflowSource, event: dict[str, object] | str, body: bytes, fresh_id: str
) -> tuple[str, bool]:
    """``ce_id`` by the source's idempotency, and whether a repeat of it is a duplicate."""
    if source.idempotency is Idempotency.DIGEST:
        return "sha256:" + hashlib.sha256(body).hexdigest(), True
    if source.idempotency is Idempotency.FIELD and not isinstance(event, str):
        found = field_at(event, source.idempotency_field)
        if found is not None:
            return found, True
    # none, or no usable field: an id of its own, so that no event is ever taken for another
    return fresh_id, False


def workflow_intake(
    body: bytes,
    source: WorkflowSource,
    routes: Routes,
    *,
    ce_source: str,
    received_at: datetime,
    fresh_id: str,
) -> Intake:
    """The record of ``body``, authenticated by a token of ``source``.

    ``fresh_id`` (a new UUID from the caller) is ``ce_id`` when the source's idempotency
    gives none. A body that is not a JSON object goes to ``<prefix>.deadletter``.
    """
    event = parse_event(body)
    ce_id, repeatable = _workflow_id(source, event, body, fresh_id)
    headers = cloudevents_headers(
        ce_id=ce_id,
        ce_type=_WORKFLOW_TYPE_PREFIX + source.name,
        source=ce_source,
        ce_time=format_time(received_at),
    )
    headers += [_AUTH, ("hoopai_workflow", source.name.encode("ascii"))]
    key: bytes | None = None
    if isinstance(event, str):
        where = route(event, routes)  # the dead-letter topic, with its reason
        assert where.reason is not None  # noqa: S101 -- route() gives a dead letter its reason
        headers.append(("hoopai_key_source", NO_KEY.encode("ascii")))
        headers.append(("hoopai_deadletter_reason", where.reason.encode("ascii")))
    else:
        where = Route(
            topic=topic_of(source, routes.prefix), kind=Kind.ROUTED, event_type=None, reason=None
        )
        found = field_at(event, source.key)
        key = None if found is None else found.encode("utf-8", "backslashreplace")
        # Whether the key came from the path, or the record took the documented fallback.
        key_source = NO_KEY if key is None else KEY_FROM_PATH
        headers.append(("hoopai_key_source", key_source.encode("ascii")))
    return Intake(
        route=where,
        record=Record(topic=where.topic, key=key, value=body, headers=tuple(headers)),
        ce_id=ce_id,
        event_type=WORKFLOW_EVENT_TYPE,
        dedup_key=f"workflow:{source.name}:{ce_id}" if repeatable else None,
    )
