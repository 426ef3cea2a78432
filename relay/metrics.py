"""Prometheus metrics of one relay process, in a registry of its own.

Under ``relay serve --workers N`` each worker writes its values to files that the
supervisor adds up (relay/workers.py); every gauge says how (``multiprocess_mode``), and is
ignored otherwise.

Every label value comes from a closed set defined in the code (outcomes, rejection
reasons, error classes, the 17 known event types plus "other"): never from a payload,
so a hostile sender cannot create series.
"""

from __future__ import annotations

import enum
import os
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

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


_Metric = TypeVar("_Metric", Counter, Histogram)


class Children(Generic[_Metric]):
    """A labelled metric's children by their label values, each looked up once.

    ``metric.labels(...)`` takes a lock and builds a tuple and a key on every call; on the
    request path that is several per request (issue 21). The label values come from closed
    sets (see the module's docstring), so this map stays as small as the metric's series.
    """

    def __init__(self, metric: _Metric) -> None:
        self._metric: _Metric = metric
        self._bound: dict[tuple[str, ...], _Metric] = {}

    def __call__(self, *values: str) -> _Metric:
        """The child of these label values, in the order of the metric's label names."""
        child = self._bound.get(values)
        if child is None:
            child = self._bound[values] = self._metric.labels(*values)
        return child


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
        self.requests = Counter(
            "relay_requests", "Webhook requests by outcome and event type.",
            ["outcome", "event_type"], registry=r,
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
        self.request_seconds = Histogram(
            "relay_request_duration_seconds",
            "Time from the request's headers to its answer, by outcome.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.produce_seconds = Histogram(
            "relay_kafka_produce_duration_seconds",
            "Time from handing a record to the producer to its acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.verify_seconds = Histogram(
            "relay_signature_verify_duration_seconds",
            "Time spent verifying one signature.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01),
            registry=r,
        )
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
        self.http_responses = Counter(
            "relay_http_responses",
            "Every answer the HTTP server wrote, by status, including aiohttp's own 400s "
            "for requests it could not parse (those never reach the handler).",
            ["status"],
            registry=r,
        )
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
        # The children the request path counts into, bound once (Children above).
        self.requests_by = Children(self.requests)
        self.request_seconds_by = Children(self.request_seconds)
        self.http_responses_by = Children(self.http_responses)
