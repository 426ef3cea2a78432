"""W3C trace context across the relay: from the request's ``traceparent`` to the record's.

Every record the relay produces carries a ``traceparent`` header (and the request's
``tracestate``, when it had a valid ``traceparent``), so a consumer's trace links to the
delivery. Two tracers, chosen once by the application factory:

- :class:`Propagator`, without OpenTelemetry: a valid incoming ``traceparent`` is passed on
  as it is (the consumer's span is then a child of the sender's); otherwise the relay
  starts a trace with a fresh one. No span is recorded: a header read, a format, a tuple.
- ``relay.otel.OtelTracer`` (the ``otel`` extra, with ``OTEL_EXPORTER_OTLP_ENDPOINT``):
  the request, its signature check and its produce are spans of one trace, exported over
  OTLP, and the record's ``traceparent`` is the produce span's.

The handler talks to a :class:`Trace` only. No span attribute ever holds the body, the
partition key or the signature: only the route's topic, the outcome and Kafka's receipt.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Mapping
from typing import Final, Protocol

from relay.delivery import Receipt
from relay.errors import ConfigError

#: a record header: name, value
Header = tuple[str, bytes]

# version-traceid-parentid-flags; a later version may append fields after a "-".
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
#: W3C: vendors must propagate at least 512 characters of tracestate; more is dropped here
_TRACESTATE_MAX: Final = 512
_PRINTABLE: Final = re.compile(r"[\x20-\x7e]*")
#: the variables of OpenTelemetry's SDK that turn the export on
OTLP_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: what relay/otel.py needs of the ``otel`` extra
_OTEL_MODULES: Final = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")


def parse_traceparent(value: str | None) -> str | None:
    """``value`` as a version-00 ``traceparent`` if it is a valid one (of any version).

    W3C Trace Context: version ff and all-zero ids are invalid; a version-00 value has
    exactly four fields; a later version is read by its first four, and passed on as 00.
    """
    if value is None:
        return None
    found = _TRACEPARENT.fullmatch(value.strip())
    if found is None:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return f"00-{trace_id}-{span_id}-{flags}"


def fresh_traceparent() -> str:
    """A new trace, sampled: random non-zero trace and span ids."""
    # random, not secrets: ids must be unique, not unguessable (OpenTelemetry's SDK does so).
    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def propagated(traceparent: str | None, tracestate: str | None) -> tuple[Header, ...]:
    """The record's trace headers: the request's valid ``traceparent``, else a fresh one.

    ``tracestate`` goes along only with a valid ``traceparent`` (W3C), printable ASCII and
    at most 512 characters.
    """
    valid = parse_traceparent(traceparent)
    if valid is None:
        return (("traceparent", fresh_traceparent().encode("ascii")),)
    headers: tuple[Header, ...] = (("traceparent", valid.encode("ascii")),)
    if tracestate and len(tracestate) <= _TRACESTATE_MAX and _PRINTABLE.fullmatch(tracestate):
        headers += (("tracestate", tracestate.encode("ascii")),)
    return headers


class Trace(Protocol):
    """One request's trace, as the handler drives it."""

    def verify_start(self) -> None:
        """The signature check begins."""

    def verify_end(self, result: str, scheme: str | None) -> None:
        """It ended: ``verified`` (with its scheme) or the 401 reason."""

    def produce(self, topic: str) -> tuple[Header, ...]:
        """The record to ``topic`` is about to be delivered: the trace headers it carries."""

    def produced(self, receipt: Receipt | None, error: str | None) -> None:
        """Its delivery ended: Kafka's receipt, the spool's, or the retryable cause."""

    def end(self, status: int, outcome: str) -> None:
        """The answer is written."""


class Tracer(Protocol):
    """Starts one :class:`Trace` per request."""

    def start(self, headers: Mapping[str, str]) -> Trace:
        """The trace of a request with these headers."""


class Propagation:
    """A :class:`Trace` that records nothing: it only passes the trace context on."""

    __slots__ = ("_traceparent", "_tracestate")

    def __init__(self, traceparent: str | None, tracestate: str | None) -> None:
        self._traceparent = traceparent
        self._tracestate = tracestate

    def verify_start(self) -> None:
        """Nothing to record."""

    def verify_end(self, result: str, scheme: str | None) -> None:
        """Nothing to record."""

    def produce(self, topic: str) -> tuple[Header, ...]:
        """The request's trace context, or a fresh one."""
        return propagated(self._traceparent, self._tracestate)

    def produced(self, receipt: Receipt | None, error: str | None) -> None:
        """Nothing to record."""

    def end(self, status: int, outcome: str) -> None:
        """Nothing to record."""


class Propagator:
    """The :class:`Tracer` without OpenTelemetry."""

    def start(self, headers: Mapping[str, str]) -> Trace:
        """Keep the request's ``traceparent`` and ``tracestate`` for its record."""
        return Propagation(headers.get("traceparent"), headers.get("tracestate"))


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it, unless a parent is missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def otel_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard OTel variables ask for an OTLP export of traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in OTLP_ENDPOINTS)


def check_otel(environ: Mapping[str, str]) -> bool:
    """:func:`otel_wanted`; a ConfigError if it is wanted but the ``otel`` extra is missing."""
    if not otel_wanted(environ):
        return False
    if not all(_installed(m) for m in _OTEL_MODULES):
        name = next(n for n in OTLP_ENDPOINTS if environ.get(n, "").strip())
        raise ConfigError(
            f"{name} is set, but OpenTelemetry is not installed: "
            "pip install 'hoopai-relay[otel]' (or unset it)"
        )
    return True
