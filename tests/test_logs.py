"""The JSON logs: a request aiohttp cannot parse is one INFO line, not an ERROR traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp.http_exceptions import BadHttpMessage

from relay.logs import MalformedRequests
from tests.relayutil import ROOT
from tests.test_shutdown import start_serve


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
