"""The README's walkthrough ("Try it"), every command as written, in a fresh clone.

The commands are read from the README itself, so the README cannot go stale: a command
that fails, or a changed output the test checks, fails the test. The clone reuses the
pip cache and the Kafka jars (nothing is downloaded again), the session's broker (which
its ``make kafka-up`` reports as another checkout's), and stops what it started: the demo's
relay (``make demo-stop``, a command of the walkthrough) and the relays of ``make run``.

Only what a terminal would do differs: ``RELAY_HTTP_PORT`` and ``RELAY_METRICS_PORT`` are
free ports rather than 8080 and 9090, ``RELAY_KAFKA_BOOTSTRAP_SERVERS`` is the session's
broker (its port follows ``HOOPAI_KAFKA_PORT_OFFSET``; ``make run`` and ``make demo`` find
it themselves), ``RELAY_DRAIN_DELAY_S=0`` lets Ctrl-C end a relay at once, a command
marked "terminal 1" runs in the background until the next one replaces it, and
``relay tail`` without ``--max`` gets its Ctrl-C once it has printed a record.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localkafka
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.tools.samples import sample_names
from tests.relayutil import ROOT

SECTION = "## Try it: send a webhook and watch it land"
#: the longest a walkthrough command may take (the first creates the clone's virtualenv)
COMMAND_TIMEOUT_S = 300
READY_TIMEOUT_S = 60
#: how long a process may take to exit after Ctrl-C before it is killed (and fails the test)
CTRL_C_TIMEOUT_S = 30
#: the shell the README's commands are written for (a terminal's)
BASH = shutil.which("bash") or "/bin/bash"


def walkthrough(readme: str) -> list[str]:
    """The commands of the section's ``sh`` blocks, in order, one string each."""
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        pending = ""
        for line in block.splitlines():
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            if pending.strip() and not pending.lstrip().startswith("#"):
                commands.append(pending.strip())
            pending = ""
    return commands


def is_tail(command: str) -> bool:
    """Whether the command (its comment aside) is a ``relay tail`` that runs until Ctrl-C."""
    words = command.split(" #", 1)[0].split()
    return "tail" in words and "--max" not in words


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Ran:
    """One walkthrough command and what it did."""

    command: str
    returncode: int
    output: str
    seconds: float = 0.0


def _background(command: str, clone: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start ``command`` as a terminal would, in a process group of its own (for Ctrl-C)."""
    return subprocess.Popen(
        [BASH, "-c", command],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # As a terminal's shell starts a command: Ctrl-C not ignored, even when pytest itself
        # runs in the background (which ignores SIGINT, and children inherit that).
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ctrl_c(proc: subprocess.Popen[str]) -> str:
    """Press Ctrl-C in the process's terminal (SIGINT to its group); what it printed."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=CTRL_C_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    return output


def _wait_ready(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}: {proc.communicate()[0]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"the relay of make run was not ready in {READY_TIMEOUT_S} s")


def _tail_until_a_record(command: str, proc: subprocess.Popen[str]) -> Ran:
    """Wait (60 s at most) for a record line of ``relay tail``, then Ctrl-C it."""
    assert proc.stdout is not None
    printed = ""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not re.search(r"^hoopai\.", printed, re.M):
            if selector.select(timeout=1.0):
                line = proc.stdout.readline()
                if not line:
                    break
                printed += line
    printed += _ctrl_c(proc)
    return Ran(command, proc.returncode, printed)


@pytest.fixture(scope="module")
def walked(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Ran]]:
    """Every walkthrough command run in a fresh clone of this repository, in order."""
    single = localkafka.CLUSTERS["single"]
    if kafka_bootstrap != single.bootstrap:
        pytest.skip("the walkthrough uses the local broker, not KAFKA_BOOTSTRAP_SERVERS")
    clone = tmp_path_factory.mktemp("walkthrough") / "hoopai-relay"
    git = shutil.which("git")
    assert git is not None, "git is needed to clone the repository"
    subprocess.run([git, "clone", "--quiet", str(ROOT), str(clone)], check=True)
    port = _free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RELAY_", "MAKE", "MFLAGS", "VIRTUAL_ENV"))
    }
    env |= {
        "RELAY_HTTP_PORT": str(port),
        "RELAY_METRICS_PORT": str(_free_port()),
        "RELAY_DRAIN_DELAY_S": "0",
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,  # for relay tail
    }
    commands = walkthrough((clone / "README.md").read_text())
    ran: list[Ran] = []
    server: subprocess.Popen[str] | None = None
    try:
        for command in commands:
            began = time.monotonic()
            if "# terminal 1" in command:
                if server is not None:  # "stop the first relay (Ctrl-C)"
                    _ctrl_c(server)
                server = _background(command, clone, env)
                _wait_ready(server, port)
                ran.append(Ran(command, 0, ""))
            elif is_tail(command):
                ran.append(_tail_until_a_record(command, _background(command, clone, env)))
            else:
                done = subprocess.run(
                    [BASH, "-c", command],
                    cwd=clone,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT_S,
                    check=False,
                )
                ran.append(Ran(command, done.returncode, done.stdout + done.stderr))
            ran[-1].seconds = time.monotonic() - began
            if ran[-1].returncode not in (0, 130):
                break
        for each in ran:
            print(f"walkthrough {each.seconds:6.1f} s  {each.command.split('  #')[0]}")
        yield ran
    finally:
        if server is not None and server.poll() is None:
            _ctrl_c(server)
        subprocess.run(
            [str(clone / ".venv" / "bin" / "python"), "dev/demo.py", "stop"],
            cwd=clone,
            capture_output=True,
            check=False,
        )


