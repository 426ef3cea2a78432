"""Hostile requests over bare sockets against a running relay: each gets a bounded answer.

The table in docs/reliability.md ("Hostile input") lists each case with its answer, its
metric and its bound. Cases already covered in test_ingress.py (a Content-Length over the
cap, a short chunked body past the cap, one gzip body, two identical signature headers,
signatures by another key or for another body) are not repeated here.
"""

from __future__ import annotations

import asyncio
import gzip
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay import appkeys
from relay.ingress.limits import LINGER_S
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests import rawhttp
from tests.kafkautil import consume, consume_all
from tests.rawhttp import Reply
from tests.relayutil import RunningRelay, StartRelay

#: slack for a loaded 2-core machine on top of a bound the relay promises
SLACK_S = 3.0


def port_of(relay: RunningRelay) -> int:
    """The relay's webhook port."""
    port = urlsplit(relay.url).port
    assert port is not None
    return port


def sample(relay: RunningRelay, name: str, **labels: str) -> float:
    """A counter's value in the relay's registry (0 when the series does not exist yet)."""
    value = relay.app[appkeys.METRICS].registry.get_sample_value(f"{name}_total", labels)
    return value or 0.0


def responses(relay: RunningRelay, status: int) -> float:
    """How many answers of ``status`` the relay's HTTP server wrote."""
    return sample(relay, "relay_http_responses", status=str(status))


def outcomes(relay: RunningRelay, outcome: str) -> float:
    """How many webhook requests ended with ``outcome`` (any event type)."""
    return sample(relay, "relay_requests", outcome=outcome, event_type="none")


def signed(key: Ed25519PrivateKey, body: bytes) -> list[rawhttp.Header]:
    """The X-GHL-Signature header for ``body``."""
    return [(b"X-GHL-Signature", sign_ed25519(key, body).encode())]


def bootstrap(relay: RunningRelay) -> str:
    """The relay's Kafka bootstrap servers."""
    return ",".join(relay.settings.kafka_bootstrap_servers)


async def assert_nothing_produced(relay: RunningRelay, key: Ed25519PrivateKey) -> None:
    """A sentinel is the first record of the contacts topic: no forged request got there."""
    sentinel = as_delivery({"type": "ContactCreate", "locationId": "loc-sentinel"})
    reply = await rawhttp.exchange(
        port_of(relay), [rawhttp.request(sentinel, signed(key, sentinel))]
    )
    assert reply.status == 200, reply
    (record,) = await consume(bootstrap(relay), relay.topic("contacts"), 1)
    assert (record.value, record.offset) == (sentinel, 0)


async def test_header_slowloris_is_closed_at_the_idle_timeout(start_relay: StartRelay) -> None:
    """A request head trickled in, byte by byte, is cut at http_idle_timeout_s, unanswered."""
    relay = await start_relay(http_idle_timeout_s=1.0)
    head = rawhttp.request(None, [(b"X-Slow", b"1" * 40)], content_length=2)
    # 0.1 s a byte: the whole head would take ~10 s, ten times the idle timeout.
    reply = await rawhttp.exchange(
        port_of(relay), [bytes([b]) for b in head], pause=0.1, wait=1.0 + SLACK_S
    )
    assert reply.status is None
    assert reply.closed
    assert responses(relay, 400) == 0  # closed, not answered
    assert rawhttp.server_connections(port_of(relay)) == 0


