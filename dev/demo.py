"""``make demo``: events in Kafka with one command, for someone who just cloned the repo.

1. a dev key pair in ``.dev-keys/`` (``relay keygen``), unless there is one;
2. a relay trusting its public key, on 127.0.0.1 (``RELAY_HTTP_PORT``, 8080), against the
   local broker that ``make demo`` started (or reused), left running in the background;
3. one signed delivery of every sample (``relay send --type all``);
4. those records as ``relay tail`` reads them back from Kafka;
5. the commands to try next.

``python dev/demo.py stop`` (``make demo-stop``) stops that relay. Run with the project's
virtualenv Python: the ``relay`` commands are those beside it. The relay's pid and log are
in ``.demo/``, which git ignores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

STATE = Path(".demo")
PID_FILE = STATE / "relay.pid"
LOG_FILE = STATE / "relay.log"
KEYS = Path(".dev-keys")
READY_TIMEOUT_S = 60.0
#: the longest wait for one record in ``relay tail`` (the first send creates the topics)
TAIL_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class DemoError(RuntimeError):
    """A step failed; the message says which and what to look at."""


def relay_command() -> Path:
    """The ``relay`` console script of the virtualenv running this script."""
    return Path(sys.executable).with_name("relay")


def say(text: str) -> None:
    """One line of the demo's own, told apart from the commands' output."""
    print(f"demo: {text}", flush=True)


def _running_pid() -> int | None:
    """The pid of the relay a previous ``make demo`` left running, if it still runs."""
    try:
        pid = int(PID_FILE.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A recycled pid must never be signalled: it must still be our `relay serve`.
    return pid if b"relay" in cmdline and b"serve" in cmdline else None


def stop() -> bool:
    """Stop the demo's relay (SIGTERM: it drains and exits); whether one was running."""
    pid = _running_pid()
    PID_FILE.unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text(errors="replace").rsplit(") ", 1)[-1]
        if state.startswith("Z"):
            break
        time.sleep(0.1)
    return True


def _wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    """Until the relay's /readyz says 200 (Kafka reached); raise if it exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the relay exited ({proc.returncode}):\n{_tail_of(LOG_FILE)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise DemoError(f"the relay was not ready in {READY_TIMEOUT_S:.0f} s; its log: {LOG_FILE}")


def _tail_of(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} does not exist)"


def start_relay(env: dict[str, str], port: int) -> int:
    """``relay serve`` in the background, in a session of its own; its pid once ready."""
    STATE.mkdir(exist_ok=True)
    with LOG_FILE.open("wb") as log:
        # A session of its own: it outlives `make demo`, and Ctrl-C in this terminal later
        # does not reach it (make demo-stop does).
        proc = subprocess.Popen(
            [str(relay_command()), "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    PID_FILE.write_text(str(proc.pid))
    try:
        _wait_ready(proc, port)
    except DemoError:
        stop()
        raise
    return proc.pid


def send_and_tail(env: dict[str, str], count: int) -> tuple[list[dict[str, object]], list[str]]:
    """Send every sample once while ``relay tail`` reads; the answers and the tail's lines.

    The tail starts first, at the end of the topics (a topic created by these sends is
    read from its start), so it shows these ``count`` records, not older ones.
    """
    relay = str(relay_command())
    tail = subprocess.Popen(
        [relay, "tail", "--max", str(count), "--timeout", str(TAIL_TIMEOUT_S)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if tail.stderr is None:  # never: it is a pipe
            raise DemoError("relay tail has no stderr")
        # "reading ..." or "waiting for a topic ..." once it has its first partitions: from
        # then on, what is sent is what it prints.
        note = tail.stderr.readline()
        while note and not note.startswith(("relay tail: reading", "relay tail: waiting")):
            print(note, end="", file=sys.stderr)
            note = tail.stderr.readline()
        if not note:
            raise DemoError(f"relay tail exited ({tail.wait()})")
        say(f"relay send --type all: one delivery of each of the {count} samples")
        sent = subprocess.run(
            [relay, "send", "--type", "all"], env=env, capture_output=True, text=True, check=False
        )
        print(sent.stdout, end="", flush=True)
        if sent.returncode != 0:
            raise DemoError(f"relay send failed ({sent.returncode}): {sent.stderr}")
        answers = [json.loads(line.split(" ", 1)[1]) for line in sent.stdout.splitlines()]
        say("relay tail: the records as a consumer reads them from Kafka")
        out, err = tail.communicate(timeout=TAIL_TIMEOUT_S + 30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    print(out, end="", flush=True)
    if tail.returncode != 0:
        raise DemoError(f"relay tail read fewer than {count} records: {err}")
    return answers, out.splitlines()


def next_steps(pid: int, port: int, metrics_port: int) -> list[str]:
    """What to try next, printed at the end."""
    return [
        f"the relay runs in the background: pid {pid}, http://127.0.0.1:{port}, "
        f"log {LOG_FILE}, trusting {KEYS / 'ed25519.pem'}",
        "next, try:",
        "  .venv/bin/relay send --type OpportunityStageUpdate --location loc-demo",
        "  .venv/bin/relay send --type list                # the sample names",
        "  .venv/bin/relay tail --from-beginning           # Ctrl-C stops",
        f"  curl -s http://127.0.0.1:{metrics_port}/metrics | grep relay_requests_total",
        "  make demo-stop                                  # stops this relay",
        "  make kafka-down                                 # stops Kafka",
    ]


def demo(bootstrap: str) -> None:
    """The steps of the module docstring."""
    from relay.tools.samples import sample_names  # the venv's package, beside its `relay`

    if (KEYS / "ed25519.key").exists():
        say(f"using the dev key pair in {KEYS}/")
    else:
        say("relay keygen: a dev key pair, to sign as HoopAI would")
        subprocess.run([str(relay_command()), "keygen"], check=True)
    port = int(os.environ.get("RELAY_HTTP_PORT") or 8080)
    metrics_port = int(os.environ.get("RELAY_METRICS_PORT") or 9090)
    env = {
        **os.environ,
        "RELAY_HTTP_HOST": os.environ.get("RELAY_HTTP_HOST") or "127.0.0.1",
        "RELAY_HTTP_PORT": str(port),
        "RELAY_METRICS_PORT": str(metrics_port),
        "RELAY_PUBLIC_KEYS": str(KEYS / "ed25519.pem"),
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        # No load balancer to notice a shutdown: make demo-stop need not wait for one.
        "RELAY_DRAIN_DELAY_S": os.environ.get("RELAY_DRAIN_DELAY_S") or "0",
    }
    if stop():
        say("stopped the relay of the previous make demo")
    say(f"relay serve on 127.0.0.1:{port}, trusting {KEYS / 'ed25519.pem'}, Kafka at {bootstrap}")
    pid = start_relay(env, port)
    names = sample_names()
    answers, records = send_and_tail(env, len(names))
    ids = {str(answer.get("id")) for answer in answers}
    read_back = {line.split(" ")[5] for line in records if len(line.split(" ")) > 6}
    say(f"{len(ids & read_back)} of {len(names)} samples read back from Kafka")
    if not ids <= read_back:
        raise DemoError(f"not read back: {sorted(ids - read_back)}")
    for line in next_steps(pid, port, metrics_port):
        say(line)


def main(argv: Sequence[str] | None = None) -> int:
    """``demo.py [start] --bootstrap HOST:PORT`` or ``demo.py stop``."""
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["start", "stop"], default="start")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="the local broker")
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            say("relay stopped" if stop() else "no demo relay was running")
        else:
            demo(args.bootstrap)
    except (DemoError, subprocess.CalledProcessError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
