"""The JSON logs: one line per event, not per repetition.

A request aiohttp cannot parse is one INFO line, not an ERROR traceback; a Kafka outage is
two lines (unreachable, reachable again), not the client library's errors every second.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp.http_exceptions import BadHttpMessage

from relay.ingress.signatures import load_public_keys, spki_sha256
from relay.logs import LIBRARY_REPEATS, LibraryRepeats, MalformedRequests
from tests import relayproc
from tests.kafkautil import unique_topic
from tests.relayutil import serve_env


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
    # The broker is never reached: not needed here.
    env = serve_env("127.0.0.1:1", (), "hoopai", RELAY_DRAIN_DELAY_S="0")
    relay = await relayproc.start(env, tmp_path)
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            async with asyncio.timeout(10):
                status_line = await reader.readline()
            writer.close()
            assert status_line.split()[1] == b"400"
    finally:
        await relay.stop()
    # Every line JSON (json.loads fails on a raw traceback line).
    lines = [json.loads(line) for line in relay.text().splitlines() if line]
    malformed = [line for line in lines if line["message"] == "malformed request"]
    assert len(malformed) == 3
    assert {line["level"] for line in malformed} == {"info"}
    from_aiohttp = [line for line in lines if line["logger"].startswith("aiohttp")]
    assert not [line for line in from_aiohttp if line["level"] == "error" or "exception" in line]


def _lines(log: Path) -> list[dict[str, Any]]:
    """The JSON lines a ``relay serve`` has written so far."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


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


def test_one_start_up_line_says_what_the_relay_trusts_and_where_it_writes(
    public_key_files: tuple[Path, ...], tmp_path: Path
) -> None:
    """One "configuration" line: keys with source and SPKI SHA-256, schemes, Kafka, topics."""
    prefix = unique_topic("startup")
    with relayproc.serve(
        "127.0.0.1:1", public_key_files, tmp_path, prefix, accept_legacy_rsa="true"
    ) as relay:
        lines = _lines(relay.log)
    (line,) = [x for x in lines if x["message"] == "configuration"]
    assert line["level"] == "info"
    assert line["event"] == "startup"
    expected = []
    for path in public_key_files:
        keys = load_public_keys([path])
        for scheme, key in [("ed25519", k) for k in keys.ed25519] + [
            ("rsa-sha256", k) for k in keys.rsa
        ]:
            expected.append(
                {"source": str(path), "scheme": scheme, "spki_sha256": spki_sha256(key)}
            )
    assert line["keys"] == expected
    assert line["schemes"] == ["ed25519", "rsa-sha256"]
    assert line["kafka"] == {"bootstrap": "127.0.0.1:1", "security_protocol": "PLAINTEXT"}
    assert f"{prefix}.contacts" in line["topics"]
    assert f"{prefix}.deadletter" in line["topics"]
    assert line["spool"] == "off"
