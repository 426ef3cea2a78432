"""The benchmark's "relay without Kafka" and its instruction count (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import deliveries
from bench.targets import child_env, pinned


def test_pinned_prefixes_taskset_only_when_asked() -> None:
    """A core list puts the command under ``taskset -c``; None leaves it as it is."""
    assert pinned(["wrk", "-t1"], "0") == ["taskset", "-c", "0", "wrk", "-t1"]
    assert pinned(["wrk", "-t1"], None) == ["wrk", "-t1"]


def test_relay_without_kafka_answers_every_signed_delivery(tmp_path: Path) -> None:
    """bench.glue's child: the relay's app with Discard, 200 to each signed delivery.

    It serves over a real socket and exits 0 only if every answer was a 200.
    """
    key = Ed25519PrivateKey.generate()
    deliveries.write_public_key(key, tmp_path / "public.pem")
    deliveries.write_requests(
        deliveries.build(20, key, locations=5, seed=3), tmp_path / "requests.bin"
    )
    argv = [sys.executable, "-m", "bench.glue", "--run", str(tmp_path), "--count", "20"]
    done = subprocess.run(argv, env=child_env(), capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_delivery_signed_by_another_key_fails_the_glue_child(tmp_path: Path) -> None:
    """The child is not blind: a 401 (the key does not match) makes it exit non-zero."""
    deliveries.write_public_key(Ed25519PrivateKey.generate(), tmp_path / "public.pem")
    deliveries.write_requests(
        deliveries.build(2, Ed25519PrivateKey.generate(), locations=2, seed=3),
        tmp_path / "requests.bin",
    )
    argv = [sys.executable, "-m", "bench.glue", "--run", str(tmp_path), "--count", "2"]
    done = subprocess.run(argv, env=child_env(), capture_output=True, timeout=120, check=False)
    assert done.returncode != 0
    assert b"not a 200" in done.stderr