async def test_idle_connections_are_closed_and_the_relay_still_answers(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """300 connections that send nothing are closed at the idle timeout; a delivery passes."""
    relay = await start_relay(http_idle_timeout_s=1.5)
    port = port_of(relay)
    opened = [await asyncio.open_connection(rawhttp.HOST, port) for _ in range(300)]
    try:
        body = as_delivery({"type": "ContactCreate", "locationId": "loc-idle"})
        reply = await rawhttp.exchange(port, [rawhttp.request(body, signed(ed25519_key, body))])
        assert reply.status == 200, reply
        async with asyncio.timeout(1.5 + SLACK_S):
            eofs = await asyncio.gather(*(reader.read() for reader, _ in opened))
        assert eofs == [b""] * len(opened)
        assert rawhttp.server_connections(port) == 0
    finally:
        for _, writer in opened:
            writer.close()


@pytest.mark.parametrize(
    ("name", "declared", "sent", "pause"),
    [
        ("trickled", 200, [b"{"] * 200, 0.05),  # 10 s of body, for a 1 s deadline
        ("shorter than declared", 200, [b'{"a":1}'], 0.0),
    ],
)
async def test_slow_or_short_body_gets_408_at_the_deadline(
    start_relay: StartRelay, name: str, declared: int, sent: list[bytes], pause: float
) -> None:
    """A body that does not arrive within the request's deadline: 408, then the close."""
    relay = await start_relay(ack_timeout_ms=1000)
    head = rawhttp.request(None, [(b"X-GHL-Signature", b"x")], content_length=declared)
    wait = 1 + LINGER_S + SLACK_S  # the deadline, the linger, a loaded machine
    reply = await rawhttp.exchange(port_of(relay), [head, *sent], pause=pause, wait=wait)
    assert (reply.status, reply.closed) == (408, True), name
    assert outcomes(relay, "body_timeout") == 1
    assert responses(relay, 408) == 1


async def test_peer_leaving_mid_body_is_counted(start_relay: StartRelay) -> None:
    """A connection closed half-way through its body: outcome incomplete_body, nothing kept."""
    relay = await start_relay()
    head = rawhttp.request(None, [(b"X-GHL-Signature", b"x")], content_length=500)
    _, writer = await asyncio.open_connection(rawhttp.HOST, port_of(relay))
    writer.write(head + b'{"half":')
    await writer.drain()
    writer.close()
    async with asyncio.timeout(SLACK_S):
        while outcomes(relay, "incomplete_body") < 1:
            await asyncio.sleep(0.02)


async def test_broken_chunked_framing_gets_400(start_relay: StartRelay) -> None:
    """A chunk size that is not hex: 400 incomplete_body, the connection closed."""
    relay = await start_relay()
    head = rawhttp.request(None, [(b"Transfer-Encoding", b"chunked"), (b"X-GHL-Signature", b"x")])
    reply = await rawhttp.exchange(port_of(relay), [head, b"4\r\n{}{}\r\nzz\r\n"])
    assert reply.status == 400
    assert reply.closed
    assert responses(relay, 400) == 1


async def test_endless_chunked_body_is_cut_at_the_cap(start_relay: StartRelay) -> None:
    """Chunks sent without end: 413 once past max_body_bytes, then the relay stops reading."""
    relay = await start_relay(max_body_bytes=64 * 1024)
    head = rawhttp.request(None, [(b"Transfer-Encoding", b"chunked"), (b"X-GHL-Signature", b"x")])
    chunk = b"%x\r\n%s\r\n" % (8192, b"z" * 8192)
    # Up to 8 MiB offered; the relay must answer and close long before that.
    reply = await rawhttp.exchange(port_of(relay), [head] + [chunk] * 1024, wait=SLACK_S)
    assert (reply.status, reply.closed) == (413, True)
    assert outcomes(relay, "too_large") == 1


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("one header over 8190 bytes", [(b"X-Big", b"b" * 9000)]),
        ("more headers than http_max_headers", [(b"X-N%d" % i, b"1") for i in range(40)]),
        ("request line over 8190 bytes", []),
        ("Content-Length twice", [(b"Content-Length", b"2")]),
        ("Content-Length and chunked", [(b"Transfer-Encoding", b"chunked")]),
        ("header without a colon", [(b"X-No-Colon", b"")]),
    ],
)
async def test_malformed_heads_get_400_and_a_close(
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    name: str,
    headers: list[rawhttp.Header],
) -> None:
    """Heads aiohttp's parser refuses: 400 from the server itself, counted, closed, not produced."""
    relay = await start_relay()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-malformed"})
    path = b"/webhooks/hoopai?" + b"q" * 9000 if name.startswith("request line") else None
    data = rawhttp.request(
        body, [*signed(ed25519_key, body), *headers], path=path or b"/webhooks/hoopai"
    )
    if name == "header without a colon":
        data = data.replace(b"X-No-Colon: \r\n", b"X-No-Colon\r\n")
    reply = await rawhttp.exchange(port_of(relay), [data])
    assert (reply.status, reply.closed) == (400, True), name
    assert responses(relay, 400) == 1
    await assert_nothing_produced(relay, ed25519_key)


