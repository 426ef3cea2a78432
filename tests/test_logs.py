"""The JSON logs: one line per event, not per repetition.

A request aiohttp cannot parse is one INFO line, not an ERROR traceback; a Kafka outage is
two lines (unreachable, reachable again), not the client library's errors every second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import localkafka
from aiohttp.http_exceptions import BadHttpMessage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.logs import LIBRARY_REPEATS, LibraryRepeats, MalformedRequests
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests import relayproc
from tests.kafkautil import unique_topic
from tests.relayutil import ROOT
from tests.test_shutdown import start_serve

#: how long the broker stays down in the outage test
OUTAGE_S = 10.0


def _record(error: BaseException) -> logging.LogRecord:
    """A record as aiohttp's server logs it for ``error``."""
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
        ("127.0.0.1",), (type(error), error, None),
    )  # fmt: skip


def test_parse_errors_are_demoted_and_other_errors_kept() -> None:
    """A parse error becomes "malformed request" at INFO without traceback; others pass as is."""
    demoted = _record(BadHttpMessage("bad"))
    assert MalformedRequests().filter(demoted) is logging.getLogger().isEnabledFor(logging.INFO)
    assert (demoted.levelname, demoted.getMessage(), demoted.exc_info) == (
        "INFO",
        "malformed request",
        None,
    )
    assert demoted.error == "BadHttpMessage"  # type: ignore[attr-defined]  # set by the filter

    kept = _record(RuntimeError("a bug"))
    assert MalformedRequests().filter(kept)
    assert kept.levelname == "ERROR"
    assert kept.exc_info is not None


async def test_garbage_on_the_port_logs_one_info_line(tmp_path: Path) -> None:
    """`relay serve` answers garbage 400 and logs it as one INFO line, no ERROR, no traceback."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "RELAY_HTTP_HOST": "127.0.0.1",
        "RELAY_HTTP_PORT": "0",
        "RELAY_METRICS_PORT": "0",
        "RELAY_ROUTES_FILE": str(ROOT / "config" / "routes.toml"),
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never reached: not needed here
        "RELAY_DRAIN_DELAY_S": "0",
    }
    proc, url = await start_serve(env, tmp_path)
    address = urlsplit(url)
    assert address.hostname is not None
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection(address.hostname, address.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            async with asyncio.timeout(10):
                status_line = await reader.readline()
            writer.close()
            assert status_line.split()[1] == b"400"
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
    assert proc.stdout is not None
    lines = [json.loads(line) for line in (await proc.stdout.read()).splitlines() if line]
    malformed = [line for line in lines if line["message"] == "malformed request"]
    assert len(malformed) == 3
    assert {line["level"] for line in malformed} == {"info"}
    from_aiohttp = [line for line in lines if line["logger"].startswith("aiohttp")]
    assert not [line for line in from_aiohttp if line["level"] == "error" or "exception" in line]


def _lines(log: Path) -> list[dict[str, Any]]:
    """The JSON lines a ``relay serve`` has written so far."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


async def _wait_for(log: Path, message: str, timeout_s: float = 60) -> dict[str, Any]:
    """The first line whose message starts with ``message``, waiting up to ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            for line in _lines(log):
                if line["message"].startswith(message):
                    return line
            await asyncio.sleep(0.2)


def test_library_repeats_are_counted_not_printed() -> None:
    """The repeated outage, topic and coordinator errors of aiokafka are counted, not printed.

    Another aiokafka error, and the relay's own lines, pass unchanged.
    """
    repeats = LibraryRepeats()
    for template in sorted(LIBRARY_REPEATS):
        record = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, template, None, None)
        assert repeats.filter(record) is logging.getLogger().isEnabledFor(logging.DEBUG)
        assert record.levelname == "DEBUG"
    other = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "Unexpected %s", ("x",), None)
    assert repeats.filter(other)
    assert other.levelname == "ERROR"
    own = logging.LogRecord(
        "relay.health", logging.WARNING, __file__, 1, "Unable to update metadata from %s", (), None
    )
    assert repeats.filter(own)
    assert repeats.take() == len(LIBRARY_REPEATS)
    assert repeats.take() == 0


async def test_broker_outage_logs_each_state_change_once(
    kafka_outage: localkafka.Cluster,
    public_key_files: tuple[Path, ...],
    ed25519_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    """A real ``relay serve`` whose broker stops for 10 s writes a handful of lines.

    One "kafka unreachable", one "reachable again" with the outage's length and the library
    errors it counted; no aiokafka error at all, nor for the first send to a new topic.
    """
    node = kafka_outage.nodes[0]
    with relayproc.serve(
        kafka_outage.bootstrap,
        public_key_files,
        tmp_path,
        unique_topic("quiet"),
        ready_check_interval_s="0.5",
        drain_delay_s="0",
    ) as relay:
        await _wait_for(relay.log, "kafka reachable")
        body = as_delivery({"type": "ContactCreate", "locationId": "loc-quiet"})
        headers = {"X-GHL-Signature": sign_ed25519(ed25519_key, body)}
        async with (
            aiohttp.ClientSession() as http,  # its topic does not exist yet
            http.post(relay.webhook_url, data=body, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
        before = len(_lines(relay.log))
        localkafka.kill_node(kafka_outage, node, signal.SIGTERM)
        try:
            await asyncio.sleep(OUTAGE_S)
            during = _lines(relay.log)[before:]
        finally:
            localkafka.start_node(kafka_outage, node)
            localkafka.wait_ready(kafka_outage)
        again = await _wait_for(relay.log, "kafka reachable again")
    lines = _lines(relay.log)
    print(f"{len(during)} lines in the {OUTAGE_S:.0f} s outage: {[x['message'] for x in during]}")
    assert len(during) <= 3, during
    assert [x["message"] for x in lines].count("kafka unreachable") == 1
    assert next(x for x in lines if x["message"] == "kafka unreachable")["level"] == "warning"
    assert again["level"] == "info"
    assert again["outage_s"] >= OUTAGE_S - 1
    assert again["client_errors_not_logged"] > 0
    library = [x for x in lines if x["logger"].startswith("aiokafka")]
    assert not [x for x in library if x["level"] in ("warning", "error")], library
