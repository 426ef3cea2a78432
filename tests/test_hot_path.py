"""The request path's cheaper parts (issue 21) against what they replace.

Each replaces a library's general-purpose piece with one for the relay's single-threaded
event loop; each is checked here to give what the piece it replaces gives:

- the local counters and histograms (relay/metrics.py) expose what prometheus_client's do;
- the key-hash partitioner (relay/kafka/partitioner.py) picks aiokafka's partition;
- the shared deadlines (relay/kafka/deadlines.py) time out as ``asyncio.timeout_at`` does,
  and a cancellation from elsewhere still propagates;
- the in-flight gauge read at scrape time shows what one kept on every request shows.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from relay.ingress.admission import Admission
from relay.kafka.deadlines import RESOLUTION, Deadlines
from relay.kafka.partitioner import KeyHashPartitioner
from relay.metrics import LocalCounter, LocalHistogram, Metrics

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.1, 1, 4)


def _without_created(exposition: bytes) -> list[bytes]:
    """The exposition's lines, the ``_created`` values (a clock reading each) blanked."""
    lines = []
    for line in exposition.splitlines():
        if b"_created" in line and not line.startswith(b"#"):
            line = line.rsplit(b" ", 1)[0] + b" <time>"
        lines.append(line)
    return lines


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["accepted", "unrouted", "duplicate"]),
            st.sampled_from(["ContactCreate", "other"]),
            # An observation exactly on a bound belongs to that bound's bucket (le).
            st.one_of(st.floats(min_value=0, max_value=10), st.sampled_from(_BUCKETS)),
        ),
        max_size=40,
    )
)
@settings(max_examples=60, deadline=None)
def test_local_metrics_expose_what_prometheus_client_exposes(
    observations: list[tuple[str, str, float]],
) -> None:
    """The same observations give the same exposition, line for line, buckets on the edge too."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counters = (
        Counter("t_requests", "Requests.", ["outcome", "event_type"], registry=theirs),
        LocalCounter("t_requests", "Requests.", ["outcome", "event_type"], ours),
    )
    histograms = (
        Histogram("t_seconds", "Seconds.", ["outcome"], buckets=_BUCKETS, registry=theirs),
        LocalHistogram("t_seconds", "Seconds.", ["outcome"], ours, _BUCKETS),
    )
    plain = (
        Histogram("t_verify", "Verify.", buckets=_BUCKETS, registry=theirs),
        LocalHistogram("t_verify", "Verify.", [], ours, _BUCKETS).labels(),
    )
    for outcome, event_type, amount in observations:
        for counter in counters:
            counter.labels(outcome, event_type).inc()
        for histogram in histograms:
            histogram.labels(outcome).observe(amount)
        for one in plain:
            one.observe(amount)
    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(theirs))


def test_the_request_paths_metrics_are_local_unless_they_go_to_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One process: local (lock-free); a worker of --workers: prometheus_client's, in files."""
    alone = Metrics()
    alone.requests_by("accepted", "ContactCreate").inc()
    assert (
        alone.registry.get_sample_value(
            "relay_requests_total", {"outcome": "accepted", "event_type": "ContactCreate"}
        )
        == 1
    )
    assert isinstance(alone.requests_by._metric, LocalCounter)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
    assert isinstance(Metrics().requests_by._metric, Counter)


@given(st.binary(min_size=0, max_size=64), st.integers(min_value=1, max_value=64))
@settings(max_examples=300)
def test_the_partitioner_picks_aiokafkas_partition(key: bytes, count: int) -> None:
    """Every key lands where aiokafka's DefaultPartitioner (Java's murmur2) puts it, twice."""
    partitions = list(range(count))
    ours = KeyHashPartitioner(max_keys=4)
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert ours(key, partitions, partitions) == expected
    assert ours(key, partitions, partitions) == expected  # from the kept hash


def test_the_partitioner_forgets_past_its_bound() -> None:
    """Past max_keys the kept hashes are dropped, and the answers stay right."""
    ours = KeyHashPartitioner(max_keys=3)
    partitions = list(range(12))
    for n in range(10):
        key = f"location-{n}".encode()
        assert ours(key, partitions, partitions) == DefaultPartitioner()(key, partitions, [])
    assert len(ours._hashes) <= 3


async def _wait(deadlines: Deadlines, deadline: float, forever: asyncio.Future[None]) -> str:
    """What the publisher does: enter, await, tell a lapsed deadline from another cancel."""
    task = asyncio.current_task()
    assert task is not None
    key = deadlines.enter(task, deadline)
    try:
        await forever
    except asyncio.CancelledError:
        if deadlines.lapsed(task):
            return "lapsed"
        raise
    finally:
        deadlines.leave(task, key)
    return "done"


async def test_a_deadline_lapses_no_later_than_asked_and_is_forgotten() -> None:
    """The wait ends within one bucket before the deadline; nothing is kept after."""
    deadlines, loop = Deadlines(), asyncio.get_running_loop()
    deadline = loop.time() + 0.2
    result = await _wait(deadlines, deadline, loop.create_future())
    assert result == "lapsed"
    assert deadline - 1 / RESOLUTION <= loop.time() <= deadline + 0.1
    assert len(deadlines) == 0
    assert not deadlines._cancelled


async def test_an_answer_before_the_deadline_leaves_nothing_behind() -> None:
    """A wait answered in time is not cancelled later, when its bucket's timer fires."""
    deadlines, loop = Deadlines(), asyncio.get_running_loop()
    answered: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.01, answered.set_result, None)
    assert await _wait(deadlines, loop.time() + 0.05, answered) == "done"
    await asyncio.sleep(0.1)  # the bucket's timer has fired on an empty bucket
    assert len(deadlines) == 0
    assert not deadlines._cancelled


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline() -> None:
    """Shutting down cancels the task: that CancelledError propagates, as with timeout_at."""
    deadlines, loop = Deadlines(), asyncio.get_running_loop()
    waiting = asyncio.create_task(_wait(deadlines, loop.time() + 5, loop.create_future()))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(deadlines) == 0


@pytest.mark.parametrize("at_scrape", [True, False])
def test_the_in_flight_gauge_shows_the_admitted_count_either_way(at_scrape: bool) -> None:
    """Read at scrape time (one process) or kept on every request (files): the same figure."""
    registry = CollectorRegistry()
    gauge = Gauge("t_in_flight", "In flight.", registry=registry)
    admission = Admission(2, gauge, at_scrape=at_scrape)
    assert admission.enter()
    assert admission.enter()
    assert not admission.enter()  # the limit: refused, not counted
    assert registry.get_sample_value("t_in_flight") == 2
    admission.leave()
    assert registry.get_sample_value("t_in_flight") == 1
