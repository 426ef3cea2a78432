"""``python -m bench.glue``: instructions per request of the relay's glue, by callgrind.

A wall-clock or CPU-time figure taken on a busy, shared machine is noise; an instruction
count is not. This runs ``relay serve``'s own app and server (:func:`relay.server.start`)
with the delivery of the relay without Kafka (:class:`bench.nokafka.Discard`), in one
process with a minimal client over one keep-alive connection on 127.0.0.1, under
``valgrind --tool=callgrind``, twice: with ``--few`` and with ``--many`` of the same
pre-signed requests. The difference over the difference in requests is the instructions
one request costs: the HTTP parse and answer, the verify, the handler, the record, the
metrics (start-up, imports and the client's fixed costs cancel out; the client's per-request
share, a write and two reads, does not, and stays the same before and after a change).

With ``--kafka BOOTSTRAP`` the delivery is the relay's own (relay/kafka/direct.py, the
publisher, ``acks=all``, idempotent) to that broker, so the count adds the Kafka client's
cost. The requests go one after the other, so each record is a produce request of its own:
the low-rate path, where nothing is batched, which is where the client costs most.
With ``--floor BOOTSTRAP`` the delivery is :class:`bench.floor.Floor` to that broker: one
produce request per record with nothing else around it, the least any client could add.
Background work that runs by the clock (the readiness probe, aiokafka's metadata refresh)
is counted too; it is a few thousand instructions a second, next to the requests'
hundreds of millions.

Usage: ``python -m bench.glue [--few 100] [--many 600] [--requests-dir DIR] [--kafka
127.0.0.1:9092 | --floor 127.0.0.1:9092 | --ceiling]`` (about a minute on a quiet machine;
valgrind must be installed). ``--run DIR --count N`` is the measured child.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import ceiling, deliveries
from bench.floor import Floor, create_topics
from bench.nokafka import Discard
from bench.targets import REPO, child_env
from relay import appkeys
from relay.app import create_app
from relay.ingress.routing import all_topics, load_routes
from relay.ingress.signatures import load_public_keys
from relay.server import run_event_loop, start
from relay.settings import Settings

_COLLECTED: Final = re.compile(rb"Collected : (\d+)")
_LENGTH: Final = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


def _settings(directory: Path, kafka: str | None) -> Settings:
    environ = {
        "RELAY_PUBLIC_KEYS": str(directory / "public.pem"),
        "RELAY_ROUTES_FILE": str(REPO / "config" / "routes.toml"),
        "RELAY_TOPIC_PREFIX": "glue",
    }
    if kafka is not None:
        environ |= {"RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka, "RELAY_CREATE_TOPICS": "true"}
    return Settings.load(environ, use_file=False)


async def _app(directory: Path, target: str, kafka: str | None) -> web.Application:
    """The verification ceiling's app, or the relay's: to the floor client at ``kafka``.

    Or to the relay's own delivery there, or with its records discarded if ``kafka`` is None.
    """
    if target == "ceiling":
        return ceiling.create_app(load_public_keys([directory / "public.pem"]))
    if target == "floor" and kafka is not None:
        settings = _settings(directory, kafka)
        routes = load_routes(settings.routes_file, settings.topic_prefix)
        await create_topics(kafka, all_topics(routes))
        floor = Floor(kafka)
        await floor.connect()
        return create_app(settings, floor)
    return create_app(_settings(directory, kafka), None if kafka else Discard())


async def _drive(directory: Path, count: int, target: str, kafka: str | None) -> None:
    """Serve, then send the first ``count`` requests one after the other; all must be 200.

    With ``kafka``, to that broker, once the delivery is ready.
    """
    app = await _app(directory, target, kafka)
    runner = await start(app, "127.0.0.1", 0)
    if target != "ceiling":
        async with asyncio.timeout(60):
            # The probe sets readiness; it has no event of its own to wait on.
            while app[appkeys.DELIVERY].readiness().problems:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    port = runner.addresses[0][1]
    requests = deliveries.read_requests(directory / "requests.bin")[:count]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for raw in requests:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            if not head.startswith(b"HTTP/1.1 200") or length is None:
                raise SystemExit(f"bench.glue: not a 200: {head!r}")
            await reader.readexactly(int(length[1]))
    finally:
        writer.close()
        await runner.cleanup()


def _instructions(directory: Path, counts: Sequence[int], extra: Sequence[str]) -> list[int]:
    """Instructions callgrind counted for each whole child, sending ``count`` requests each.

    The children run at once: an instruction count does not depend on who else runs.
    """
    # The same hash seed each run, so that dict and set layouts cost the same each time.
    env = child_env({"PYTHONHASHSEED": "0"})
    children = []
    for count in counts:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
        argv += ["-m", "bench.glue", "--run", str(directory), "--count", str(count)]
        argv += extra
        children.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603 -- argv built here
        )
    found = []
    for child in children:
        _, err = child.communicate()
        collected = _COLLECTED.search(err)
        if child.returncode != 0 or collected is None:
            raise SystemExit(f"bench.glue: a child failed:\n{err.decode()[-2000:]}")
        found.append(int(collected[1]))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Sign the requests, run both children, print instructions per request."""
    parser = argparse.ArgumentParser(prog="python -m bench.glue", description=__doc__)
    parser.add_argument("--few", type=int, default=100)
    parser.add_argument("--many", type=int, default=600)
    parser.add_argument(
        "--requests-dir",
        type=Path,
        help="keep the signed requests here and reuse them (the same bytes before and after)",
    )
    targets = parser.add_mutually_exclusive_group()
    targets.add_argument("--kafka", metavar="BOOTSTRAP", help="deliver to this broker")
    targets.add_argument(
        "--floor",
        metavar="BOOTSTRAP",
        help="deliver to this broker with the least a client can do (bench/floor.py)",
    )
    targets.add_argument(
        "--ceiling", action="store_true", help="the verification ceiling (bench/ceiling.py)"
    )
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run is not None:
        target = "ceiling" if args.ceiling else "floor" if args.floor else "relay"
        run_event_loop(_drive(args.run, args.count, target, args.kafka or args.floor))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.glue: valgrind is not installed (apt-get install valgrind)")
    if not 0 < args.few < args.many:
        raise SystemExit("bench.glue: --few must be above 0 and below --many")
    with tempfile.TemporaryDirectory(prefix="bench-glue-") as tmp:
        directory = args.requests_dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        stored = directory / "requests.bin"
        if not stored.exists() or len(deliveries.read_requests(stored)) < args.many:
            key = Ed25519PrivateKey.generate()
            deliveries.write_public_key(key, directory / "public.pem")
            signed = deliveries.build(args.many, key, locations=500, seed=6)
            deliveries.write_requests(signed, stored)
        # the children serve the same target as this run was asked for
        extra = ["--ceiling"] if args.ceiling else []
        for option, bootstrap in (("--kafka", args.kafka), ("--floor", args.floor)):
            extra += [option, bootstrap] if bootstrap else []
        few, many = _instructions(directory, (args.few, args.many), extra)
    per_request = (many - few) / (args.many - args.few)
    print(f"instructions per request: {per_request:,.0f}")
    print(f"({few:,} for {args.few} requests, {many:,} for {args.many})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