async def test_headers_up_to_the_limit_pass(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A delivery carrying as many headers as a chain of proxies adds is still accepted."""
    relay = await start_relay()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-proxied"})
    extra = [(b"X-Proxy-%d" % i, b"v" * 1000) for i in range(24)]  # 24 + 5 of our own <= 32
    reply = await rawhttp.exchange(
        port_of(relay), [rawhttp.request(body, [*signed(ed25519_key, body), *extra])]
    )
    assert reply.status == 200, reply


async def test_body_longer_than_declared_keeps_only_the_declared_bytes(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """Bytes past Content-Length are a malformed next request (400), never part of the body."""
    relay = await start_relay()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-longer"})
    # The signature covers the whole body; the head declares a prefix of it.
    data = rawhttp.request(body, signed(ed25519_key, body), content_length=len(body) - 10)
    first = await rawhttp.exchange(port_of(relay), [data])
    # Together in one segment, the parser refuses the whole (400); apart, the prefix fails
    # its signature (401) and the rest is a malformed request.
    assert first.status in (400, 401)
    assert first.closed
    await assert_nothing_produced(relay, ed25519_key)


@pytest.mark.parametrize("encoding", [b"gzip", b"GZIP", b"deflate", b"br", b"identity, gzip", b"x"])
async def test_any_content_encoding_is_415(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey, encoding: bytes
) -> None:
    """Every Content-Encoding but identity: 415 before the body is read, nothing produced."""
    relay = await start_relay()
    body = gzip.compress(b"{" * 100_000)  # a small bomb: 100 kB inflated from ~200 bytes
    headers = [*signed(ed25519_key, body), (b"Content-Encoding", encoding)]
    reply = await rawhttp.exchange(port_of(relay), [rawhttp.request(body, headers)])
    assert reply.status == 415
    assert outcomes(relay, "unsupported_encoding") == 1
    await assert_nothing_produced(relay, ed25519_key)


async def test_gzip_bytes_without_the_header_are_kept_as_sent(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """Signed gzip bytes without Content-Encoding are never inflated: dead-lettered verbatim."""
    relay = await start_relay()
    body = gzip.compress(as_delivery({"type": "ContactCreate", "locationId": "loc-gz"}))
    reply = await rawhttp.exchange(
        port_of(relay), [rawhttp.request(body, signed(ed25519_key, body))]
    )
    assert reply.status == 200, reply
    (record,) = await consume(bootstrap(relay), relay.topic("deadletter"), 1)
    assert record.value == body


def _duplicates(key: Ed25519PrivateKey, body: bytes) -> list[tuple[str, list[rawhttp.Header]]]:
    good = sign_ed25519(key, body).encode()
    bad = sign_ed25519(Ed25519PrivateKey.generate(), body).encode()
    return [
        ("good then bad", [(b"X-GHL-Signature", good), (b"X-GHL-Signature", bad)]),
        ("bad then good", [(b"X-GHL-Signature", bad), (b"X-GHL-Signature", good)]),
        ("other case", [(b"x-ghl-signature", good), (b"X-GHL-SIGNATURE", good)]),
        (
            "legacy twice",
            [(b"X-GHL-Signature", good), (b"X-WH-Signature", b"a"), (b"x-wh-signature", b"b")],
        ),
    ]


async def test_repeated_signature_headers_are_401_ambiguous(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A signature header given twice, in any case or order: 401 ambiguous, nothing produced."""
    relay = await start_relay()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-dup"})
    for name, headers in _duplicates(ed25519_key, body):
        reply = await rawhttp.exchange(port_of(relay), [rawhttp.request(body, headers)])
        assert reply.status == 401, name
        assert b'"ambiguous"' in reply.body, name
    assert sample(relay, "relay_unauthenticated_requests", reason="ambiguous") == 4
    await assert_nothing_produced(relay, ed25519_key)


async def test_replayed_signature_on_another_body_is_401(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A genuine signature lifted from one delivery onto another: 401 bad_signature."""
    relay = await start_relay()
    genuine = as_delivery({"type": "ContactCreate", "locationId": "loc-a"})
    forged = genuine.replace(b"loc-a", b"loc-b")
    reply = await rawhttp.exchange(
        port_of(relay), [rawhttp.request(forged, signed(ed25519_key, genuine))]
    )
    assert reply.status == 401
    assert sample(relay, "relay_unauthenticated_requests", reason="bad_signature") == 1
    await assert_nothing_produced(relay, ed25519_key)


async def test_every_answer_is_counted_by_status(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """relay_http_responses counts the handler's answers and the router's 404/405 alike."""
    relay = await start_relay()
    port = port_of(relay)
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-count"})
    replies: list[Reply] = [
        await rawhttp.exchange(port, [rawhttp.request(body, signed(ed25519_key, body))]),
        await rawhttp.exchange(port, [rawhttp.request(None, method=b"GET")]),
        await rawhttp.exchange(port, [rawhttp.request(b"{}", path=b"/nope")]),
    ]
    assert [r.status for r in replies] == [200, 405, 404]
    assert [responses(relay, s) for s in (200, 405, 404)] == [1, 1, 1]
    records = await consume_all(bootstrap(relay), relay.topic("contacts"))
    assert [r.value for r in records] == [body]


@pytest.mark.parametrize("value", [b"\x80", b"\xff\xfe", b"!", b"100-continue-please"])
async def test_unknown_expect_is_417_not_500(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey, value: bytes
) -> None:
    """An Expect other than 100-continue, even not UTF-8: 417, counted, nothing produced."""
    relay = await start_relay()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-expect"})
    data = rawhttp.request(body, [*signed(ed25519_key, body), (b"Expect", value)])
    reply = await rawhttp.exchange(port_of(relay), [data])
    assert reply.status == 417
    assert responses(relay, 417) == 1
    assert responses(relay, 500) == 0
    await assert_nothing_produced(relay, ed25519_key)


async def test_expect_100_continue_still_works(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A sender that waits for 100 Continue before its body gets it, then its 200."""
    relay = await start_relay()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-continue"})
    head = rawhttp.request(None, [*signed(ed25519_key, body), (b"Expect", b"100-continue")],
                           content_length=len(body))  # fmt: skip
    reader, writer = await asyncio.open_connection(rawhttp.HOST, port_of(relay))
    try:
        writer.write(head)
        async with asyncio.timeout(SLACK_S):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        async with asyncio.timeout(SLACK_S):
            answer = await reader.read()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
