"""A real Apache Kafka (KRaft) on 127.0.0.1, assembled from Maven Central jars.

No registry we reach ships a Kafka distribution, but Maven Central has every jar of one.
``fetch`` resolves them once into a cache outside the repo; ``up``/``cluster-up`` format
and start combined broker+controller nodes and wait until each answers a Metadata request.
The single broker also has a SASL/SCRAM listener; its one user's password is generated at
format time and kept beside the data, never in the repo (:func:`scram_credentials`).

Layout (``HOOPAI_KAFKA_HOME``, default ``$TMPDIR/hoopai-relay-kafka``)::

    <home>/<cluster>/cluster.id
    <home>/<cluster>/scram.password           the SCRAM user's password (single only), 0600
    <home>/<cluster>/owner                    the checkout whose ``up`` started the nodes
    <home>/<cluster>/node-<id>/{server.properties,log4j2.properties,pid,server.log,stdout.log}
    <home>/<cluster>/node-<id>/data/          removed by ``down``; the logs stay

``down`` also removes ``cluster.id`` and ``scram.password``: the next ``up`` starts afresh.

The ``secure`` cluster (one node) also has the TLS listeners managed clusters require: SSL,
mutual TLS, SASL_SSL (PLAIN, SCRAM, OAUTHBEARER against a JWKS endpoint) and an SSL listener
whose certificate names another host. Its certificates, stores and OIDC stand-in need the
project's virtualenv (``cryptography``), so it is brought up by ``dev/securekafka.py``, which
writes ``<home>/secure/pki/`` and starts the stand-in before calling :func:`up`. Here, in the
standard library only, are its ports, its ``server.properties`` and its ``down``.

The home is shared by every checkout on the machine unless each sets its own, so ``up``
records which checkout started the nodes (``owner``), says whose broker it reuses, and
``down`` refuses to stop another checkout's broker unless forced (:func:`stop_refusal`).

Standard library only, so it runs before the project's virtualenv exists and the pytest
fixtures can import it (``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

DEFAULT_KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("kafka-pom.xml")
#: this checkout: the one that records itself as the owner of the brokers it starts
CHECKOUT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
SCRAM_USER = "relay"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# The SASL listener's name in server.properties (its security protocol is SASL_PLAINTEXT).
_SCRAM_LISTENER = "SCRAM"
#: the mechanisms of the secure cluster's SASL_SSL listener
SASL_SSL_MECHANISMS = ("PLAIN", *SCRAM_MECHANISMS, "OAUTHBEARER")
#: the audience the secure broker requires in OAuth tokens (``sasl.oauthbearer.expected.audience``)
OAUTH_AUDIENCE = "hoopai-relay-kafka"
#: Above 0, the broker ends an OAUTHBEARER session when its token expires (KIP-368): the
#: connection is closed at its first request after that, so a client has to come back with
#: a fresh token, as with a managed cluster. The token, not this hour, is what ends a session.
_OAUTH_MAX_REAUTH_MS = 3_600_000
# The brokers' own listener on a proxied cluster: replication bypasses the proxies.
_INTERNAL_LISTENER = "INTERNAL"

# Brokers this process started. Kept so they are reaped on stop and not garbage-collected
# while running (Popen warns about that); the pid files stay the source of truth.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class KafkaHarnessError(RuntimeError):
    """The local Kafka could not be assembled, started or stopped."""


@dataclass(frozen=True)
class TlsPorts:
    """The TLS client listeners of the secure cluster's node, and its OIDC stand-in."""

    #: SSL, server authentication only
    ssl: int
    #: SSL with ``ssl.client.auth=required``: mutual TLS
    mtls: int
    #: SASL_SSL with PLAIN, SCRAM-SHA-256/512 and OAUTHBEARER
    sasl_ssl: int
    #: SSL, with a certificate (signed by the same CA) for another host name than 127.0.0.1
    wrong_host: int
    #: the OIDC stand-in's HTTP port on 127.0.0.1: the JWKS and the token endpoint
    oidc: int


