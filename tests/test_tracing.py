"""Trace context across the relay: the request's ``traceparent`` in every record, and spans.

Without OpenTelemetry (the default), the in-process tier and one real-broker test show the
record's ``traceparent``: the request's when valid, else a fresh one. With it, a real
``relay serve`` exports its spans over OTLP/HTTP to a receiver here on 127.0.0.1, which
decodes them with the OTLP protobuf definitions (opentelemetry-proto).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from relay import server
from relay.tools.deliveries import as_delivery, sign_ed25519
from relay.tracing import check_otel, fresh_traceparent, parse_traceparent, propagated
from tests.chaosutil import until_ready
from tests.inprocess import delivered
from tests.kafkautil import consume, unique_topic
from tests.relayproc import start
from tests.relayutil import RunningRelay, StartRelay, post, serve_env

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


# --- the W3C rules, pure -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACEPARENT, TRACEPARENT),
        (f"  {TRACEPARENT} ", TRACEPARENT),
        (f"00-{TRACE_ID}-{PARENT_ID}-00", f"00-{TRACE_ID}-{PARENT_ID}-00"),
        # a later version: its first four fields, passed on as version 00
        (f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-holds", TRACEPARENT),
        (f"cc-{TRACE_ID}-{PARENT_ID}-01", TRACEPARENT),
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", None),  # version 00 has exactly four
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),
        (f"00-{'0' * 32}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", None),
        (f"00_{TRACE_ID}_{PARENT_ID}_01", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_traceparent(value: str | None, expected: str | None) -> None:
    """Valid values (of any version) come out as version 00; invalid ones as None."""
    assert parse_traceparent(value) == expected


def test_fresh_traceparents_are_valid_and_distinct() -> None:
    """A fresh traceparent parses, is sampled, and no two of 1000 share a trace id."""
    fresh = [fresh_traceparent() for _ in range(1000)]
    assert all(parse_traceparent(t) == t for t in fresh)
    assert all(t.endswith("-01") for t in fresh)
    assert len({t.split("-")[1] for t in fresh}) == 1000


def test_tracestate_goes_along_only_with_a_valid_traceparent() -> None:
    """tracestate: kept with a valid traceparent if printable and short, else dropped."""
    assert propagated(TRACEPARENT, "vendor=abc") == (
        ("traceparent", TRACEPARENT.encode()),
        ("tracestate", b"vendor=abc"),
    )
    assert propagated(TRACEPARENT, None) == (("traceparent", TRACEPARENT.encode()),)
    assert propagated(TRACEPARENT, "v=" + "x" * 600) == (("traceparent", TRACEPARENT.encode()),)
    assert propagated(TRACEPARENT, "v=\x00") == (("traceparent", TRACEPARENT.encode()),)
    ((name, fresh),) = propagated("garbage", "vendor=abc")
    assert name == "traceparent"
    assert parse_traceparent(fresh.decode()) == fresh.decode()
    assert TRACE_ID not in fresh.decode()


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
    ],
)
def test_otel_is_on_only_with_an_otlp_endpoint(environ: dict[str, str], wanted: bool) -> None:
    """The standard variables decide: an OTLP endpoint, unless the SDK or exporter is off."""
    assert check_otel(environ) is wanted


def test_endpoint_without_the_extra_is_a_configuration_error(tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set, OpenTelemetry absent: exit 2, naming the variable."""
    # An empty "opentelemetry" package first on the path hides the installed one.
    (tmp_path / "opentelemetry").mkdir()
    (tmp_path / "opentelemetry" / "__init__.py").write_text("")
    env = serve_env("127.0.0.1:9", (), "t", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("relay: configuration error: OTEL_EXPORTER_OTLP_ENDPOINT")
    assert "hoopai-relay[otel]" in done.stderr


# --- without OpenTelemetry: the record's traceparent ---------------------------------------


def _body(location: str = "loc-trace") -> bytes:
    return as_delivery({"type": "ContactCreate", "locationId": location})


async def test_record_carries_the_incoming_traceparent_and_tracestate(
    http: aiohttp.ClientSession, inprocess: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A valid traceparent (and its tracestate) is the record's, after its own headers."""
    body = _body()
    status, _, _ = await post(
        http,
        inprocess,
        body,
        X_GHL_Signature=sign_ed25519(ed25519_key, body),
        traceparent=TRACEPARENT,
        tracestate="rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
    )
    assert status == 200
    (record,) = delivered(inprocess)
    assert record.headers[-2:] == (
        ("traceparent", TRACEPARENT.encode()),
        ("tracestate", b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    )
    assert record.headers[0] == ("ce_specversion", b"1.0")


@pytest.mark.parametrize(
    "headers",
    [{}, {"traceparent": "00-not-a-trace-01"}, {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"}],
    ids=["none", "garbage", "zero-trace-id"],
)
async def test_record_gets_a_fresh_traceparent_without_a_valid_one(
    http: aiohttp.ClientSession,
    inprocess: RunningRelay,
    ed25519_key: Ed25519PrivateKey,
    headers: dict[str, str],
) -> None:
    """No valid traceparent on the request: a fresh valid one per record, no tracestate."""
    for location in ("loc-a", "loc-b"):
        body = _body(location)
        status, _, _ = await post(
            http,
            inprocess,
            body,
            X_GHL_Signature=sign_ed25519(ed25519_key, body),
            tracestate="rojo=1",
            **headers,
        )
        assert status == 200
    first, second = (dict(r.headers) for r in delivered(inprocess))
    for record in (first, second):
        assert "tracestate" not in record
        value = record["traceparent"].decode()
        assert parse_traceparent(value) == value
    assert first["traceparent"].split(b"-")[1] != second["traceparent"].split(b"-")[1]


async def test_traceparent_reaches_kafka(
    http: aiohttp.ClientSession,
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    kafka_bootstrap: str,
) -> None:
    """In the broker, the record's traceparent header is the request's."""
    relay = await start_relay()
    body = _body()
    headers = {"X_GHL_Signature": sign_ed25519(ed25519_key, body), "traceparent": TRACEPARENT}
    # As the sender would: retry the retryable status. A just-started broker, on a busy
    # machine, can take longer than the ack deadline for a new topic's first record.
    for _ in range(5):
        status, _, _ = await post(http, relay, body, **headers)
        if status == 200:
            break
        await asyncio.sleep(1)
    assert status == 200
    for record in await consume(kafka_bootstrap, relay.topic("contacts"), 1):
        assert dict(record.headers)["traceparent"] == TRACEPARENT.encode()


# --- with OpenTelemetry: spans over OTLP/HTTP ----------------------------------------------


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: POST /v1/traces, protobuf."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        self.arrived = asyncio.Event()

    async def export(self, request: web.Request) -> web.Response:
        """Decode one ExportTraceServiceRequest and keep its spans."""
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.content_type == "application/x-protobuf"
        decoded = ExportTraceServiceRequest.FromString(body)
        for resource_spans in decoded.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(resource, span) for span in scope_spans.spans]
        self.arrived.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def trace(self, trace_id: str, count: int, timeout_s: float = 30) -> list[Span]:
        """The spans of ``trace_id``, once ``count`` of them arrived."""
        async with asyncio.timeout(timeout_s):
            while True:
                found = [s for _, s in self.spans if s.trace_id.hex() == trace_id]
                if len(found) >= count:
                    return found
                self.arrived.clear()
                await self.arrived.wait()


def attributes(values: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of their plain values."""
    out: dict[str, Any] = {}
    for item in values:
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind) if kind else None
    return out


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """A running receiver and its base URL (what OTEL_EXPORTER_OTLP_ENDPOINT names)."""
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.export)
    runner = await server.start(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        yield found, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def by_name(spans: list[Span]) -> dict[str, Span]:
    """Spans by name; each name once."""
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


async def test_spans_of_one_delivery_are_exported_over_otlp(
    http: aiohttp.ClientSession,
    receiver: tuple[Receiver, str],
    kafka_bootstrap: str,
    public_key_files: tuple[Path, ...],
    ed25519_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    """Request, verification and produce: one trace under the sender's, and in the record.

    The server span is the child of the request's traceparent; the verify and send spans
    are its children; the record's traceparent is the send span's. The send span has the
    messaging attributes and Kafka's partition and offset. No attribute holds the body, the
    location (the partition key) or the signature. Without a traceparent, the same in a
    trace of its own; a 401 is a verify span with the reason and no send span.
    """
    collected, endpoint = receiver
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    location = f"loc-{os.urandom(4).hex()}"
    body = _body(location)
    signature = sign_ed25519(ed25519_key, body)
    prefix = unique_topic("otel")
    env = serve_env(kafka_bootstrap, public_key_files, prefix, **environ)
    relay = await start(env, tmp_path, prefix=prefix)
    try:
        await until_ready(http, f"http://127.0.0.1:{relay.port}")
        url = relay.webhook_url
        headers = {"X-GHL-Signature": signature, "traceparent": TRACEPARENT}
        async with http.post(url, data=body, headers=headers) as response:
            assert response.status == 200
            answer = await response.json()
        fresh_body = _body(location + "-2")
        fresh_headers = {"X-GHL-Signature": sign_ed25519(ed25519_key, fresh_body)}
        async with http.post(url, data=fresh_body, headers=fresh_headers) as response:
            assert response.status == 200
        stranger = sign_ed25519(Ed25519PrivateKey.generate(), body)
        bad = {"X-GHL-Signature": stranger, "traceparent": f"00-{'a' * 32}-{PARENT_ID}-01"}
        async with http.post(url, data=body, headers=bad) as response:
            assert response.status == 401
        records = await consume(kafka_bootstrap, f"{prefix}.contacts", 2)
        spans = await collected.trace(TRACE_ID, 3)
        first, second = sorted(
            records, key=lambda r: dict(r.headers)["ce_id"] != answer["id"].encode()
        )
        fresh_id = dict(second.headers)["traceparent"].decode().split("-")[1]
        fresh_spans = await collected.trace(fresh_id, 3)
        rejected = await collected.trace("a" * 32, 2)
    finally:
        await relay.stop()

    spans_named = by_name(spans)
    topic = f"{prefix}.contacts"
    server_span = spans_named["POST /webhooks/hoopai"]
    verify_span = spans_named["verify signature"]
    send_span = spans_named[f"send {topic}"]
    assert server_span.kind == Span.SPAN_KIND_SERVER
    assert server_span.parent_span_id.hex() == PARENT_ID
    assert verify_span.parent_span_id == server_span.span_id
    assert send_span.parent_span_id == server_span.span_id
    assert send_span.kind == Span.SPAN_KIND_PRODUCER
    version, trace_id, span_id, flags = dict(first.headers)["traceparent"].decode().split("-")
    assert (version, trace_id, span_id) == ("00", TRACE_ID, send_span.span_id.hex())
    assert int(flags, 16) & 1  # sampled
    sent = attributes(send_span.attributes)
    assert sent == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(first.partition),
        "messaging.kafka.offset": first.offset,
    }
    assert (first.partition, first.offset) == (answer["partition"], answer["offset"])
    assert attributes(verify_span.attributes) == {
        "relay.signature.result": "verified",
        "relay.signature.scheme": "ed25519",
    }
    served = attributes(server_span.attributes)
    assert served["http.response.status_code"] == 200
    assert served["relay.outcome"] == "accepted"
    resources = [r for r, s in collected.spans if s.trace_id.hex() == TRACE_ID]
    assert all(r["service.name"] == "hoopai-relay" for r in resources)

    fresh_named = by_name(fresh_spans)
    assert fresh_named["POST /webhooks/hoopai"].parent_span_id == b""  # a root
    fresh_send = next(s for n, s in fresh_named.items() if n.startswith("send "))
    assert dict(second.headers)["traceparent"].decode().split("-")[2] == fresh_send.span_id.hex()

    rejected_named = by_name(rejected)
    assert set(rejected_named) == {"POST /webhooks/hoopai", "verify signature"}
    assert attributes(rejected_named["verify signature"].attributes) == {
        "relay.signature.result": "bad_signature"
    }
    assert (
        attributes(rejected_named["POST /webhooks/hoopai"].attributes)["http.response.status_code"]
        == 401
    )

    # Nothing of the body, the partition key or the signature in any attribute.
    secrets = (body.decode(), location, signature, stranger)
    for _, span in collected.spans:
        for value in attributes(span.attributes).values():
            assert not any(part in str(value) for part in secrets), (span.name, value)
