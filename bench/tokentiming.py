"""``python -m bench.tokentiming``: a workflow 401, timed for a better and a worse guess.

A timing check, not a test (a timed assertion would be flaky; the figures go in
docs/benchmarks.md, "Workflow token timing"). Two parts:

1. **Over HTTP**, against a real ``relay serve`` (its own process, uvloop, one workflow
   source with one 32-byte token, no Kafka needed: a 401 never reaches it): one keep-alive
   connection, the requests of each kind interleaved in a shuffled order, each timed from
   its first byte written to the last byte of its answer read. The kinds: a token whose
   *first* byte differs, one whose *last* byte differs, a random token of the same
   length, and no token at all.
2. **In process**, the check alone (:meth:`relay.ingress.tokens.TokenSet.accepts`) for the same
   guesses, and, as a sensitivity check of the method, a naive ``==`` over 4 KiB tokens,
   which stops at the first differing byte and so should show a gap.
"""

from __future__ import annotations

import argparse
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from bench.targets import Server, child_env, free_port
from relay.ingress.tokens import TokenSet

ROOT: Final = Path(__file__).resolve().parent.parent
PATH: Final = b"/webhooks/hoopai/workflows/bench"
MICRO_ROUNDS: Final = 200
MICRO_CALLS: Final = 2_000


def _flip(token: str, index: int) -> str:
    """``token`` with the character at ``index`` replaced by another hex digit."""
    other = "0" if token[index] != "0" else "1"
    return token[:index] + other + token[index + 1 :]


def _request(token: str | None) -> bytes:
    """A keep-alive POST of ``{}`` with the token as ``Authorization: Bearer``."""
    auth = b"" if token is None else b"Authorization: Bearer " + token.encode() + b"\r\n"
    return (
        b"POST " + PATH + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
        + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )  # fmt: skip


def _round_trip(sock: socket.socket, request: bytes) -> int:
    """Send one request, read its whole answer; nanoseconds from write to last byte."""
    began = time.perf_counter_ns()
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    elapsed = time.perf_counter_ns() - began
    if not head.startswith(b"HTTP/1.1 401"):
        raise SystemExit(f"expected a 401, got {head.splitlines()[0]!r}")
    return elapsed


