"""The benchmark's "relay without Kafka", its instruction counts' child, its rounds (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import deliveries, rounds
from bench.targets import child_env, pinned


def test_pinned_prefixes_taskset_only_when_asked() -> None:
    """A core list puts the command under ``taskset -c``; None leaves it as it is."""
    assert pinned(["wrk", "-t1"], "0") == ["taskset", "-c", "0", "wrk", "-t1"]
    assert pinned(["wrk", "-t1"], None) == ["wrk", "-t1"]


def _glue_child(
    directory: Path, count: int, *options: str, signer: Ed25519PrivateKey | None = None
) -> subprocess.CompletedProcess[bytes]:
    """bench.glue's measured child, run on ``count`` signed deliveries; ``options`` name its target.

    They are signed by the key the child trusts, or by ``signer`` if given.
    """
    key = Ed25519PrivateKey.generate()
    deliveries.write_public_key(key, directory / "public.pem")
    deliveries.write_requests(
        deliveries.build(count, signer or key, locations=5, seed=3), directory / "requests.bin"
    )
    argv = [sys.executable, "-m", "bench.glue", "--run", str(directory), "--count", str(count)]
    return subprocess.run(
        [*argv, *options], env=child_env(), capture_output=True, timeout=120, check=False
    )


def test_relay_without_kafka_answers_every_signed_delivery(tmp_path: Path) -> None:
    """bench.glue's child: the relay's app with Discard, 200 to each signed delivery.

    It serves over a real socket and exits 0 only if every answer was a 200.
    """
    done = _glue_child(tmp_path, 20)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_delivery_signed_by_another_key_fails_the_glue_child(tmp_path: Path) -> None:
    """The child is not blind: a 401 (the key does not match) makes it exit non-zero."""
    done = _glue_child(tmp_path, 2, signer=Ed25519PrivateKey.generate())
    assert done.returncode != 0
    assert b"not a 200" in done.stderr


def test_the_glue_child_serves_the_verification_ceiling_too(tmp_path: Path) -> None:
    """``--ceiling``: the same child with bench/ceiling.py's app, 200 to each signed delivery."""
    done = _glue_child(tmp_path, 10, "--ceiling")
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_the_glue_child_serves_the_relay_with_the_floor_client(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """``--floor``: the relay's app on bench/floor.py's client, 200 to each delivery."""
    done = _glue_child(tmp_path, 10, "--floor", kafka_bootstrap)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def _round(verify: float, relay: float, cpu_verify: float, cpu_relay: float) -> dict[str, Any]:
    def point(rate: float, cpu: float) -> dict[str, float]:
        return {"rate": rate, "cpu_ms_per_request": cpu, "p99_ms": 1.0, "not_ok": 0}

    return {
        "verify": {"max": point(verify, 0.2), "same_rate": point(1000, cpu_verify)},
        "relay": {"max": point(relay, 0.4), "same_rate": point(1000, cpu_relay)},
    }


def test_the_rounds_report_gives_each_ratios_median_and_range() -> None:
    """bench.rounds: per-round ratios, their median and range; absent targets' ratios left out."""
    text = rounds.report(
        [_round(4000, 2000, 0.3, 0.6), _round(5000, 2000, 0.4, 0.6), _round(4000, 2400, 0.3, 0.9)]
    )
    line = next(row for row in text.splitlines() if row.startswith("| relay / verify |"))
    # max ratios 0.5, 0.4, 0.6; CPU ratios 2.0, 1.5, 3.0
    assert line == "| relay / verify | 0.500 (0.400 to 0.600) | 2.000 (1.500 to 3.000) |"
    assert "relay / fastapi" not in text


def test_the_rounds_refuse_a_target_they_do_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    """``--targets`` naming no target stops at once, naming it, before anything starts."""
    with pytest.raises(SystemExit) as stopped:
        rounds.main(["--targets", "verify,relay-flor"])
    assert stopped.value.code == 2
    assert "--targets: no target relay-flor" in capsys.readouterr().err
