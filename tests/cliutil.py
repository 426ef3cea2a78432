"""``python -m relay`` as a process of its own, for the tests of the command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.relayutil import ROOT

#: longest a CLI process may run in a test
TIMEOUT_S = 60


def cli_env(**variables: str) -> dict[str, str]:
    """A minimal environment for ``python -m relay``: the repository importable, nothing else."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **variables}


def relay_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m relay ARGS`` in ``cwd`` (no config/relay.toml there) and capture it."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def relay_cli_async(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``relay_cli`` in a thread, so that a relay served by this event loop can answer."""
    return await asyncio.to_thread(relay_cli, *args, cwd=cwd, env=env)


def answers(stdout: str) -> list[tuple[int, dict[str, Any]]]:
    """The ``<status> <json>`` lines ``relay send`` prints."""
    parsed = []
    for line in stdout.splitlines():
        status, _, answer = line.partition(" ")
        parsed.append((int(status), json.loads(answer)))
    return parsed