@dataclass(frozen=True)
class Node:
    """One combined broker+controller process."""

    node_id: int
    port: int
    controller_port: int
    #: a SASL_PLAINTEXT listener taking SCRAM-SHA-256/512, if the node has one
    sasl_port: int | None = None
    #: the TLS listeners, if the node has them (the secure cluster)
    tls: TlsPorts | None = None
    #: the port advertised to clients instead of ``port``: a proxy in front of the broker
    #: (Toxiproxy, for the network fault tests), which forwards to ``port``
    proxy_port: int | None = None
    #: a listener of its own for the brokers' traffic with each other, so that a fault
    #: injected between the clients and ``proxy_port`` never reaches replication
    internal_port: int | None = None

    @property
    def has_scram_user(self) -> bool:
        """Whether formatting adds the SCRAM user (a SASL listener takes SCRAM)."""
        return self.sasl_port is not None or self.tls is not None

    @property
    def client_port(self) -> int:
        """Where clients connect: the proxy if the node has one, else the broker itself."""
        return self.proxy_port if self.proxy_port is not None else self.port


@dataclass(frozen=True)
class Cluster:
    """A named set of nodes sharing one KRaft quorum."""

    name: str
    nodes: tuple[Node, ...]
    replication_factor: int
    min_insync_replicas: int

    @property
    def bootstrap(self) -> str:
        """The bootstrap list a client uses (through the proxies, for a proxied cluster)."""
        return ",".join(f"127.0.0.1:{n.client_port}" for n in self.nodes)

    @property
    def sasl_bootstrap(self) -> str | None:
        """The bootstrap list of the SCRAM listeners, or None if the nodes have none."""
        ports = [n.sasl_port for n in self.nodes if n.sasl_port is not None]
        return ",".join(f"127.0.0.1:{p}" for p in ports) or None

    @property
    def tls(self) -> TlsPorts | None:
        """The TLS listeners of the (single) node that has them, if any."""
        return next((n.tls for n in self.nodes if n.tls is not None), None)

    @property
    def has_scram_user(self) -> bool:
        """Whether the cluster's storage is formatted with the SCRAM user."""
        return any(n.has_scram_user for n in self.nodes)

    def node(self, node_id: int) -> Node:
        """The node with this id."""
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KafkaHarnessError(f"{self.name} has no node {node_id}")


def port_offset() -> int:
    """``HOOPAI_KAFKA_PORT_OFFSET``: added to every port below (0 unless set).

    Two checkouts testing at once on one machine each set their own offset (and their own
    ``HOOPAI_KAFKA_HOME``), so neither reuses, nor stops, the other's brokers.
    """
    raw = os.environ.get("HOOPAI_KAFKA_PORT_OFFSET") or "0"
    try:
        offset = int(raw)
    except ValueError:
        raise KafkaHarnessError(f"HOOPAI_KAFKA_PORT_OFFSET={raw!r}: not a whole number") from None
    if not 0 <= offset <= 30000:
        raise KafkaHarnessError(f"HOOPAI_KAFKA_PORT_OFFSET={offset}: must be 0 to 30000")
    return offset


def _clusters(o: int) -> dict[str, Cluster]:
    return {
        "single": Cluster("single", (Node(1, 9092 + o, 9093 + o, sasl_port=9094 + o),), 1, 1),
        "cluster": Cluster(
            "cluster",
            tuple(Node(i, 19091 + i + o, 19191 + i + o) for i in (1, 2, 3)),
            replication_factor=3,
            min_insync_replicas=2,
        ),
        # Stopped outright by the spool's outage tests: a broker of their own, so that nobody
        # else's test sees its outage.
        "outage": Cluster("outage", (Node(1, 29092 + o, 29093 + o),), 1, 1),
        # TLS, mutual TLS and SASL_SSL for the relay's secure-Kafka tests. Below 32768: not in
        # Linux's ephemeral range, where an outgoing connection could hold the port.
        "secure": Cluster(
            "secure",
            (Node(1, 25092 + o, 25093 + o, tls=TlsPorts(*(p + o for p in range(25094, 25099)))),),
            1,
            1,
        ),
        # Stopped by the Prometheus alert tests (tests/test_prometheus.py), for the same reason.
        "alerts": Cluster("alerts", (Node(1, 29094 + o, 29095 + o),), 1, 1),
        # The network fault tests (tests/test_netfault.py): clients reach each broker only
        # through a Toxiproxy proxy (21391+i), which the brokers advertise; the brokers
        # replicate over a listener of their own (21291+i), outside the proxies. Only
        # metadata_brokers() and wait_ready() use ``port`` (21091+i) directly. Toxiproxy's
        # API is on 21474 (tests/toxiproxy.py). No other cluster's ports, even under another
        # checkout's offset of up to 3000.
        "netfault": Cluster(
            "netfault",
            tuple(
                Node(
                    i,
                    21091 + i + o,
                    21191 + i + o,
                    proxy_port=21391 + i + o,
                    internal_port=21291 + i + o,
                )
                for i in (1, 2, 3)
            ),
            replication_factor=3,
            min_insync_replicas=2,
        ),
    }