def demo_answers(demo: Ran) -> list[dict[str, Any]]:
    """The relay's answers that ``make demo`` printed (``relay send --type all``)."""
    return [
        json.loads(line.split(" ", 1)[1])
        for line in demo.output.splitlines()
        if line.startswith("200 {")
    ]


def test_walkthrough_commands_are_read_from_the_readme() -> None:
    """The section has the demo, the sends, the tail, both ``make run`` and the RSA steps."""
    commands = walkthrough((ROOT / "README.md").read_text())
    assert commands[0].startswith("make demo")
    assert sum("# terminal 1" in c for c in commands) == 2
    assert any(c.startswith(".venv/bin/relay send --rsa") for c in commands)
    assert all(not c.startswith("relay ") for c in commands)  # .venv/bin/relay, always


def test_make_demo_from_a_fresh_clone_reads_back_every_sample(
    walked: list[Ran], kafka_bootstrap: str
) -> None:
    """``make demo`` in a fresh clone: every sample answered 200, read back from Kafka."""
    demo = walked[0]
    assert demo.command.startswith("make demo")
    assert demo.returncode == 0, demo.output
    count = len(sample_names())
    assert f"demo: {count} of {count} samples read back from Kafka" in demo.output
    answers = demo_answers(demo)
    assert len(answers) == count
    # relay tail's lines, printed by the demo: <topic> <partition> <offset> <key> <type> <id> ...
    read_back = {line.split(" ")[5] for line in demo.output.splitlines() if line.count(" ") > 5}
    assert {answer["id"] for answer in answers} <= read_back
    assert "already up (started by another checkout" in demo.output  # the session's broker
    assert "make demo-stop" in demo.output  # the next commands


async def test_demo_records_are_in_kafka(walked: list[Ran], kafka_bootstrap: str) -> None:
    """Each delivery the demo sent is the record at the partition and offset its answer gave."""
    answers = demo_answers(walked[0])
    assert answers, walked[0].output
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {}
        for answer in answers:
            tp = TopicPartition(answer["topic"], answer["partition"])
            consumer.assign([tp])
            consumer.seek(tp, answer["offset"])
            async with asyncio.timeout(30):
                record = await consumer.getone(tp)
            found[answer["id"]] = dict(record.headers)["ce_id"].decode()
    finally:
        await consumer.stop()
    assert found == {answer["id"]: answer["id"] for answer in answers}


def test_readme_walkthrough_runs_as_written(walked: list[Ran]) -> None:
    """Every command of the walkthrough succeeds as written; each send is answered 200.

    ``relay tail`` (in the demo and alone) prints records and notes, no library warning.
    """
    commands = walkthrough((ROOT / "README.md").read_text())
    for ran in walked:
        expected = 130 if is_tail(ran.command) else 0
        assert ran.returncode == expected, (ran.command, ran.output)
        assert "relay tail: WARNING" not in ran.output, ran.output
        assert "relay tail: ERROR" not in ran.output, ran.output
        words = ran.command.split(" #", 1)[0].split()
        if "send" in words and "list" not in words:
            statuses = [line.split(" ", 1)[0] for line in ran.output.splitlines()]
            assert statuses, (ran.command, ran.output)
            assert set(statuses) == {"200"}, (ran.command, ran.output)
    assert [ran.command for ran in walked] == commands
