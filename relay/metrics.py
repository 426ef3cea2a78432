"""Prometheus metrics of one relay process, in a registry of its own.

Under ``relay serve --workers N`` each worker writes its values to files that the
supervisor adds up (relay/workers.py); every gauge says how (``multiprocess_mode``), and is
ignored otherwise.

Every label value comes from a closed set defined in the code (outcomes, rejection
reasons, error classes, the 17 known event types plus "other"): never from a payload,
so a hostile sender cannot create series.
"""

from __future__ import annotations

import bisect
import enum
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from relay import __version__

#: the variable prometheus_client reads at import time to write its values to files
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# From a fast loopback ack (~1 ms) to the 4 s deadline and past it.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8)


class Outcome(enum.StrEnum):
    """How a request ended; the ``outcome`` label."""

    ACCEPTED = "accepted"
    UNROUTED = "unrouted"
    DEADLETTER = "deadletter"
    DUPLICATE = "duplicate"
    UNAUTHENTICATED = "unauthenticated"
    TOO_LARGE = "too_large"
    BODY_TIMEOUT = "body_timeout"
    INCOMPLETE_BODY = "incomplete_body"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNAVAILABLE = "unavailable"
    #: 2xx: fsynced in the spool (RELAY_SPOOL_DIR), to be drained into Kafka
    SPOOLED = "spooled"
    #: 404: a workflow path whose name no [workflows.<name>] table configures
    NOT_FOUND = "not_found"


class Countable(Protocol):
    """A counter's child, prometheus_client's or :class:`LocalCount`."""

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""


class Observable(Protocol):
    """A histogram's child, prometheus_client's or :class:`LocalBuckets`."""

    def observe(self, amount: float) -> None:
        """Count one observation of ``amount``."""


class LocalCount:
    """One series of a :class:`LocalCounter`: a float, no lock."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""
        self.value += amount


class LocalBuckets:
    """One series of a :class:`LocalHistogram`: a count per bucket and the sum, no lock."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose bound is at or above it."""
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1
        self.sum += amount


_Child = TypeVar("_Child", LocalCount, LocalBuckets)


