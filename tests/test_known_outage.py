"""A Kafka outage the relay knows of: its log says so once, and requests are answered at once.

Two real ``relay serve`` processes, one without the spool and one with it, against the
``outage`` broker (one node, started by its session fixture, stopped here for
``OUTAGE_S``). While the readiness probe says Kafka is unreachable, the first answers the
retryable status at once (``not_connected``) and the second spools at once, instead of
each request waiting out the 4 s deadline. The log says "kafka unreachable" once and
"kafka reachable again after N s" once, and none of the client library's repeated errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import localkafka
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.tools.deliveries import as_delivery, sign_ed25519
from tests import relayproc
from tests.kafkautil import unique_topic

#: how long the broker stays down
OUTAGE_S = 10.0
#: the request deadline (RELAY_ACK_TIMEOUT_MS, the default): "at once" is well under it
DEADLINE_S = 4.0


def lines_of(log: Path) -> list[dict[str, Any]]:
    """The JSON lines a ``relay serve`` has written so far."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


async def wait_for(log: Path, message: str, timeout_s: float = 60) -> dict[str, Any]:
    """The first line whose message starts with ``message``, waiting up to ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            for line in lines_of(log):
                if line["message"].startswith(message):
                    return line
            await asyncio.sleep(0.2)


async def post(url: str, key: Ed25519PrivateKey) -> tuple[int, dict[str, Any], float]:
    """One signed delivery: the status, the answer and how long it took, in seconds."""
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-outage"})
    headers = {"X-GHL-Signature": sign_ed25519(key, body)}
    began = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
        http.post(url, data=body, headers=headers) as response,
    ):
        answer = await response.json()
    return response.status, answer, time.monotonic() - began


@dataclass
class Outage:
    """What the two relays did around one outage of their broker."""

    direct: relayproc.ServeProcess
    spooled: relayproc.ServeProcess
    #: the direct relay's log lines written while the broker was down
    during: list[dict[str, Any]]
    #: (status, answer, seconds) of one delivery to each relay while Kafka was known down
    direct_answer: tuple[int, dict[str, Any], float]
    spool_answer: tuple[int, dict[str, Any], float]


@pytest.fixture(scope="module")
async def outage(
    kafka_outage: localkafka.Cluster,
    public_key_files: tuple[Path, ...],
    ed25519_key: Ed25519PrivateKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Outage]:
    """Both relays up; a first send each; the broker stopped for OUTAGE_S, then back."""
    node = kafka_outage.nodes[0]
    folder = tmp_path_factory.mktemp("outage")
    (folder / "direct").mkdir()
    (folder / "spooled").mkdir()
    common = {"ready_check_interval_s": "0.5", "drain_delay_s": "0"}
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(
            relayproc.serve(
                kafka_outage.bootstrap,
                public_key_files,
                folder / "direct",
                unique_topic("quiet"),
                **common,
            )
        )
        spooled = stack.enter_context(
            relayproc.serve(
                kafka_outage.bootstrap,
                public_key_files,
                folder / "spooled",
                unique_topic("quiet"),
                spool_dir=str(folder / "spool"),
                **common,
            )
        )
        for relay in (direct, spooled):
            await wait_for(relay.log, "kafka reachable")
            status, answer, _ = await post(relay.webhook_url, ed25519_key)  # a new topic
            assert status == 200, answer
        before = len(lines_of(direct.log))
        localkafka.kill_node(kafka_outage, node, signal.SIGTERM)
        began = time.monotonic()
        try:
            for relay in (direct, spooled):
                await wait_for(relay.log, "kafka unreachable", timeout_s=OUTAGE_S)
            direct_answer = await post(direct.webhook_url, ed25519_key)
            spool_answer = await post(spooled.webhook_url, ed25519_key)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - began)))
            during = lines_of(direct.log)[before:]
        finally:
            localkafka.start_node(kafka_outage, node)
            localkafka.wait_ready(kafka_outage)
        for relay in (direct, spooled):
            await wait_for(relay.log, "kafka reachable again")
        yield Outage(direct, spooled, during, direct_answer, spool_answer)


async def test_broker_outage_logs_each_state_change_once(outage: Outage) -> None:
    """A real ``relay serve`` whose broker stops for 10 s writes a handful of lines.

    One "kafka unreachable" (warning), one "reachable again" (info) with the outage's
    length and the library errors it counted; no aiokafka error at all, nor for the first
    send to a new topic; and no line for the request answered while Kafka was down.
    """
    lines = lines_of(outage.direct.log)
    print(f"{len(outage.during)} lines in the {OUTAGE_S:.0f} s outage: "
          f"{[x['message'] for x in outage.during]}")  # fmt: skip
    assert len(outage.during) <= 3, outage.during
    assert [x["message"] for x in lines].count("kafka unreachable") == 1
    assert next(x for x in lines if x["message"] == "kafka unreachable")["level"] == "warning"
    (again,) = [x for x in lines if x["message"].startswith("kafka reachable again after")]
    assert again["level"] == "info"
    assert again["outage_s"] >= OUTAGE_S - 1
    assert again["client_errors_not_logged"] > 0
    library = [x for x in lines if x["logger"].startswith("aiokafka")]
    assert not [x for x in library if x["level"] in ("warning", "error")], library


async def test_known_down_kafka_gets_the_retryable_status_at_once(outage: Outage) -> None:
    """Without the spool, while readiness says unreachable: 429 ``not_connected``, at once.

    Not after the 4 s deadline, as each request waited before.
    """
    status, answer, seconds = outage.direct_answer
    print(f"answered {status} {answer} in {seconds:.3f} s (deadline {DEADLINE_S:.0f} s)")
    assert (status, answer["error"]) == (429, "not_connected")
    assert seconds < DEADLINE_S / 4


async def test_known_down_kafka_is_spooled_at_once(outage: Outage) -> None:
    """With the spool, while readiness says unreachable: spooled (2xx) at once.

    Not after ``RELAY_SPOOL_AFTER_MS`` (2 s) spent waiting for an ack that cannot come.
    """
    status, answer, seconds = outage.spool_answer
    print(f"answered {status} {answer} in {seconds:.3f} s")
    assert (status, answer["outcome"]) == (200, "spooled")
    assert seconds < DEADLINE_S / 4
