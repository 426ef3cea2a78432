"""Session fixtures: a real Kafka on 127.0.0.1, started here only when a test needs one.

``kafka_bootstrap`` reuses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else brings up the single
local broker (``dev/localkafka.py``); ``kafka_cluster`` brings up the three-broker cluster;
``kafka_secure`` the TLS/SASL_SSL/OAUTHBEARER broker and its OIDC stand-in
(``dev/securekafka.py``). Each stops only what it started. Tests that request none of them
never touch Java.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import localkafka  # dev/, on the path by pytest's `pythonpath` setting
import pytest
import securekafka
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from relay import appkeys, server
from relay.app import create_app
from relay.settings import Settings
from tests.inprocess import serve_inprocess
from tests.kafkautil import unique_topic
from tests.relayutil import ROOT, RunningRelay, StartRelay
from tests.toxiproxy import NetFault, proxy_cluster

#: fixture -> marker; the alerts broker is stopped like the outage one, so it shares its marker
KAFKA_FIXTURES = {
    "kafka_bootstrap": "kafka",
    "kafka_cluster": "cluster",
    "kafka_outage": "outage",
    "kafka_secure": "secure",
    "kafka_alerts": "outage",
    "netfault": "netfault",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the broker they need, so ``-m 'not kafka and not cluster'`` needs no Java.

    The ``image`` tests (minutes, root, buildah and podman) are opt-in: ``make test`` sets
    ``HOOPAI_IMAGE=1``, and ``-m image`` selects them too.
    """
    image_opted_in = os.environ.get("HOOPAI_IMAGE") == "1" or "image" in config.option.markexpr
    for item in items:
        for fixture, marker in KAFKA_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        if item.get_closest_marker("image") and not image_opted_in:
            item.add_marker(
                pytest.mark.skip(reason="builds and runs the image: HOOPAI_IMAGE=1 or -m image")
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of the broker logs to the report of a failing Kafka test."""
    report = yield
    if report.failed:
        for fixture, cluster_name in (
            ("kafka_bootstrap", "single"),
            ("kafka_cluster", "cluster"),
            ("kafka_outage", "outage"),
            ("kafka_secure", "secure"),
            ("kafka_alerts", "alerts"),
            ("netfault", "netfault"),
        ):
            if fixture in getattr(item, "fixturenames", ()):
                cluster = localkafka.CLUSTERS[cluster_name]
                report.sections.append((f"broker logs ({cluster_name})", localkafka.logs(cluster)))
        if "kafka_secure" in getattr(item, "fixturenames", ()):
            oidc_log = localkafka.home() / securekafka.SECURE.name / "oidc.log"
            report.sections.append(("OIDC stand-in log", localkafka.tail(oidc_log, 30)))
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


@pytest.fixture(scope="session")
def kafka_outage() -> Iterator[localkafka.Cluster]:
    """A one-broker cluster of its own (127.0.0.1:29092) that the spool tests stop and start."""
    cluster = localkafka.CLUSTERS["outage"]
    started = localkafka.up(cluster)
    yield cluster
    if started:
        localkafka.down(cluster)


#: the secure broker's start, begun in the background once the collected tests need it
SECURE_START = pytest.StashKey[Future[bool]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the secure broker now, behind the tests before its own, if any test needs it.

    Its certificates, the stand-in and a JVM take half a minute or more on a busy machine;
    begun here, that overlaps with the tests that run first (its own sort late).
    """
    if any("kafka_secure" in getattr(item, "fixturenames", ()) for item in session.items):
        pool = ThreadPoolExecutor(1, thread_name_prefix="secure-kafka")
        session.config.stash[SECURE_START] = pool.submit(securekafka.up)
        pool.shutdown(wait=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the secure broker if the background start began it (whether or not it was used)."""
    start = session.config.stash.get(SECURE_START, None)
    if start is not None and not start.cancel():
        with contextlib.suppress(localkafka.KafkaHarnessError, OSError):  # reported by the fixture
            if start.result():
                localkafka.down(securekafka.SECURE)


@pytest.fixture(scope="session")
def kafka_secure(request: pytest.FixtureRequest) -> securekafka.SecureKafka:
    """The secure broker (SSL, mutual TLS, SASL_SSL with PLAIN/SCRAM/OAUTHBEARER) and its IdP.

    Its own ports and certificates (made at its start), so the other brokers and tests are
    untouched. Started by :func:`pytest_collection_finish`, stopped at the session's end.
    """
    start = request.config.stash.get(SECURE_START, None)
    if start is None:  # collected otherwise (a plugin's items): start it now, stop it at the end
        pool = ThreadPoolExecutor(1)
        start = request.config.stash[SECURE_START] = pool.submit(securekafka.up)
        pool.shutdown(wait=False)
    start.result(timeout=240)  # a harness error is this fixture's error
    return securekafka.describe()


@pytest.fixture(scope="session")
def kafka_alerts() -> Iterator[localkafka.Cluster]:
    """A one-broker cluster of its own (127.0.0.1:29094) that the Prometheus tests stop."""
    cluster = localkafka.CLUSTERS["alerts"]
    started = localkafka.up(cluster)
    yield cluster
    if started:
        localkafka.down(cluster)


@pytest.fixture(scope="session")
def netfault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetFault]:
    """Three brokers (RF 3, min ISR 2) that clients reach only through Toxiproxy.

    The network fault tests (tests/test_netfault.py) add toxics to the proxies and stop
    brokers; the brokers replicate outside the proxies. The server runs for the session.
    """
    cluster = localkafka.CLUSTERS["netfault"]
    proxy = proxy_cluster(cluster, tmp_path_factory.mktemp("toxiproxy") / "toxiproxy.log")
    try:
        started = localkafka.up(cluster)
        yield NetFault(cluster, proxy)
        if started:
            localkafka.down(cluster)
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def ed25519_key() -> Ed25519PrivateKey:
    """The test sender's Ed25519 key (stands in for HighLevel's private key)."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def rsa_key() -> RSAPrivateKey:
    """The test sender's legacy RSA key, 4096 bits as HighLevel's."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture(scope="session")
def public_key_files(
    tmp_path_factory: pytest.TempPathFactory, ed25519_key: Ed25519PrivateKey, rsa_key: RSAPrivateKey
) -> tuple[Path, ...]:
    """PEM files of the test keys' public halves, for ``RELAY_PUBLIC_KEYS``."""
    folder = tmp_path_factory.mktemp("keys")
    paths = []
    for name, key in (("ed25519.pem", ed25519_key), ("rsa.pem", rsa_key)):
        path = folder / name
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        paths.append(path)
    return tuple(paths)


def relay_settings(public_keys: tuple[Path, ...], bootstrap: str, /, **overrides: Any) -> Settings:
    """A relay on 127.0.0.1:0 with the test keys and topics of its own, ``overrides`` applied."""
    settings = Settings(
        http_host="127.0.0.1",
        http_port=0,
        metrics_port=0,
        public_keys=public_keys,
        routes_file=ROOT / "config" / "routes.toml",
        topic_prefix=unique_topic("relay"),
        kafka_bootstrap_servers=tuple(bootstrap.split(",")),
    )
    settings = dataclasses.replace(settings, **overrides)
    settings.validate()
    return settings


@pytest.fixture
async def start_relay(
    kafka_bootstrap: str, public_key_files: tuple[Path, ...]
) -> AsyncIterator[StartRelay]:
    """Start relays on 127.0.0.1:0 against the real broker; each gets its own topic prefix."""
    runners: list[web.AppRunner] = []

    async def start(wait_connected: bool = True, **overrides: Any) -> RunningRelay:
        settings = relay_settings(public_key_files, kafka_bootstrap, **overrides)
        app = create_app(settings)
        runner = await server.start(
            app, settings.http_host, settings.http_port, ssl_context=server.tls_context(settings)
        )
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        if wait_connected:
            async with asyncio.timeout(30):
                await app[appkeys.PUBLISHER].wait_connected()
        scheme = "https" if settings.tls_cert_file else "http"
        return RunningRelay(f"{scheme}://{host}:{port}", app, settings)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def start_inprocess(public_key_files: tuple[Path, ...]) -> AsyncIterator[StartRelay]:
    """Start relays with no Kafka behind them (tests/inprocess.py): the tier without Java."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(wait_connected: bool = True, **overrides: Any) -> RunningRelay:
            # No broker: the bootstrap address is never dialled.
            settings = relay_settings(public_key_files, "127.0.0.1:9", **overrides)
            return await stack.enter_async_context(serve_inprocess(settings))

        yield start


@pytest.fixture
async def inprocess(start_inprocess: StartRelay) -> RunningRelay:
    """An in-process relay with default behaviour, its delivery recording what it is given."""
    return await start_inprocess()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client with a bounded total time per request."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def relay(start_relay: StartRelay) -> RunningRelay:
    """A relay with default behaviour and topics of its own."""
    return await start_relay()
