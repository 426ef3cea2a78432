"""The OpenTelemetry tracer (the ``otel`` extra): a request's spans, exported over OTLP/HTTP.

Imported only when :func:`relay.tracing.check_otel` says the export is wanted. The SDK
reads the standard variables itself: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_...``),
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``, ``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``
(``hoopai-relay`` when unset) and ``OTEL_RESOURCE_ATTRIBUTES``.

Per request, one trace (OpenTelemetry's HTTP and messaging conventions):

- ``POST /webhooks/hoopai`` (server), a child of the request's ``traceparent`` if valid;
- ``verify signature`` (internal), its child: the scheme, or the 401 reason;
- ``send <topic>`` (producer), its child: ``messaging.system`` kafka, the destination, and
  Kafka's partition and offset (or ``relay.spooled``). Its context is the record's
  ``traceparent``, so a consumer's span links to it.

The spans are batched and exported from the SDK's own thread, not the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relay import __version__
from relay.delivery import Acked, Receipt
from relay.tracing import Header

_SERVER_NAME = "POST /webhooks/hoopai"
_SERVER_ATTRIBUTES = {"http.request.method": "POST", "http.route": "/webhooks/hoopai"}


def provider(environ: Mapping[str, str]) -> TracerProvider:
    """A tracer provider exporting in batches to the OTLP/HTTP endpoint of the environment."""
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "hoopai-relay"}
    found = TracerProvider(resource=Resource.create(attributes))
    found.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return found


class OtelTrace:
    """One request's spans."""

    __slots__ = ("_producer", "_propagator", "_server", "_tracer", "_verify")

    def __init__(self, tracer: OtelTracer, parent: Context) -> None:
        self._tracer = tracer
        self._propagator = tracer.propagator
        self._server: Span = tracer.tracer.start_span(
            _SERVER_NAME, context=parent, kind=SpanKind.SERVER, attributes=_SERVER_ATTRIBUTES
        )
        self._verify: Span | None = None
        self._producer: Span | None = None

    def verify_start(self) -> None:
        """The ``verify signature`` span begins."""
        self._verify = self._tracer.tracer.start_span(
            "verify signature", context=set_span_in_context(self._server)
        )

    def verify_end(self, result: str, scheme: str | None) -> None:
        """It ends with the verdict: ``verified`` and the scheme, or the 401 reason."""
        if self._verify is None:
            return
        self._verify.set_attribute("relay.signature.result", result)
        if scheme is not None:
            self._verify.set_attribute("relay.signature.scheme", scheme)
        self._verify.end()

    def produce(self, topic: str) -> tuple[Header, ...]:
        """The ``send <topic>`` span begins; its context, as the record's headers."""
        span = self._tracer.tracer.start_span(
            f"send {topic}",
            context=set_span_in_context(self._server),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": topic,
            },
        )
        self._producer = span
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        return tuple((name, value.encode("ascii")) for name, value in carrier.items())

    def produced(self, receipt: Receipt | None, error: str | None) -> None:
        """It ends with Kafka's partition and offset, the spool's receipt, or the error."""
        span = self._producer
        if span is None:
            return
        if isinstance(receipt, Acked):
            span.set_attribute("messaging.destination.partition.id", str(receipt.partition))
            span.set_attribute("messaging.kafka.offset", receipt.offset)
        elif receipt is not None:
            span.set_attribute("relay.spooled", True)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def end(self, status: int, outcome: str) -> None:
        """The server span ends with the answer's status and the relay's outcome."""
        self._server.set_attribute("http.response.status_code", status)
        self._server.set_attribute("relay.outcome", outcome)
        if status >= 500:  # HTTP conventions: a server span fails on 5xx only
            self._server.set_status(Status(StatusCode.ERROR))
        self._server.end()


class OtelTracer:
    """The :class:`relay.tracing.Tracer` recording spans with a provider of its own."""

    def __init__(self, spans: TracerProvider) -> None:
        self.spans = spans
        self.tracer = spans.get_tracer("hoopai-relay", __version__)
        self.propagator = TraceContextTextMapPropagator()

    def start(self, headers: Mapping[str, str]) -> OtelTrace:
        """The request's server span, a child of its valid ``traceparent`` if any."""
        return OtelTrace(self, self.propagator.extract(headers))

    def shutdown(self) -> None:
        """Export what is left, then stop (blocking: call it from a thread)."""
        self.spans.shutdown()


def from_environ(environ: Mapping[str, str]) -> OtelTracer:
    """The tracer for this environment (the SDK reads the process's own, which it is)."""
    return OtelTracer(provider(environ))