CLUSTERS = _clusters(port_offset())


def kafka_version() -> str:
    """The pinned Kafka version (the Makefile passes ``KAFKA_VERSION``)."""
    return os.environ.get("KAFKA_VERSION") or DEFAULT_KAFKA_VERSION


def cache_root() -> Path:
    """The project's cache outside the repo, shared by checkouts: ``~/.cache/hoopai-relay``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hoopai-relay"


def cache_dir() -> Path:
    """Where the jars of one Kafka version are kept across runs and checkouts."""
    return cache_root() / f"kafka-{kafka_version()}"


def home() -> Path:
    """Where node configs, pids, logs and data live."""
    default = Path(tempfile.gettempdir()) / "hoopai-relay-kafka"
    return Path(os.environ.get("HOOPAI_KAFKA_HOME") or default)


def node_dir(cluster: Cluster, node: Node) -> Path:
    """One node's directory."""
    return home() / cluster.name / f"node-{node.node_id}"


def log_path(cluster: Cluster, node: Node) -> Path:
    """The broker's own log (log4j)."""
    return node_dir(cluster, node) / "server.log"


def scram_password_file(cluster: Cluster) -> Path:
    """Where the SCRAM user's password is kept (created when the storage is formatted)."""
    return home() / cluster.name / "scram.password"


def owner_file(cluster: Cluster) -> Path:
    """Where the checkout that started the cluster's nodes is recorded."""
    return home() / cluster.name / "owner"


def owner(cluster: Cluster) -> Path | None:
    """The checkout that started the cluster's nodes, or None if none is recorded."""
    try:
        text = owner_file(cluster).read_text().strip()
    except FileNotFoundError:
        return None
    return Path(text) if text else None


def stop_refusal(started_by: Path | None, me: Path, *, force: bool) -> str | None:
    """Why ``down`` must not stop a broker ``started_by`` a checkout, or None if it may.

    Another checkout's broker is its tests' or its ``make run``'s: stopping it would break
    them silently. One whose checkout is gone has nobody left to stop it, so it may go.
    """
    if force or started_by is None or started_by == me or not started_by.exists():
        return None
    return f"it was started by another checkout, {started_by}: stop it there, or use --force"


def scram_credentials(cluster: Cluster) -> tuple[str, str] | None:
    """``(user, password)`` for the cluster's SCRAM listener; None without one or unformatted."""
    if not cluster.has_scram_user:
        return None
    try:
        password = scram_password_file(cluster).read_text().strip()
    except FileNotFoundError:
        return None
    return (SCRAM_USER, password) if password else None


def _scram_password(cluster: Cluster) -> str:
    """The SCRAM password, generated once per formatted cluster (0600, never in the repo)."""
    path = scram_password_file(cluster)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # token_urlsafe: no ',', ']' or '=' that would end --add-scram's value early.
        with contextlib.suppress(FileExistsError):  # O_EXCL: born 0600, never overwritten
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def pki_dir(cluster: Cluster) -> Path:
    """The secure cluster's certificates, stores and secrets (written by dev/securekafka.py)."""
    return home() / cluster.name / "pki"


def oidc_pid_file(cluster: Cluster) -> Path:
    """The OIDC stand-in's pid (started by dev/securekafka.py, stopped by :func:`down`)."""
    return home() / cluster.name / "oidc.pid"


