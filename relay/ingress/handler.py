"""``POST /webhooks/hoopai``: glue between HTTP, the pure steps and the delivery.

Order matters: nothing reads the body as JSON before its signature is verified over the
exact bytes received. An authentic event is never answered 4xx (the sender retries every
non-2xx and pauses endpoints below 90% success): it is routed, dead-lettered, or answered
with the retryable status when the delivery cannot make it durable in time.

The steps: admission (relay/ingress/admission.py), the body (relay/ingress/body.py), the
signature (relay/ingress/signatures.py), the record (relay/ingress/intake.py), and the
delivery (relay/delivery.py), which is Kafka, or Kafka and the spool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import orjson
from aiohttp import hdrs, web

from relay import appkeys
from relay.delivery import Spooled
from relay.errors import NotConnected, Overloaded, ProduceFailed, PublishError
from relay.ingress.body import Refused, read_body
from relay.ingress.intake import Intake, intake
from relay.ingress.routing import Kind, metric_type
from relay.ingress.signatures import Reason, Rejected, Verified, verify
from relay.metrics import Metrics, Outcome
from relay.settings import Settings

log = logging.getLogger(__name__)

_NO_TYPE = "none"
_KIND_OUTCOME = {
    Kind.ROUTED: Outcome.ACCEPTED,
    Kind.UNROUTED: Outcome.UNROUTED,
    Kind.DEADLETTER: Outcome.DEADLETTER,
}
Answer = tuple[Outcome, web.Response]


async def receive(request: web.Request) -> web.Response:
    """Verify, route and deliver one webhook; 2xx only once it is durable."""
    started = time.monotonic()
    app = request.app
    admission = app[appkeys.ADMISSION]
    if not admission.enter():
        # The relay has all it can handle: the retryable status at once, body unread.
        outcome, response = _retryable(
            app[appkeys.SETTINGS], app[appkeys.METRICS], Overloaded.label, _NO_TYPE
        )
    else:
        try:
            outcome, response = await _handle(request)
        finally:
            admission.leave()
    elapsed = time.monotonic() - started
    app[appkeys.METRICS].request_seconds.labels(outcome=outcome.value).observe(elapsed)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "request",
            extra={"outcome": outcome.value, "status": response.status, "seconds": elapsed},
        )
    return response


def _answer(
    metrics: Metrics, status: int, outcome: Outcome, event_type: str, **fields: object
) -> Answer:
    """Count the request by outcome and type; its JSON answer."""
    metrics.requests.labels(outcome=outcome.value, event_type=event_type).inc()
    # orjson, not json_response's json.dumps: a few percent of the CPU per request.
    answer = orjson.dumps({"outcome": outcome.value, **fields})
    return outcome, web.Response(body=answer, status=status, content_type="application/json")


def _retryable(settings: Settings, metrics: Metrics, cause: str, event_type: str) -> Answer:
    """The retryable status with ``Retry-After``, counted under its ``cause``."""
    metrics.unavailable.labels(cause=cause).inc()
    outcome, response = _answer(
        metrics, settings.unavailable_status, Outcome.UNAVAILABLE, event_type, error=cause
    )
    response.headers[hdrs.RETRY_AFTER] = str(settings.retry_after_s)
    return outcome, response


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


def _verify(request: web.Request, body: bytes) -> Verified | Rejected:
    """The signature verdict over ``body``, timed."""
    app = request.app
    signatures = _signature_headers(request)
    started = time.perf_counter()
    if signatures is None:
        verdict: Verified | Rejected = Rejected(Reason.AMBIGUOUS)
    else:
        # Inline, not in an executor: see the figures in relay/ingress/signatures.py.
        legacy = app[appkeys.SETTINGS].accept_legacy_rsa
        verdict = verify(body, *signatures, app[appkeys.KEYS], accept_legacy_rsa=legacy)
    app[appkeys.METRICS].verify_seconds.observe(time.perf_counter() - started)
    return verdict


async def _handle(request: web.Request) -> Answer:
    """One admitted request: body, signature, record, then the delivery."""
    app = request.app
    settings, metrics = app[appkeys.SETTINGS], app[appkeys.METRICS]
    # The loop's clock, as asyncio.timeout_at wants; the sender gives up after 5 s.
    deadline = asyncio.get_running_loop().time() + settings.ack_timeout_ms / 1000
    body = await read_body(request, settings.max_body_bytes, deadline)
    if isinstance(body, Refused):
        outcome, response = _answer(metrics, body.status, body.outcome, _NO_TYPE, **body.fields)
        if body.close:
            response.force_close()
        return outcome, response
    verdict = _verify(request, body)
    if isinstance(verdict, Rejected):
        metrics.unauthenticated.labels(reason=verdict.reason.value).inc()
        log.info("unauthenticated", extra={"reason": verdict.reason.value, "peer": request.remote})
        return _answer(metrics, 401, Outcome.UNAUTHENTICATED, _NO_TYPE, reason=verdict.reason.value)
    taken = intake(
        body,
        verdict,
        app[appkeys.ROUTES],
        source=settings.ce_source,
        received_at=datetime.now(UTC),
    )
    if taken.ce_id in app[appkeys.RECENT_IDS]:
        return _answer(metrics, 200, Outcome.DUPLICATE, metric_type(taken.route), id=taken.ce_id)
    return await _deliver(request.app, taken, deadline)


async def _deliver(app: web.Application, taken: Intake, deadline: float) -> Answer:
    """Hand the record to the delivery; 200 once it is durable, else the retryable status."""
    settings, metrics = app[appkeys.SETTINGS], app[appkeys.METRICS]
    event_type = metric_type(taken.route)
    started = time.monotonic()
    try:
        receipt = await app[appkeys.DELIVERY].deliver(taken.record, deadline)
    except PublishError as exc:
        if isinstance(exc, ProduceFailed):
            metrics.producer_errors.labels(error=exc.kafka_error).inc()
        # Kafka known to be down is one "kafka unreachable" line, not one line per request:
        # each still counts in relay_unavailable_requests_total{cause="not_connected"}.
        level = logging.DEBUG if isinstance(exc, NotConnected) else logging.WARNING
        log.log(level, "not acknowledged", extra={"cause": exc.label, "detail": str(exc)})
        return _retryable(settings, metrics, exc.label, event_type)
    app[appkeys.RECENT_IDS].add(taken.ce_id)
    if isinstance(receipt, Spooled):
        # Fsynced in the spool: durable on this pod's disk, in Kafka once drained.
        topic = taken.record.topic
        return _answer(
            metrics, 200, Outcome.SPOOLED, event_type, id=taken.ce_id, topic=topic, spooled=True
        )
    metrics.produce_seconds.observe(time.monotonic() - started)
    return _answer(
        metrics,
        200,
        _KIND_OUTCOME[taken.route.kind],
        event_type,
        id=taken.ce_id,
        topic=receipt.topic,
        partition=receipt.partition,
        offset=receipt.offset,
    )
