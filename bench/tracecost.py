"""``python -m bench.tracecost``: what tracing adds to one request's CPU, off and on.

Off (no OTEL_EXPORTER_OTLP_ENDPOINT), the relay only passes the W3C trace context on:
the handler's tracer calls and the record's extra header, with the request's traceparent
and without one (a fresh id). On, the same calls record three spans, batched for an
exporter that drops them (the export itself runs in the SDK's thread, not the loop).
The best of 5 runs of 20,000 requests' worth, in CPU time; docs/benchmarks.md puts them
beside the relay's whole cost per request (0.77 ms at its max).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version

from multidict import CIMultiDict, CIMultiDictProxy

from relay.delivery import Acked
from relay.records import Record, with_headers
from relay.tracing import Propagator, Tracer

ROUNDS, PER_ROUND = 5, 20_000
#: the relay's CPU per request at its max (docs/benchmarks.md)
RELAY_US = 770.0
TOPIC = "hoopai.contacts"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RECORD = Record(TOPIC, b"loc-1", b"{}" * 360, tuple((f"ce_{i}", b"x" * 20) for i in range(8)))
RECEIPT = Acked(TOPIC, 1, 12345)


def best_us(step: Callable[[], object]) -> float:
    """The best per-call CPU time of ``ROUNDS`` rounds of ``PER_ROUND`` calls, in microseconds.

    This thread's CPU time, not the wall clock: on a busy machine the wall clock counts the
    time other processes had the core.
    """
    best = float("inf")
    for _ in range(ROUNDS):
        began = time.thread_time()
        for _ in range(PER_ROUND):
            step()
        best = min(best, (time.thread_time() - began) / PER_ROUND)
    return best * 1e6


def request_headers(extra: Sequence[tuple[str, str]]) -> CIMultiDictProxy[str]:
    """A delivery's headers as aiohttp hands them to the handler."""
    base = [
        ("Host", "hooks.example.com"),
        ("Content-Type", "application/json"),
        ("Content-Length", "723"),
        ("X-GHL-Signature", "A" * 88),
        ("User-Agent", "HighLevel"),
    ]
    return CIMultiDictProxy(CIMultiDict([*base, *extra]))


def one_request(tracer: Tracer, headers: CIMultiDictProxy[str]) -> Callable[[], object]:
    """The tracer's part of one accepted delivery, as relay/ingress/handler.py makes it."""

    def step() -> object:
        trace = tracer.start(headers)
        trace.verify_start()
        trace.verify_end("verified", "ed25519")
        record = with_headers(RECORD, trace.produce(TOPIC))
        trace.produced(RECEIPT, None)
        trace.end(200, "accepted")
        return record

    return step


def otel_tracer() -> Tracer | None:
    """The OpenTelemetry tracer with an exporter that drops the spans; None without the extra."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from relay.otel import OtelTracer
    except ImportError:
        return None

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 16))
    return OtelTracer(provider)


def main() -> int:
    """Print the tracer's cost per request, off (with and without a traceparent) and on."""
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    incoming = request_headers([("traceparent", TRACEPARENT)])
    bare = request_headers([])
    propagator = Propagator()
    rows = [
        ("off, the request's traceparent passed on", best_us(one_request(propagator, incoming))),
        ("off, no traceparent: a fresh one", best_us(one_request(propagator, bare))),
    ]
    otel = otel_tracer()
    if otel is not None:
        label = f"on (opentelemetry-sdk {version('opentelemetry-sdk')}), 3 spans"
        rows.append((label, best_us(one_request(otel, incoming))))
    for label, us in rows:
        share = f"{us / RELAY_US:.2%} of the relay's {RELAY_US:.0f}"
        print(f"{label}: {us:.1f} us of CPU per request ({share})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