class _Local(Generic[_Child]):
    """A labelled family of this process's series, exposed by :meth:`collect`.

    prometheus_client's Counter and Histogram take a lock and check the metric's state on
    every ``inc`` and ``observe``, and a histogram walks its buckets one by one: about
    11,000 instructions an operation on the request path, five of them per request
    (issue 21, docs/benchmarks.md). The relay's event loop is its only thread, so the
    lock guards nothing here. Only where the values go to files for ``--workers``
    (:func:`in_files`) do the request path's metrics stay prometheus_client's, whose files
    the supervisor adds up.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], _Child] = {}
        if not self.labelnames:
            self._series[()] = self._new()
        registry.register(self)

    def _new(self) -> _Child:
        raise NotImplementedError

    def labels(self, *values: str) -> _Child:
        """The series of these label values (as strings), made at its first use."""
        key = tuple(map(str, values))
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected")
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = self._new()
        return child

    def describe(self) -> Iterator[Metric]:
        """The family without samples (for the registry's duplicate-name check)."""
        yield from self._families({})

    def collect(self) -> Iterator[Metric]:
        """The family with every series, as prometheus_client would expose it."""
        yield from self._families(self._series)

    def _families(self, series: dict[tuple[str, ...], _Child]) -> Iterator[Metric]:
        raise NotImplementedError


class LocalCounter(_Local[LocalCount]):
    """A counter of this process, in its exposition the same as prometheus_client's."""

    def _new(self) -> LocalCount:
        return LocalCount()

    def _families(self, series: dict[tuple[str, ...], LocalCount]) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in series.items():
            family.add_metric(values, child.value, created=child.created)
        yield family


class LocalHistogram(_Local[LocalBuckets]):
    """A histogram of this process, in its exposition the same as prometheus_client's."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = (*sorted(buckets), math.inf)
        # The "le" label as prometheus_client writes it ("0.001", "1.0", "+Inf").
        # (prometheus_client.utils has no annotations, hence the cast.)
        go_string = cast(Callable[[float], str], floatToGoString)
        self._le = tuple(map(go_string, self._bounds))
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> LocalBuckets:
        return LocalBuckets(self._bounds)

    def _families(self, series: dict[tuple[str, ...], LocalBuckets]) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in series.items():
            cumulative, total = [], 0
            for le, count in zip(self._le, child.counts, strict=True):
                total += count
                cumulative.append((le, float(total)))
            family.add_metric(values, cumulative, child.sum)
            labels = dict(zip(self.labelnames, values, strict=True))
            family.samples.append(Sample(f"{self.name}_created", labels, child.created))
        yield family


_Series = TypeVar("_Series", Countable, Observable)
_Series_co = TypeVar("_Series_co", Countable, Observable, covariant=True)


class Labelled(Protocol[_Series_co]):
    """A labelled counter or histogram: prometheus_client's, or a local one."""

    def labels(self, *values: str) -> _Series_co:
        """The series of these label values."""


class Children(Generic[_Series]):
    """A labelled metric's children by their label values, each looked up once.

    ``metric.labels(...)`` takes a lock and builds a tuple and a key on every call; on the
    request path that is several per request (issue 21). The label values come from closed
    sets (see the module's docstring), so this map stays as small as the metric's series.
    """

    def __init__(self, metric: Labelled[_Series]) -> None:
        self._metric: Labelled[_Series] = metric
        self._bound: dict[tuple[str, ...], _Series] = {}

    def __call__(self, *values: str) -> _Series:
        """The child of these label values, in the order of the metric's label names."""
        child = self._bound.get(values)
        if child is None:
            child = self._bound[values] = self._metric.labels(*values)
        return child


def _counter(
    local: bool, registry: CollectorRegistry, name: str, doc: str, labelnames: Sequence[str]
) -> Labelled[Countable]:
    if local:
        return LocalCounter(name, doc, labelnames, registry)
    return Counter(name, doc, labelnames, registry=registry)


def _histogram(
    local: bool,
    registry: CollectorRegistry,
    name: str,
    doc: str,
    labelnames: Sequence[str],
    buckets: Sequence[float],
) -> Labelled[Observable]:
    if local:
        return LocalHistogram(name, doc, labelnames, registry, buckets)
    metric = Histogram(name, doc, labelnames, registry=registry, buckets=buckets)
    # An unlabelled Histogram has no labels(): it is its own only series.
    return metric if labelnames else _Itself(metric)


class _Itself:
    """An unlabelled prometheus_client histogram, as its own only series."""

    def __init__(self, metric: Histogram) -> None:
        self._metric: Histogram = metric

    def labels(self, *values: str) -> Observable:
        return self._metric


def in_files() -> bool:
    """Whether this process writes its values to files (a worker of ``--workers N``).

    Then only values set in this process reach a scrape: a gauge's ``set_function`` is
    never called, since the supervisor reads the files, not this process's registry.
    """
    return bool(os.environ.get(METRICS_DIR_VARIABLE))


class Metrics:
    """The relay's collectors, registered in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The request path's five: lock-free unless they go to files (see _Local).
        local = not in_files()
        counter = functools.partial(_counter, local, r)
        histogram = functools.partial(_histogram, local, r)
        self.requests_by = Children(
            counter("relay_requests", "Webhook requests by outcome and event type.",
                    ["outcome", "event_type"])
        )  # fmt: skip
        self.workflow_requests = Counter(
            "relay_workflow_requests",
            "Workflow webhook requests by source (a configured name) and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.unauthenticated = Counter(
            "relay_unauthenticated_requests",
            "Requests refused with 401, by reason.",
            ["reason"],
            registry=r,
        )
        self.unavailable = Counter(
            "relay_unavailable_requests",
            "Verified requests answered with the retryable status, by cause.",
            ["cause"],
            registry=r,
        )
        self.producer_errors = Counter(
            "relay_kafka_producer_errors",
            "Records the producer failed to deliver, by aiokafka error class.",
            ["error"],
            registry=r,
        )
        self.oauth_token_fetches = Counter(
            "relay_kafka_oauth_token_fetches",
            "OAUTHBEARER tokens asked of the token endpoint, by outcome (ok, refused, error).",
            ["outcome"],
            registry=r,
        )
        self.request_seconds_by = Children(
            histogram("relay_request_duration_seconds",
                      "Time from the request's headers to its answer, by outcome.",
                      ["outcome"], _LATENCY_BUCKETS)
        )  # fmt: skip
        self.produce_seconds: Observable = histogram(
            "relay_kafka_produce_duration_seconds",
            "Time from handing a record to the producer to its acknowledgement.",
            [], _LATENCY_BUCKETS,
        ).labels()  # fmt: skip
        self.verify_seconds: Observable = histogram(
            "relay_signature_verify_duration_seconds", "Time spent verifying one signature.",
            [], (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01),
        ).labels()  # fmt: skip
        self.in_flight = Gauge(
            "relay_in_flight_requests",
            "Requests in progress (read, verified, waiting for an ack): what max_in_flight caps.",
            multiprocess_mode="livesum",
            registry=r,
        )
        # From the readiness probe (relay/health.py): an outage shows even with no traffic,
        # and with the spool on, when every answer is still a 2xx.
        self.kafka_reachable = Gauge(
            "relay_kafka_reachable",
            "1 when a broker answered the last readiness probe, else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.http_responses_by = Children(
            counter("relay_http_responses",
                    "Every answer the HTTP server wrote, by status, including aiohttp's own "
                    "400s for requests it could not parse (those never reach the handler).",
                    ["status"])
        )  # fmt: skip
        # Quarantine (RELAY_QUARANTINE, relay/ingress/quarantine.py) and relay redrive.
        self.quarantine_writes = Counter(
            "relay_quarantine_writes",
            "Refused deliveries offered to the quarantine topic, by result: written (acked), "
            "failed (Kafka did not take it), dropped_records or dropped_bytes (over a cap).",
            ["result"],
            registry=r,
        )
        # process_open_fds and process_resident_memory_bytes: connection floods, memory bound.
        ProcessCollector(registry=r)
        # The spool (RELAY_SPOOL_DIR); the gauges read the spool itself (relay/spool/spooler.py).
        self.spool_bytes = Gauge(
            "relay_spool_bytes",
            "Bytes of spool segments on disk.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.spool_records = Gauge(
            "relay_spool_records",
            "Spooled records not yet acknowledged by Kafka.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.spool_oldest_age = Gauge(
            "relay_spool_oldest_record_age_seconds",
            "Age of the oldest spooled record not yet acknowledged (0 when empty).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.spool_appends = Counter(
            "relay_spool_appends", "Records written and fsynced to the spool.", registry=r
        )
        self.spool_drained = Counter(
            "relay_spool_drained", "Spooled records Kafka acknowledged.", registry=r
        )
        self.spool_corrupt = Counter(
            "relay_spool_corrupt",
            "Damaged spool bytes: torn_tail (cut at start-up), moved_aside (to corrupt/).",
            ["kind"],
            registry=r,
        )
        self.build_info = Gauge(
            "relay_build_info",
            "Always 1; the version is a label.",
            ["version"],
            multiprocess_mode="max",
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
