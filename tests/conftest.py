"""Session fixtures: a real Kafka on 127.0.0.1, started here only when a test needs one.

``kafka_bootstrap`` reuses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else brings up the single
local broker (``dev/localkafka.py``); ``kafka_cluster`` brings up the three-broker cluster.
Each stops only what it started. Tests that request neither never touch Java.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import localkafka  # dev/, on the path by pytest's `pythonpath` setting
import pytest

KAFKA_FIXTURES = {"kafka_bootstrap": "kafka", "kafka_cluster": "cluster"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the broker they need, so ``-m 'not kafka and not cluster'`` needs no Java."""
    for item in items:
        for fixture, marker in KAFKA_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of the broker logs to the report of a failing Kafka test."""
    report = yield
    if report.failed:
        for fixture, cluster_name in (("kafka_bootstrap", "single"), ("kafka_cluster", "cluster")):
            if fixture in getattr(item, "fixturenames", ()):
                cluster = localkafka.CLUSTERS[cluster_name]
                report.sections.append((f"broker logs ({cluster_name})", localkafka.logs(cluster)))
    return report


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker: the given one, or the local single broker."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    cluster = localkafka.CLUSTERS["single"]
    started = localkafka.up(cluster)
    yield cluster.bootstrap
    if started:
        localkafka.down(cluster)


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[localkafka.Cluster]:
    """The local three-broker cluster (RF 3, min ISR 2), whose brokers tests may kill by pid."""
    cluster = localkafka.CLUSTERS["cluster"]
    started = localkafka.up(cluster)
    yield cluster
    if started:
        localkafka.down(cluster)