def oidc_issuer(tls: TlsPorts) -> str:
    """The OIDC stand-in's issuer URL (``iss`` of its tokens), also its base URL."""
    return f"http://127.0.0.1:{tls.oidc}"


def fetch() -> Path:
    """Resolve the broker's jars with Maven, once; return the ``libs`` directory."""
    libs = cache_dir() / "libs"
    done = cache_dir() / ".complete"
    if done.exists():
        return libs
    if shutil.which("mvn") is None:
        raise KafkaHarnessError("mvn not found on PATH: Maven is needed to assemble Kafka")
    tmp = cache_dir() / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"localkafka: resolving Apache Kafka {kafka_version()} into {libs}", flush=True)
    cmd = [
        "mvn", "-B", "-q", "-f", str(POM), f"-Dkafka.version={kafka_version()}",
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
    ]  # fmt: skip
    if subprocess.run(cmd, check=False).returncode != 0:
        raise KafkaHarnessError(f"Maven could not resolve Kafka {kafka_version()}: {cmd}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    done.touch()
    return libs


def _properties(cluster: Cluster, node: Node, data: Path) -> str:
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster.nodes)
    rf, isr = cluster.replication_factor, cluster.min_insync_replicas
    listeners = [f"PLAINTEXT://127.0.0.1:{node.port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    inter_broker = "PLAINTEXT"
    if node.internal_port is not None:
        inter_broker = _INTERNAL_LISTENER
        listeners.append(f"{_INTERNAL_LISTENER}://127.0.0.1:{node.internal_port}")
        protocols.append(f"{_INTERNAL_LISTENER}:PLAINTEXT")
    sasl: dict[str, object] = {}
    if node.sasl_port is not None:
        # Clients only: brokers and controllers keep talking PLAINTEXT to each other.
        listeners.append(f"{_SCRAM_LISTENER}://127.0.0.1:{node.sasl_port}")
        protocols.append(f"{_SCRAM_LISTENER}:SASL_PLAINTEXT")
        sasl["sasl.enabled.mechanisms"] = ",".join(SCRAM_MECHANISMS)
        for mechanism in SCRAM_MECHANISMS:
            key = f"listener.name.{_SCRAM_LISTENER.lower()}.{mechanism.lower()}.sasl.jaas.config"
            sasl[key] = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    tls: dict[str, object] = {}
    if node.tls is not None:
        tls = _tls_properties(cluster, node.tls, listeners, protocols)
    # Each listener advertises itself, but the first (PLAINTEXT) one of a proxied node,
    # which advertises the proxy in front of it.
    advertised = [f"PLAINTEXT://127.0.0.1:{node.client_port}", *listeners[1:]]
    props = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{node.controller_port}"]),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": inter_broker,
        "listener.security.protocol.map": ",".join(protocols),
        **sasl,
        **tls,
        "log.dirs": data,
        "num.partitions": 3,
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        "unclean.leader.election.enable": "false",
        # Tests create consumer groups constantly; the default 3 s delay only slows them.
        "group.initial.rebalance.delay.ms": 0,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _tls_properties(
    cluster: Cluster, ports: TlsPorts, listeners: list[str], protocols: list[str]
) -> dict[str, object]:
    """The TLS listeners (appended to ``listeners``/``protocols``) and their settings.

    The files are dev/securekafka.py's (:func:`pki_dir`); a missing one fails the start.
    """
    pki = pki_dir(cluster)
    try:
        store_password = (pki / "store.password").read_text().strip()
    except FileNotFoundError:
        raise KafkaHarnessError(
            f"{pki} has no certificates: the {cluster.name} cluster is brought up by "
            f"`.venv/bin/python dev/securekafka.py up`, which makes them first"
        ) from None
    password = _scram_password(cluster)
    for name, protocol, port in (
        ("SSL", "SSL", ports.ssl),
        ("MTLS", "SSL", ports.mtls),
        ("SASL_SSL", "SASL_SSL", ports.sasl_ssl),
        ("WRONGHOST", "SSL", ports.wrong_host),
    ):
        listeners.append(f"{name}://127.0.0.1:{port}")
        protocols.append(f"{name}:{protocol}")

    def keystore(prefix: str, file: str) -> dict[str, object]:
        return {
            f"{prefix}ssl.keystore.type": "PKCS12",
            f"{prefix}ssl.keystore.location": pki / file,
            f"{prefix}ssl.keystore.password": store_password,
            f"{prefix}ssl.key.password": store_password,
        }

    sasl_ssl = "listener.name.sasl_ssl."
    oauth = f"{sasl_ssl}oauthbearer."
    return {
        **keystore("", "broker.p12"),
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.location": pki / "truststore.p12",
        "ssl.truststore.password": store_password,
        "ssl.client.auth": "none",
        "listener.name.mtls.ssl.client.auth": "required",
        **keystore("listener.name.wronghost.", "wronghost.p12"),
        f"{sasl_ssl}sasl.enabled.mechanisms": ",".join(SASL_SSL_MECHANISMS),
        f"{sasl_ssl}plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{SCRAM_USER}="{password}";'
        ),
        **{
            f"{sasl_ssl}{m.lower()}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
            for m in SCRAM_MECHANISMS
        },
        f"{oauth}sasl.jaas.config": (
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
        ),
        f"{oauth}sasl.server.callback.handler.class": (
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
        ),
        f"{oauth}connections.max.reauth.ms": _OAUTH_MAX_REAUTH_MS,
        # Named outright: Kafka 4.1.1's default (DefaultJwtValidator, configured by the
        # handler without a key resolver) falls back to ClientJwtValidator, which checks no
        # signature and no audience: a forged token was accepted (tests/test_secure_kafka.py).
        "sasl.oauthbearer.jwt.validator.class": (
            "org.apache.kafka.common.security.oauthbearer.BrokerJwtValidator"
        ),
        "sasl.oauthbearer.jwks.endpoint.url": f"{oidc_issuer(ports)}/jwks",
        "sasl.oauthbearer.expected.audience": OAUTH_AUDIENCE,
        "sasl.oauthbearer.expected.issuer": oidc_issuer(ports),
    }


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
"""


def _cluster_id(cluster: Cluster) -> str:
    path = home() / cluster.name / "cluster.id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        new_id = "-"
        while new_id.startswith("-"):  # as Kafka's Uuid.randomUuid: "-..." reads as an option
            new_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.write_text(new_id)
    return path.read_text().strip()


def _java(
    libs: Path, node_path: Path, main: str, *args: str, tls: TlsPorts | None = None
) -> list[str]:
    # Kafka 4 fetches no OAuth URL it was not allowed (a broker config must not make it
    # reach anywhere): the JWKS endpoint of the OIDC stand-in.
    allowed = (
        []
        if tls is None
        else [f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={oidc_issuer(tls)}/jwks"]
    )
    return [
        os.environ.get("JAVA", "java"),
        *os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g").split(),
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        *allowed,
        f"-Dlog4j2.configurationFile={node_path / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={node_path}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


_TOOLS_LOG4J2 = """\
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
"""


def run_tool(cluster: Cluster, main: str, *args: str, timeout_s: float = 120) -> str:
    """Run one of Kafka's command-line tools (the kafka-tools jar) against ``cluster``.

    ``main`` is the tool's class, e.g. ``org.apache.kafka.tools.LeaderElectionCommand``;
    ``--bootstrap-server`` is added. Returns its standard output; a failure raises.
    """
    libs = fetch()
    tools = home() / cluster.name / "tools"
    tools.mkdir(parents=True, exist_ok=True)
    (tools / "log4j2.properties").write_text(_TOOLS_LOG4J2)
    cmd = _java(libs, tools, main, "--bootstrap-server", cluster.bootstrap, *args)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise KafkaHarnessError(f"{main} did not finish in {timeout_s:.0f}s") from None
    if out.returncode != 0:
        raise KafkaHarnessError(f"{main} {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def _prepare(cluster: Cluster, node: Node, libs: Path) -> Path:
    """Write the node's config and format its storage, unless already formatted."""
    nd = node_dir(cluster, node)
    data = nd / "data"
    nd.mkdir(parents=True, exist_ok=True)
    properties = nd / "server.properties"
    properties.touch(mode=0o600)  # the secure node's holds the stores' and PLAIN password
    properties.write_text(_properties(cluster, node, data))
    (nd / "log4j2.properties").write_text(_LOG4J2.format(log=nd / "server.log"))
    formatted = (data / "meta.properties").exists()
    if formatted and node.has_scram_user and scram_credentials(cluster) is None:
        # Formatted before the SCRAM listener existed: its metadata has no SCRAM user, and
        # only formatting adds one. The data is a disposable test broker's; start afresh.
        print(f"localkafka: {data} has no SCRAM credentials; formatting it again", flush=True)
        shutil.rmtree(data)
        formatted = False
    if not formatted:
        # --cluster-id=ID, not -t ID: an id made elsewhere may start with "-".
        args = ["format", "--ignore-formatted", f"--cluster-id={_cluster_id(cluster)}",
                "-c", str(nd / "server.properties")]  # fmt: skip
        if node.has_scram_user:
            password = _scram_password(cluster)
            for mechanism in SCRAM_MECHANISMS:
                args += ["--add-scram", f"{mechanism}=[name={SCRAM_USER},password={password}]"]
        cmd = _java(libs, nd, "kafka.tools.StorageTool", *args)
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise KafkaHarnessError(f"formatting node {node.node_id} failed:\n{out.stderr}")
    return nd


