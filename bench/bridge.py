"""A peer: the Strimzi Kafka Bridge (HTTP to Kafka, no signature check), run from its jars.

:func:`fetch` puts the bridge's runtime jars into ``~/.cache/hoopai-relay/kafka-bridge-<v>/
libs``, once, the way ``dev/localkafka.py fetch`` does for Kafka:

1. from Maven Central, ``io.strimzi:kafka-bridge:<v>`` and its dependencies
   (``bench/bridge-pom.xml``);
2. failing that, by building ``<v>`` from a checkout of its sources, ``BENCH_BRIDGE_SOURCE``
   (its own dependencies still come from Maven Central).

Its 1.x line needs Java 21 or later: :func:`find_java` looks at ``BENCH_BRIDGE_JAVA``,
``JAVA_HOME`` and ``/usr/lib/jvm``. :func:`write_config` writes the bridge's
``application.properties`` (producer ``acks=all``, idempotent, everything else at the
bridge's defaults) and a log4j2 file that does not log each request, as the relay does not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_VERSION: Final = "1.0.0"
MIN_JAVA: Final = 21
POM: Final = Path(__file__).with_name("bridge-pom.xml")
MAIN_CLASS: Final = "io.strimzi.kafka.bridge.Application"
JVM_DIRS: Final = Path("/usr/lib/jvm")
#: Only the bridge's tests use these; the registry here lacks their newest patch releases.
TEST_ONLY_OVERRIDES: Final = ("-Dvertx-testing.version=5.0.7",)
_SKIP: Final = (
    "-Dmaven.test.skip=true",
    "-Dcheckstyle.skip",
    "-Dspotbugs.skip",
    "-Dmaven.javadoc.skip",
    "-Dmaven.source.skip",
    "-Dgpg.skip",
)
_JAVA_VERSION: Final = re.compile(r'^JAVA_VERSION="(\d+)[^"]*"', re.MULTILINE)

# Per-request loggers at WARN: the relay and the FastAPI peer run without an access log too.
LOG4J2: Final = """\
name = BenchBridge
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %-5p [%t] %c{1} - %m%n
rootLogger.level = WARN
rootLogger.appenderRef.console.ref = STDOUT
logger.bridge.name = io.strimzi.kafka.bridge
logger.bridge.level = INFO
logger.operations.name = http.openapi.operation
logger.operations.level = WARN
"""


class BridgeUnavailable(RuntimeError):
    """The bridge's jars or a Java to run them could not be found or assembled."""


@dataclass(frozen=True, slots=True)
class Java:
    """A Java runtime: its ``java`` binary and its version line."""

    binary: Path
    version: str


def version() -> str:
    """The bridge version to run (``BENCH_BRIDGE_VERSION``, else the pinned one)."""
    return os.environ.get("BENCH_BRIDGE_VERSION") or DEFAULT_VERSION


def cache_dir() -> Path:
    """Where one bridge version's jars are kept across runs and checkouts."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hoopai-relay" / f"kafka-bridge-{version()}"


def java_major(home: Path) -> int | None:
    """The feature version of the JDK at ``home``, from its ``release`` file."""
    try:
        match = _JAVA_VERSION.search((home / "release").read_text())
    except OSError:
        return None
    return int(match[1]) if match else None


def find_java(minimum: int = MIN_JAVA) -> Java:
    """A ``java`` of at least ``minimum``: ``BENCH_BRIDGE_JAVA``, ``JAVA_HOME``, a JVM dir."""
    if explicit := os.environ.get("BENCH_BRIDGE_JAVA"):
        return Java(Path(explicit), _version_line(Path(explicit)))
    homes = [Path(os.environ["JAVA_HOME"])] if os.environ.get("JAVA_HOME") else []
    if JVM_DIRS.is_dir():
        homes += sorted(JVM_DIRS.iterdir(), key=lambda h: java_major(h) or 0, reverse=True)
    for home in homes:
        binary = home / "bin" / "java"
        if (java_major(home) or 0) >= minimum and binary.exists():
            return Java(binary, _version_line(binary))
    raise BridgeUnavailable(
        f"no Java {minimum}+ (the bridge's 1.x line needs it): looked at JAVA_HOME and "
        f"{JVM_DIRS}/*; set BENCH_BRIDGE_JAVA=/path/to/bin/java"
    )


def _version_line(binary: Path) -> str:
    done = subprocess.run(  # noqa: S603 -- a java binary we were pointed at
        [str(binary), "-version"], capture_output=True, text=True, check=False
    )
    return next(iter((done.stderr + done.stdout).splitlines()), "?")


def _mvn(argv: list[str], java: Java, log: Path) -> bool:
    """Run Maven with ``java``'s JDK; whether it succeeded (its output goes to ``log``)."""
    env = {**os.environ, "JAVA_HOME": str(java.binary.parent.parent)}
    with log.open("ab") as out:
        # Maven from PATH on purpose, as dev/localkafka.py finds it.
        done = subprocess.run(  # noqa: S603 -- argv built here
            ["mvn", "-B", "-q", *argv],  # noqa: S607 -- found on PATH, as a user's shell would
            env=env,
            stdout=out,
            stderr=out,
            check=False,
        )
    return done.returncode == 0


