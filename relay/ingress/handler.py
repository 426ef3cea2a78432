"""``POST /webhooks/hoopai`` and the workflow paths: HTTP, the pure steps, the delivery.

Order matters: nothing reads the body as JSON before its signature is verified over the
exact bytes received. An authentic event is never answered 4xx (the sender retries every
non-2xx and pauses endpoints below 90% success): it is routed, dead-lettered, or answered
with the retryable status when the delivery cannot make it durable in time.

The steps: admission (relay/ingress/admission.py), the body (relay/ingress/body.py), the
signature (relay/ingress/signatures.py), the record (relay/ingress/intake.py), and the
delivery (relay/delivery.py), which is Kafka, or Kafka and the spool.

``POST /webhooks/hoopai/workflows/<name>`` (:func:`receive_workflow`) takes HighLevel's
unsigned workflow actions: the same steps and guarantees, with the source's token
(relay/ingress/tokens.py) in place of the signature, checked before the body is read (a
stranger's request costs no body buffer), and :func:`~relay.ingress.intake.workflow_intake`
for the record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson
from aiohttp import hdrs, web

from relay import appkeys
from relay.delivery import Spooled
from relay.errors import NotConnected, Overloaded, ProduceFailed, PublishError
from relay.ingress.body import Refused, read_body
from relay.ingress.intake import Intake, intake, workflow_intake
from relay.ingress.routing import Kind
from relay.ingress.signatures import Reason, Rejected, Verified, verify
from relay.ingress.tokens import from_header, from_query
from relay.metrics import Metrics, Outcome
from relay.records import with_headers
from relay.settings import Settings
from relay.tracing import Trace
from relay.workflows import WorkflowSource

log = logging.getLogger(__name__)

_NO_TYPE = "none"
#: the ``reason`` of every refused workflow token: no hint which part of it failed
WORKFLOW_TOKEN = "workflow_token"  # noqa: S105 -- a reason's name, not a password
_KIND_OUTCOME = {
    Kind.ROUTED: Outcome.ACCEPTED,
    Kind.UNROUTED: Outcome.UNROUTED,
    Kind.DEADLETTER: Outcome.DEADLETTER,
}
Answer = tuple[Outcome, web.Response]
_SIGNATURE_NAMES = ("X-GHL-Signature", "X-WH-Signature")


async def receive(request: web.Request) -> web.Response:
    """Verify, route and deliver one webhook; 2xx only once it is durable."""
    return await _admitted(request, _handle)


async def receive_workflow(request: web.Request) -> web.Response:
    """Check the token, then deliver one workflow request; 2xx only once it is durable."""
    return await _admitted(request, _handle_workflow)


async def _admitted(
    request: web.Request, handle: Callable[[web.Request, Trace], Awaitable[Answer]]
) -> web.Response:
    """``handle`` the request within the in-flight cap, else shed it at once; timed."""
    started = time.monotonic()
    app = request.app
    trace = app[appkeys.TRACER].start(request.headers)
    admission = app[appkeys.ADMISSION]
    if not admission.enter():
        # The relay has all it can handle: the retryable status at once, body unread.
        outcome, response = _retryable(
            app[appkeys.SETTINGS], app[appkeys.METRICS], Overloaded.label, _NO_TYPE
        )
    else:
        try:
            outcome, response = await handle(request, trace)
        finally:
            admission.leave()
    trace.end(response.status, outcome)
    elapsed = time.monotonic() - started
    app[appkeys.METRICS].request_seconds_by(outcome).observe(elapsed)
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
    # An Outcome is a StrEnum, its own value: no enum lookup per use (issue 21).
    metrics.requests_by(outcome, event_type).inc()
    # orjson, not json_response's json.dumps: a few percent of the CPU per request.
    answer = orjson.dumps({"outcome": outcome, **fields})
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
    for name in _SIGNATURE_NAMES:
        values = request.headers.getall(name, [])
        if len(values) > 1:
            # Two signatures for one body: which one the sender meant is unknowable.
            return None
        found.append(values[0] if values else None)
    return found[0], found[1]


def _verify(request: web.Request, body: bytes, trace: Trace) -> Verified | Rejected:
    """The signature verdict over ``body``, timed."""
    app = request.app
    signatures = _signature_headers(request)
    trace.verify_start()
    started = time.perf_counter()
    if signatures is None:
        verdict: Verified | Rejected = Rejected(Reason.AMBIGUOUS)
    else:
        # Inline, not in an executor: see the figures in relay/ingress/signatures.py.
        legacy = app[appkeys.SETTINGS].accept_legacy_rsa
        verdict = verify(body, *signatures, app[appkeys.KEYS], accept_legacy_rsa=legacy)
    app[appkeys.METRICS].verify_seconds.observe(time.perf_counter() - started)
    if isinstance(verdict, Rejected):
        trace.verify_end(verdict.reason.value, None)
    else:
        trace.verify_end("verified", verdict.scheme.value)
    return verdict


async def _handle(request: web.Request, trace: Trace) -> Answer:
    """One admitted request: body, signature, record, then the delivery."""
    app = request.app
    settings, metrics = app[appkeys.SETTINGS], app[appkeys.METRICS]
    # The loop's clock, as asyncio.timeout_at wants; the sender gives up after 5 s.
    deadline = _deadline(settings)
    body = await read_body(request, settings.max_body_bytes, deadline)
    if isinstance(body, Refused):
        return _refused(metrics, body)
    verdict = _verify(request, body, trace)
    if isinstance(verdict, Rejected):
        _quarantine(request, body, verdict.reason.value)
        return _unauthenticated(request, verdict.reason.value)
    taken = intake(
        body,
        verdict,
        app[appkeys.ROUTES],
        source=settings.ce_source,
        received_at=datetime.now(UTC),
    )
    return await _deliver(request.app, taken, deadline, trace)


def _deadline(settings: Settings) -> float:
    """The request's deadline on the loop's clock, as asyncio.timeout_at wants it.

    The sender gives up after 5 s; ``ack_timeout_ms`` is under that.
    """
    return asyncio.get_running_loop().time() + settings.ack_timeout_ms / 1000


def _quarantine(request: web.Request, body: bytes, reason: str) -> None:
    """With RELAY_QUARANTINE: keep a delivery refused for its signature (bounded, no wait)."""
    kept = request.app.get(appkeys.QUARANTINE)
    if kept is not None:
        signatures = [(n, v) for n in _SIGNATURE_NAMES for v in request.headers.getall(n, [])]
        kept.offer(body, signatures, reason, request.remote, datetime.now(UTC))


def _unauthenticated(request: web.Request, reason: str, **context: str) -> Answer:
    """The 401, counted by reason and logged with the peer (never the credential)."""
    metrics = request.app[appkeys.METRICS]
    metrics.unauthenticated.labels(reason=reason).inc()
    log.info("unauthenticated", extra={"reason": reason, **context, "peer": request.remote})
    return _answer(metrics, 401, Outcome.UNAUTHENTICATED, _NO_TYPE, reason=reason)


def _refused(metrics: Metrics, body: Refused) -> Answer:
    """The answer to a body not read (415, 413, 408, 400)."""
    outcome, response = _answer(metrics, body.status, body.outcome, _NO_TYPE, **body.fields)
    if body.close:
        response.force_close()
    return outcome, response


def _presented(request: web.Request, source: WorkflowSource) -> bytes | None:
    """The token the request carries where ``source`` expects it, or None."""
    if source.token_query is not None:
        return from_query(request.query.getall(source.token_query, []))
    return from_header(request.headers.getall(source.token_header, []), bearer=source.bearer)


async def _handle_workflow(request: web.Request, trace: Trace) -> Answer:
    """One admitted workflow request: the source by name (404), then its token and body."""
    app = request.app
    metrics = app[appkeys.METRICS]
    source = app[appkeys.WORKFLOWS].get(request.match_info["name"])
    if source is None:
        # Not counted by name: a label takes configured names only, never the URL's.
        return _answer(metrics, 404, Outcome.NOT_FOUND, _NO_TYPE)
    outcome, response = await _authenticated(request, source, trace)
    metrics.workflow_requests.labels(source=source.name, outcome=outcome.value).inc()
    return outcome, response


async def _authenticated(request: web.Request, source: WorkflowSource, trace: Trace) -> Answer:
    """The token (one 401 for every way of getting it wrong), the body, the delivery."""
    app = request.app
    settings, metrics = app[appkeys.SETTINGS], app[appkeys.METRICS]
    deadline = _deadline(settings)
    if not source.tokens.accepts(_presented(request, source)):
        return _unauthenticated(request, WORKFLOW_TOKEN, workflow=source.name)
    body = await read_body(request, settings.max_body_bytes, deadline)
    if isinstance(body, Refused):
        return _refused(metrics, body)
    taken = workflow_intake(
        body,
        source,
        app[appkeys.ROUTES],
        ce_source=settings.ce_source,
        received_at=datetime.now(UTC),
        fresh_id=str(uuid.uuid4()),
    )
    return await _deliver(app, taken, deadline, trace)


async def _deliver(app: web.Application, taken: Intake, deadline: float, trace: Trace) -> Answer:
    """Hand the record to the delivery; 200 once it is durable, else the retryable status.

    A repeat of an id in the window of recent ids is answered at once, not delivered again.
    """
    settings, metrics = app[appkeys.SETTINGS], app[appkeys.METRICS]
    event_type = taken.event_type
    recent = app[appkeys.RECENT_IDS]
    if taken.dedup_key is not None and taken.dedup_key in recent:
        return _answer(metrics, 200, Outcome.DUPLICATE, event_type, id=taken.ce_id)
    record = with_headers(taken.record, trace.produce(taken.record.topic))
    started = time.monotonic()
    try:
        receipt = await app[appkeys.DELIVERY].deliver(record, deadline)
    except PublishError as exc:
        trace.produced(None, exc.label)
        if isinstance(exc, ProduceFailed):
            metrics.producer_errors.labels(error=exc.kafka_error).inc()
        # Kafka known to be down is one "kafka unreachable" line, not one line per request:
        # each still counts in relay_unavailable_requests_total{cause="not_connected"}.
        level = logging.DEBUG if isinstance(exc, NotConnected) else logging.WARNING
        log.log(level, "not acknowledged", extra={"cause": exc.label, "detail": str(exc)})
        return _retryable(settings, metrics, exc.label, event_type)
    trace.produced(receipt, None)
    if taken.dedup_key is not None:
        recent.add(taken.dedup_key)
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