def _read_pid(cluster: Cluster, node: Node) -> int | None:
    """The node's pid if that process is alive and is really our broker."""
    pid_file = node_dir(cluster, node) / "pid"
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A recycled pid must never be signalled: check it runs this node's config.
    ours = str(node_dir(cluster, node) / "server.properties").encode()
    return pid if ours in cmdline and b"kafka.Kafka" in cmdline else None


def metadata_brokers(port: int, timeout: float = 2.0) -> list[int] | None:
    """Ask a broker for cluster metadata; return the node ids it knows, or None if it can't answer.

    A raw Metadata v4 request (the oldest version Kafka 4 still serves), so the harness
    needs no client library: an open port is not a ready broker, an answer is.
    """
    client_id = b"localkafka"
    # header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id;
    # body v4: topics=null (-1: all), allow_auto_topic_creation=false.
    req = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id + struct.pack(">ib", -1, 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(req)) + req)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            resp = _recv_exact(sock, size)
    except (OSError, struct.error):
        return None
    correlation_id, _throttle, count = struct.unpack_from(">iii", resp, 0)
    if correlation_id != 7:
        return None
    offset, ids = 12, []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", resp, offset)
        offset += 6 + host_len + 4  # node_id+host_len, host, port
        (rack_len,) = struct.unpack_from(">h", resp, offset)
        offset += 2 + max(rack_len, 0)
        ids.append(node_id)
    return ids


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def tail(path: Path, lines: int = 60) -> str:
    """The last lines of a log file, or a note that it does not exist."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} does not exist)"


def logs(cluster: Cluster, lines: int = 60) -> str:
    """The tail of every node's log, headed by its path, for a failing test's report."""
    parts = []
    for node in cluster.nodes:
        for name in ("server.log", "stdout.log"):
            path = node_dir(cluster, node) / name
            parts.append(f"==> {path} <==\n{tail(path, lines)}")
    return "\n".join(parts)


def start_node(cluster: Cluster, node: Node) -> bool:
    """Start one node unless it is already running; return whether this call started it."""
    if _read_pid(cluster, node) is not None:
        return False
    if metadata_brokers(node.port) is not None:
        print(f"localkafka: 127.0.0.1:{node.port} already answers (not ours); using it")
        return False
    libs = fetch()
    nd = _prepare(cluster, node, libs)
    cmd = _java(libs, nd, "kafka.Kafka", str(nd / "server.properties"), tls=node.tls)
    with (nd / "stdout.log").open("ab") as out:
        # A session of its own: Ctrl-C in make or pytest must not reach the broker half-way.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    (nd / "pid").write_text(str(proc.pid))
    return True


def keep_child(proc: subprocess.Popen[bytes]) -> None:
    """Hold a helper process started for a cluster (the OIDC stand-in) until ``down`` reaps it."""
    _CHILDREN[proc.pid] = proc


def _exited(cluster: Cluster, node: Node) -> bool:
    """Whether the node's recorded process has exited; False while it was never started.

    Deliberately not _read_pid(): a starting JVM's /proc cmdline can be briefly unreadable,
    and taking that for a death made up() stop a healthy cluster (seen once under load).
    """
    try:
        pid = int((node_dir(cluster, node) / "pid").read_text())
    except (OSError, ValueError):
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is not None
    return not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def wait_ready(cluster: Cluster, nodes: Sequence[Node] | None = None) -> None:
    """Block until each node answers Metadata and knows every node of the cluster."""
    want = {n.node_id for n in cluster.nodes}
    deadline = time.monotonic() + START_TIMEOUT_S
    for node in nodes or cluster.nodes:
        while True:
            ids = metadata_brokers(node.port)
            if ids is not None and want <= set(ids):
                break
            if _exited(cluster, node):
                raise KafkaHarnessError(
                    f"node {node.node_id} of {cluster.name} died:\n{logs(cluster, 40)}"
                )
            if time.monotonic() > deadline:
                raise KafkaHarnessError(
                    f"{cluster.name} not ready in {START_TIMEOUT_S:.0f}s:\n{logs(cluster, 40)}"
                )
            time.sleep(0.25)


def up(cluster: Cluster) -> bool:
    """Start every node that is not running and wait until all are ready.

    Returns whether anything was started, so a caller stops only what it started.
    """
    fetch()
    _cluster_id(cluster)  # once, before the threads: each node must format with the same id
    # Formatting and JVM start-up take seconds each: do the nodes side by side.
    with ThreadPoolExecutor(len(cluster.nodes)) as pool:
        started = list(pool.map(lambda n: start_node(cluster, n), cluster.nodes))
    if any(started) and (owner(cluster) is None or all(started)):
        # All started here, or some restarted for a checkout that recorded nobody: ours.
        owner_file(cluster).write_text(f"{CHECKOUT}\n")
    try:
        wait_ready(cluster)
    except KafkaHarnessError:
        if any(started):  # leave nothing half-up behind; the logs stay for the report
            with contextlib.suppress(KafkaHarnessError):  # another checkout's: leave it
                down(cluster)
        raise
    return any(started)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: Iterator[int] | Sequence[int], timeout: float) -> list[int]:
    """Wait for the processes to exit (reaping our children); return those still alive."""
    pending = list(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            if (child := _CHILDREN.get(pid)) is not None and child.poll() is not None:
                del _CHILDREN[pid]
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                pending.remove(pid)
        time.sleep(0.1)
    return pending


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def kill_node(cluster: Cluster, node: Node, sig: signal.Signals = signal.SIGKILL) -> int:
    """Signal one node by its recorded pid (SIGKILL by default); return the pid."""
    pid = _read_pid(cluster, node)
    if pid is None:
        raise KafkaHarnessError(f"node {node.node_id} of {cluster.name} is not running")
    _signal(pid, sig)
    if sig in (signal.SIGKILL, signal.SIGTERM):
        _wait_gone([pid], STOP_TIMEOUT_S)
    return pid


def oidc_pid(cluster: Cluster) -> int | None:
    """The OIDC stand-in's pid if that process is alive and is really ours."""
    try:
        pid = int(oidc_pid_file(cluster).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # As for brokers: a recycled pid must never be signalled.
    return pid if b"securekafka.py" in cmdline and str(home()).encode() in cmdline else None


def down(cluster: Cluster, *, force: bool = False) -> None:
    """Stop every node (and the OIDC stand-in) by its recorded pid, remove the data; keep logs.

    Raises KafkaHarnessError, stopping nothing, when another checkout started the nodes
    and ``force`` is not given.
    """
    pids = [p for n in cluster.nodes if (p := _read_pid(cluster, n)) is not None]
    refusal = stop_refusal(owner(cluster), CHECKOUT, force=force) if pids else None
    if refusal is not None:
        raise KafkaHarnessError(f"not stopping {cluster.name} at {cluster.bootstrap}: {refusal}")
    if (stand_in := oidc_pid(cluster)) is not None:
        pids.append(stand_in)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    for pid in _wait_gone(pids, STOP_TIMEOUT_S):
        _signal(pid, signal.SIGKILL)
    _wait_gone(pids, 5)
    for node in cluster.nodes:
        nd = node_dir(cluster, node)
        (nd / "pid").unlink(missing_ok=True)
        shutil.rmtree(nd / "data", ignore_errors=True)
    (home() / cluster.name / "cluster.id").unlink(missing_ok=True)
    scram_password_file(cluster).unlink(missing_ok=True)
    oidc_pid_file(cluster).unlink(missing_ok=True)
    shutil.rmtree(pki_dir(cluster), ignore_errors=True)  # a fresh CA and secrets next time
    owner_file(cluster).unlink(missing_ok=True)


def whose(cluster: Cluster) -> str:
    """Who started the cluster, in words, for ``up`` and ``status``."""
    started_by = owner(cluster)
    if started_by is None:
        return "started by no checkout on record"
    if started_by == CHECKOUT:
        return "started by this checkout"
    return f"started by another checkout, {started_by}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python dev/localkafka.py ACTION``, ``--help`` lists them."""
    parser = argparse.ArgumentParser(prog="localkafka", description=__doc__.splitlines()[0])
    parser.add_argument(
        "action", choices=["fetch", "up", "down", "status", "logs", "start", "kill", "bootstrap"]
    )
    parser.add_argument("--cluster", choices=sorted(CLUSTERS), default="single")
    parser.add_argument("--node", type=int, help="node id, for start and kill")
    parser.add_argument(
        "--force", action="store_true", help="down: stop it even if another checkout started it"
    )
    args = parser.parse_args(argv)
    cluster = CLUSTERS[args.cluster]
    try:
        match args.action:
            case "fetch":
                print(fetch())
            case "up":
                started = up(cluster)
                state = "started" if started else f"already up ({whose(cluster)}); reusing it"
                print(f"localkafka: {cluster.name} {state} at {cluster.bootstrap}")
                print(f"localkafka: logs in {home() / cluster.name}/node-*/server.log")
            case "down":
                down(cluster, force=args.force)
                print(f"localkafka: {cluster.name} stopped")
            case "status":
                print(f"{cluster.name}: {whose(cluster)}")
                for n in cluster.nodes:
                    print(f"node {n.node_id} :{n.port} pid={_read_pid(cluster, n)} "
                          f"metadata={metadata_brokers(n.port)}")  # fmt: skip
                if (tls := cluster.tls) is not None:
                    print(f"tls SSL :{tls.ssl}, mutual TLS :{tls.mtls}, SASL_SSL :{tls.sasl_ssl} "
                          f"{'/'.join(SASL_SSL_MECHANISMS)}, wrong host name :{tls.wrong_host}; "
                          f"files in {pki_dir(cluster)}; OIDC {oidc_issuer(tls)} "
                          f"pid={oidc_pid(cluster)}")  # fmt: skip
                if cluster.has_scram_user:
                    found = "" if scram_credentials(cluster) else " (not formatted yet)"
                    where = (f"{cluster.sasl_bootstrap} SASL_PLAINTEXT" if cluster.sasl_bootstrap
                             else "the SASL_SSL listener")  # fmt: skip
                    print(f"scram {where} {'/'.join(SCRAM_MECHANISMS)} user={SCRAM_USER} "
                          f"password_file={scram_password_file(cluster)}{found}")  # fmt: skip
            case "logs":
                print(logs(cluster))
            case "bootstrap":  # for `make run`: the ports follow HOOPAI_KAFKA_PORT_OFFSET
                print(cluster.bootstrap)
            case "start" | "kill":
                node = cluster.node(args.node if args.node is not None else 1)
                if args.action == "kill":
                    print(
                        f"localkafka: killed node {node.node_id} (pid {kill_node(cluster, node)})"
                    )
                else:
                    start_node(cluster, node)
                    wait_ready(cluster, [node])
                    print(f"localkafka: node {node.node_id} up at 127.0.0.1:{node.port}")
    except KafkaHarnessError as exc:
        print(f"localkafka: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
