"""``POST /webhooks/hoopai``: glue between HTTP and the pure verify, route and record steps.

Order matters: nothing reads the body as JSON before its signature is verified over the
exact bytes received. An authentic event is never answered 4xx (the sender retries every
non-2xx and pauses endpoints below 90% success): it is routed, dead-lettered, or answered
with the retryable status when Kafka cannot take it in time. With ``RELAY_SPOOL_DIR``
set, "in time" includes the spool: see ``relay/drain.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from aiokafka.structs import RecordMetadata

from relay import appkeys
from relay.errors import Overloaded, ProduceFailed, PublishError
from relay.metrics import Metrics, Outcome
from relay.records import build_record, idempotency_key
from relay.routing import Kind, metric_type, parse_event, route
from relay.settings import Settings
from relay.signatures import Reason, Rejected, Verified, verify

log = logging.getLogger(__name__)

_NO_TYPE = "none"
_KIND_OUTCOME = {
    Kind.ROUTED: Outcome.ACCEPTED,
    Kind.UNROUTED: Outcome.UNROUTED,
    Kind.DEADLETTER: Outcome.DEADLETTER,
}


def _signature_headers(request: web.Request) -> tuple[str | None, str | None] | None:
    """The Ed25519 and RSA signature headers, or None when either is repeated."""
    found = []
    for name in ("X-GHL-Signature", "X-WH-Signature"):
        values = request.headers.getall(name, [])
        if len(values) > 1:
            # Two signatures for one body: which one the sender meant is unknowable.
            return None
        found.append(values[0] if values else None)
    return found[0], found[1]


async def receive(request: web.Request) -> web.Response:
    """Verify, route and publish one delivery; 2xx only once Kafka (or the spool) has it."""
    started = time.monotonic()
    admission = request.app[appkeys.ADMISSION]
    if admission.active >= request.app[appkeys.SETTINGS].max_in_flight:
        outcome, response = _shed(request)
    else:
        admission.active += 1
        try:
            outcome, response = await _handle(request)
        finally:
            admission.active -= 1
    elapsed = time.monotonic() - started
    request.app[appkeys.METRICS].request_seconds.labels(outcome=outcome.value).observe(elapsed)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "request",
            extra={"outcome": outcome.value, "status": response.status, "seconds": elapsed},
        )
    return response


def _answer(
    metrics: Metrics, status: int, outcome: Outcome, event_type: str, **fields: object
) -> tuple[Outcome, web.Response]:
    """Count the request by outcome and type; its JSON answer."""
    metrics.requests.labels(outcome=outcome.value, event_type=event_type).inc()
    # orjson, not json_response's json.dumps: a few percent of the CPU per request.
    answer = orjson.dumps({"outcome": outcome.value, **fields})
    return outcome, web.Response(body=answer, status=status, content_type="application/json")


def _retryable(
    settings: Settings, metrics: Metrics, cause: str, event_type: str
) -> tuple[Outcome, web.Response]:
    """The retryable status with ``Retry-After``, counted under its ``cause``."""
    metrics.unavailable.labels(cause=cause).inc()
    outcome, response = _answer(
        metrics, settings.unavailable_status, Outcome.UNAVAILABLE, event_type, error=cause
    )
    response.headers[hdrs.RETRY_AFTER] = str(settings.retry_after_s)
    return outcome, response


def _shed(request: web.Request) -> tuple[Outcome, web.Response]:
    """The retryable status at once, body unread: the relay has all it can handle."""
    app = request.app
    return _retryable(app[appkeys.SETTINGS], app[appkeys.METRICS], Overloaded.label, _NO_TYPE)


async def _handle(request: web.Request) -> tuple[Outcome, web.Response]:
    app = request.app
    settings, metrics = app[appkeys.SETTINGS], app[appkeys.METRICS]
    # The loop's clock, as asyncio.timeout_at wants; the sender gives up after 5 s.
    deadline = asyncio.get_running_loop().time() + settings.ack_timeout_ms / 1000

    def done(
        status: int, outcome: Outcome, event_type: str, **fields: object
    ) -> tuple[Outcome, web.Response]:
        return _answer(metrics, status, outcome, event_type, **fields)

    def too_large() -> tuple[Outcome, web.Response]:
        answer = done(413, Outcome.TOO_LARGE, _NO_TYPE, limit=settings.max_body_bytes)
        answer[1].force_close()  # do not read (or linger on) the rest of a body we refused
        return answer

    def cut_short(status: int, outcome: Outcome) -> tuple[Outcome, web.Response]:
        answer = done(status, outcome, _NO_TYPE, error=outcome.value)
        answer[1].force_close()  # the rest of the body is not worth waiting for
        return answer

    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in ("", "identity"):
        # The signature covers the bytes on the wire; inflating untrusted input is a bomb.
        return done(415, Outcome.UNSUPPORTED_ENCODING, _NO_TYPE, error="content-encoding")
    declared = request.content_length
    if declared is not None and declared > settings.max_body_bytes:
        return too_large()
    try:
        if request.content.is_eof():
            # Usually the whole body came with the head: no timer to arm and cancel.
            body = await request.read()  # capped by the app's client_max_size
        else:
            # A body trickled in (slowloris) gets the request's deadline, like the Kafka ack.
            async with asyncio.timeout_at(deadline):
                body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return too_large()
    except TimeoutError:
        return cut_short(408, Outcome.BODY_TIMEOUT)
    except (ConnectionError, RequestPayloadError, HttpProcessingError):
        # The peer left mid-body or broke the chunked framing: no body, nothing to verify.
        return cut_short(400, Outcome.INCOMPLETE_BODY)

    signatures = _signature_headers(request)
    verify_started = time.perf_counter()
    if signatures is None:
        verdict: Verified | Rejected = Rejected(Reason.AMBIGUOUS)
    else:
        # Inline, not in an executor: see the figures in relay/signatures.py.
        verdict = verify(
            body, *signatures, app[appkeys.KEYS], accept_legacy_rsa=settings.accept_legacy_rsa
        )
    metrics.verify_seconds.observe(time.perf_counter() - verify_started)
    if isinstance(verdict, Rejected):
        metrics.unauthenticated.labels(reason=verdict.reason.value).inc()
        log.info("unauthenticated", extra={"reason": verdict.reason.value, "peer": request.remote})
        return done(401, Outcome.UNAUTHENTICATED, _NO_TYPE, reason=verdict.reason.value)

    event = parse_event(body)
    where = route(event, app[appkeys.ROUTES])
    event_type = metric_type(where)
    ce_id = idempotency_key(event, body)
    recent = app[appkeys.RECENT_IDS]
    if ce_id in recent:
        return done(200, Outcome.DUPLICATE, event_type, id=ce_id)

    record = build_record(
        body=body,
        event=event,
        route=where,
        scheme=verdict.scheme.value,
        signature=verdict.signature,
        received_at=datetime.now(UTC),
        source=settings.ce_source,
    )
    publisher = app[appkeys.PUBLISHER]
    spooler = app.get(appkeys.SPOOLER)
    metrics.in_flight.inc()
    produce_started = time.monotonic()
    try:
        if spooler is None:
            ack: RecordMetadata | None = await publisher.publish(record, deadline)
        else:
            ack = await spooler.deliver(record, deadline)
    except PublishError as exc:
        if isinstance(exc, ProduceFailed):
            metrics.producer_errors.labels(error=exc.kafka_error).inc()
        log.warning("not acknowledged", extra={"cause": exc.label, "detail": str(exc)})
        return _retryable(settings, metrics, exc.label, event_type)
    finally:
        metrics.in_flight.dec()
    recent.add(ce_id)
    if ack is None:
        # Fsynced in the spool: durable on this pod's disk, in Kafka once drained.
        return done(200, Outcome.SPOOLED, event_type, id=ce_id, topic=record.topic, spooled=True)
    metrics.produce_seconds.observe(time.monotonic() - produce_started)
    return done(
        200,
        _KIND_OUTCOME[where.kind],
        event_type,
        id=ce_id,
        topic=ack.topic,
        partition=ack.partition,
        offset=ack.offset,
    )