def _summary(samples: list[int]) -> dict[str, float]:
    """Median, p10, p90 and the mean below p99 (one GC or scheduler hiccup aside), in µs."""
    ordered = sorted(samples)
    cut = ordered[: int(len(ordered) * 0.99)]
    mean = statistics.fmean(cut)
    half_ci = 1.96 * statistics.stdev(cut) / len(cut) ** 0.5
    return {
        "median": ordered[len(ordered) // 2] / 1000,
        "p10": ordered[len(ordered) // 10] / 1000,
        "p90": ordered[len(ordered) * 9 // 10] / 1000,
        "mean": mean / 1000,
        "ci": half_ci / 1000,
    }


def http_part(rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """The 401's latency per kind of guess, against a real ``relay serve``."""
    token = secrets.token_hex(16)
    kinds = {
        "first byte differs": _request(_flip(token, 0)),
        "last byte differs": _request(_flip(token, len(token) - 1)),
        "random, same length": _request(secrets.token_hex(16)),
        "no token": _request(None),
    }
    with tempfile.TemporaryDirectory(prefix="tokentiming-") as folder:
        where = Path(folder)
        (where / "bench.token").write_text(token + "\n")
        (where / "relay.toml").write_text(
            f'[workflows.bench]\ntoken_files = ["{where / "bench.token"}"]\n'
        )
        port = free_port()
        env = child_env(
            {
                "RELAY_CONFIG_FILE": str(where / "relay.toml"),
                "RELAY_HTTP_HOST": "127.0.0.1",
                "RELAY_HTTP_PORT": str(port),
                "RELAY_METRICS_PORT": str(free_port()),
                "RELAY_ROUTES_FILE": str(ROOT / "config" / "routes.toml"),
                "RELAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # a 401 never reaches Kafka
                "RELAY_LOG_LEVEL": "WARNING",  # no line per 401: the log would be the cost
                "RELAY_DRAIN_DELAY_S": "0",
            }
        )
        with (where / "relay.log").open("wb") as out:
            argv = [sys.executable, "-m", "relay", "serve"]
            proc = subprocess.Popen(argv, env=env, cwd=where, stdout=out, stderr=out)  # noqa: S603 -- argv built here
        relay = Server("relay", proc, port, ready_at=(port, "/healthz"))
        try:
            relay.wait_ready()
            samples: dict[str, list[int]] = {kind: [] for kind in kinds}
            order = [kind for kind in kinds for _ in range(rounds)]
            random.shuffle(order)
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for kind in list(kinds) * warmup:
                    _round_trip(sock, kinds[kind])
                for kind in order:
                    samples[kind].append(_round_trip(sock, kinds[kind]))
        finally:
            relay.stop()
    return {kind: _summary(values) for kind, values in samples.items()}


def _best_ns(first: Callable[[], object], last: Callable[[], object]) -> tuple[float, float]:
    """Per-call ns of each, best of MICRO_ROUNDS rounds of MICRO_CALLS calls.

    Many short rounds, alternating between the two (and which goes first): the best round
    of each is one that no other process interrupted, on a machine that is rarely idle.
    """
    best = [float("inf"), float("inf")]
    for round_no in range(MICRO_ROUNDS * 2):
        which = (round_no + round_no // 2) % 2
        check = (first, last)[which]
        began = time.perf_counter_ns()
        for _ in range(MICRO_CALLS):
            check()
        best[which] = min(best[which], (time.perf_counter_ns() - began) / MICRO_CALLS)
    return best[0], best[1]


def micro_part() -> list[tuple[str, float, float]]:
    """(what, first byte differs ns, last byte differs ns) for the check and a naive ==."""
    rows = []
    for length in (32, 64):  # `openssl rand -hex 16` and `-hex 32`
        token = secrets.token_hex(length // 2).encode()
        tokens = TokenSet.of([token])
        first = bytes([token[0] ^ 1]) + token[1:]
        last = token[:-1] + bytes([token[-1] ^ 1])
        timed = _best_ns(lambda: tokens.accepts(first), lambda: tokens.accepts(last))  # noqa: B023 -- called before the loop moves on
        rows.append((f"TokenSet.accepts, {length}-byte token", *timed))
    token = secrets.token_hex(2048).encode()
    first = bytes([token[0] ^ 1]) + token[1:]
    last = token[:-1] + bytes([token[-1] ^ 1])
    timed = _best_ns(lambda: first == token, lambda: last == token)
    rows.append(("naive ==, 4096-byte token (sensitivity check)", *timed))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print them as Markdown tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.tokentiming")
    parser.add_argument("--rounds", type=int, default=5000, help="requests per kind (5000)")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests per kind")
    args = parser.parse_args(argv)
    print(f"## 401 latency over HTTP ({args.rounds} requests per kind, shuffled), in µs\n")
    print("| guess | median | p10 | p90 | mean below p99 (95% CI) |")
    print("|---|---|---|---|---|")
    for kind, s in http_part(args.rounds, args.warmup).items():
        print(
            f"| {kind} | {s['median']:.1f} | {s['p10']:.1f} | {s['p90']:.1f} "
            f"| {s['mean']:.1f} ± {s['ci']:.1f} |"
        )
    print(f"\n## The check alone (best of {MICRO_ROUNDS} x {MICRO_CALLS:,} calls), in ns\n")
    print("| check | first byte differs | last byte differs |")
    print("|---|---|---|")
    for what, first_ns, last_ns in micro_part():
        print(f"| {what} | {first_ns:.0f} | {last_ns:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