def fetch(java: Java, log: Path) -> Path:
    """The ``libs`` directory of the bridge's jars, resolved or built once (see the module)."""
    libs, done = cache_dir() / "libs", cache_dir() / ".complete"
    if done.exists():
        return libs
    if shutil.which("mvn") is None:
        raise BridgeUnavailable("mvn not found on PATH: Maven is needed to fetch the bridge")
    tmp = cache_dir() / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    resolve = [
        "-f",
        str(POM),
        f"-Dbridge.version={version()}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}",
    ]
    if not _mvn(resolve, java, log):
        source = os.environ.get("BENCH_BRIDGE_SOURCE")
        if not source:
            raise BridgeUnavailable(
                f"Maven Central did not resolve io.strimzi:kafka-bridge:{version()} (see {log}); "
                f"set BENCH_BRIDGE_SOURCE to a checkout of its tag {version()} to build it"
            )
        _build(Path(source), java, log, tmp)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    done.touch()
    return libs


def _build(source: Path, java: Java, log: Path, into: Path) -> None:
    """Build the bridge's jar from ``source`` and copy it, with its runtime jars, ``into``."""
    found = (source / "release.version").read_text().strip() if source.is_dir() else None
    if found != version():
        raise BridgeUnavailable(f"{source}: release.version is {found}, not {version()}")
    pom = str(source / "pom.xml")
    build = ["-f", pom, *_SKIP, *TEST_ONLY_OVERRIDES, "package"]
    copy = [
        "-f",
        pom,
        *TEST_ONLY_OVERRIDES,
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={into}",
    ]
    if not (_mvn(build, java, log) and _mvn(copy, java, log)):
        raise BridgeUnavailable(f"building the bridge {version()} from {source} failed: see {log}")
    shutil.copy2(source / "target" / f"kafka-bridge-{version()}.jar", into)


def write_config(folder: Path, port: int, management_port: int, bootstrap: str) -> Path:
    """The bridge's ``application.properties`` and ``log4j2.properties`` in ``folder``.

    Producer only (no consumer endpoints), ``acks=all`` and idempotent like the relay; its
    ``/ready`` is on the management port.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log4j2.properties").write_text(LOG4J2)
    config = folder / "application.properties"
    config.write_text(
        "bridge.id=bench-bridge\n"
        "http.host=127.0.0.1\n"
        f"http.port={port}\n"
        f"http.management.port={management_port}\n"
        "http.consumer.enabled=false\n"
        "http.producer.enabled=true\n"
        f"kafka.bootstrap.servers={bootstrap}\n"
        "kafka.producer.acks=all\n"
        "kafka.producer.enable.idempotence=true\n"
    )
    return config


def command(java: Java, libs: Path, config: Path) -> list[str]:
    """The bridge's command line, as its ``kafka_bridge_run.sh`` builds it, with a fixed heap."""
    return [
        str(java.binary),
        "-Xms128m",
        "-Xmx512m",
        f"-Dlog4j2.configurationFile=file:{config.with_name('log4j2.properties')}",
        f"-Dvertx.cacheDirBase={config.parent / 'vertx-cache'}",
        "-cp",
        f"{libs}/*",
        MAIN_CLASS,
        "--config-file",
        str(config),
    ]
