"""Rendering the chart with the pinned Helm, for the chart tests and the Prometheus tests."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from tests.relayutil import ROOT

CHART = ROOT / "helm" / "hoopai-relay"
KUBE_VERSION = "1.30.0"
HELM_TIMEOUT_S = 60
RELEASE = "hooks"
NAMESPACE = "relay"

Obj = dict[str, Any]


def helm_binary() -> str:
    """The helm executable: ``$HELM``, default ``helm`` on PATH; fail the test without it."""
    name = os.environ.get("HELM", "helm")
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"helm not found (HELM={name!r}): run `make helm`", pytrace=False)
    return found


def run_helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm within HELM_TIMEOUT_S; ``values`` go in as one more values file, on stdin."""
    extra = ("-f", "-") if values is not None else ()
    return subprocess.run(
        [helm_binary(), *args, *extra],
        input=json.dumps(values) if values is not None else None,
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT_S,
        check=False,
    )


def template(
    values_file: Path | None = None,
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    show_only: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``helm template`` for Kubernetes KUBE_VERSION, with a values file and/or overrides."""
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    if values_file is not None:
        args += ["-f", str(values_file)]
    if show_only is not None:
        args += ["--show-only", show_only]
    return run_helm(*args, values=values)


@functools.cache
def _rendered_text(values_file: Path | None, values_json: str) -> str:
    """The rendered manifests, once per combination of inputs."""
    result = template(values_file, json.loads(values_json) or None)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(values_file: Path | None = None, values: dict[str, Any] | None = None) -> list[Obj]:
    """The objects the chart renders, parsed."""
    text = _rendered_text(values_file, json.dumps(values or {}, sort_keys=True))
    objects: list[Obj] = [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def find(objects: list[Obj], kind: str) -> list[Obj]:
    """The objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def only(objects: list[Obj], kind: str) -> Obj:
    """The one object of a kind (not counting the `helm test` pod)."""
    found = [o for o in find(objects, kind) if "helm.sh/hook" not in annotations_of(o)]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def annotations_of(obj: Obj) -> dict[str, str]:
    """An object's annotations."""
    found: dict[str, str] = obj["metadata"].get("annotations") or {}
    return found
