"""Hostile requests over bare sockets: each gets a bounded answer. The in-process tier.

The relay runs with no Kafka behind it (tests/inprocess.py): what the handler hands on is
recorded, so "nothing produced" is "nothing delivered". No Java; these run in seconds.
The table in docs/reliability.md ("Hostile input") lists each case with its answer, its
metric and its bound. That a refused request reaches no topic of a real broker is proven
once in test_ingress.py (test_forgeries_get_401_and_produce_nothing).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from relay import appkeys
from relay.ingress.limits import LINGER_S
from relay.tools.deliveries import as_delivery, sign_ed25519, sign_rsa
from tests import rawhttp
from tests.inprocess import delivered
from tests.rawhttp import Reply
from tests.relayutil import RunningRelay, StartRelay, post


@pytest.fixture
async def relay(inprocess: RunningRelay) -> RunningRelay:
    """In this module the relay is the in-process one: no broker behind it."""
    return inprocess


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


async def test_header_slowloris_is_closed_at_the_idle_timeout(start_inprocess: StartRelay) -> None:
    """A request head trickled in, byte by byte, is cut at http_idle_timeout_s, unanswered."""
    relay = await start_inprocess(http_idle_timeout_s=1.0)
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
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """300 connections that send nothing are closed at the idle timeout; a delivery passes."""
    relay = await start_inprocess(http_idle_timeout_s=1.5)
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
    start_inprocess: StartRelay, name: str, declared: int, sent: list[bytes], pause: float
) -> None:
    """A body that does not arrive within the request's deadline: 408, then the close."""
    relay = await start_inprocess(ack_timeout_ms=1000)
    head = rawhttp.request(None, [(b"X-GHL-Signature", b"x")], content_length=declared)
    wait = 1 + LINGER_S + SLACK_S  # the deadline, the linger, a loaded machine
    reply = await rawhttp.exchange(port_of(relay), [head, *sent], pause=pause, wait=wait)
    assert (reply.status, reply.closed) == (408, True), name
    assert outcomes(relay, "body_timeout") == 1
    assert responses(relay, 408) == 1


async def test_peer_leaving_mid_body_is_counted(start_inprocess: StartRelay) -> None:
    """A connection closed half-way through its body: outcome incomplete_body, nothing kept."""
    relay = await start_inprocess()
    head = rawhttp.request(None, [(b"X-GHL-Signature", b"x")], content_length=500)
    _, writer = await asyncio.open_connection(rawhttp.HOST, port_of(relay))
    writer.write(head + b'{"half":')
    await writer.drain()
    writer.close()
    async with asyncio.timeout(SLACK_S):
        while outcomes(relay, "incomplete_body") < 1:
            await asyncio.sleep(0.02)


async def test_broken_chunked_framing_gets_400(start_inprocess: StartRelay) -> None:
    """A chunk size that is not hex: 400 incomplete_body, the connection closed."""
    relay = await start_inprocess()
    head = rawhttp.request(None, [(b"Transfer-Encoding", b"chunked"), (b"X-GHL-Signature", b"x")])
    reply = await rawhttp.exchange(port_of(relay), [head, b"4\r\n{}{}\r\nzz\r\n"])
    assert reply.status == 400
    assert reply.closed
    assert responses(relay, 400) == 1


async def test_endless_chunked_body_is_cut_at_the_cap(start_inprocess: StartRelay) -> None:
    """Chunks sent without end: 413 once past max_body_bytes, then the relay stops reading."""
    relay = await start_inprocess(max_body_bytes=64 * 1024)
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
    start_inprocess: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    name: str,
    headers: list[rawhttp.Header],
) -> None:
    """Heads aiohttp's parser refuses: 400 from the server itself, counted, closed, not produced."""
    relay = await start_inprocess()
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
    assert delivered(relay) == []


async def test_headers_up_to_the_limit_pass(
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A delivery carrying as many headers as a chain of proxies adds is still accepted."""
    relay = await start_inprocess()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-proxied"})
    extra = [(b"X-Proxy-%d" % i, b"v" * 1000) for i in range(24)]  # 24 + 5 of our own <= 32
    reply = await rawhttp.exchange(
        port_of(relay), [rawhttp.request(body, [*signed(ed25519_key, body), *extra])]
    )
    assert reply.status == 200, reply


async def test_body_longer_than_declared_keeps_only_the_declared_bytes(
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """Bytes past Content-Length are a malformed next request (400), never part of the body."""
    relay = await start_inprocess()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-longer"})
    # The signature covers the whole body; the head declares a prefix of it.
    data = rawhttp.request(body, signed(ed25519_key, body), content_length=len(body) - 10)
    first = await rawhttp.exchange(port_of(relay), [data])
    # Together in one segment, the parser refuses the whole (400); apart, the prefix fails
    # its signature (401) and the rest is a malformed request.
    assert first.status in (400, 401)
    assert first.closed
    assert delivered(relay) == []


@pytest.mark.parametrize("encoding", [b"gzip", b"GZIP", b"deflate", b"br", b"identity, gzip", b"x"])
async def test_any_content_encoding_is_415(
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey, encoding: bytes
) -> None:
    """Every Content-Encoding but identity: 415 before the body is read, nothing produced."""
    relay = await start_inprocess()
    body = gzip.compress(b"{" * 100_000)  # a small bomb: 100 kB inflated from ~200 bytes
    headers = [*signed(ed25519_key, body), (b"Content-Encoding", encoding)]
    reply = await rawhttp.exchange(port_of(relay), [rawhttp.request(body, headers)])
    assert reply.status == 415
    assert outcomes(relay, "unsupported_encoding") == 1
    assert delivered(relay) == []


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
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A signature header given twice, in any case or order: 401 ambiguous, nothing produced."""
    relay = await start_inprocess()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-dup"})
    for name, headers in _duplicates(ed25519_key, body):
        reply = await rawhttp.exchange(port_of(relay), [rawhttp.request(body, headers)])
        assert reply.status == 401, name
        assert b'"ambiguous"' in reply.body, name
    assert sample(relay, "relay_unauthenticated_requests", reason="ambiguous") == 4
    assert delivered(relay) == []


async def test_replayed_signature_on_another_body_is_401(
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A genuine signature lifted from one delivery onto another: 401 bad_signature."""
    relay = await start_inprocess()
    genuine = as_delivery({"type": "ContactCreate", "locationId": "loc-a"})
    forged = genuine.replace(b"loc-a", b"loc-b")
    reply = await rawhttp.exchange(
        port_of(relay), [rawhttp.request(forged, signed(ed25519_key, genuine))]
    )
    assert reply.status == 401
    assert sample(relay, "relay_unauthenticated_requests", reason="bad_signature") == 1
    assert delivered(relay) == []


async def test_every_answer_is_counted_by_status(
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """relay_http_responses counts the handler's answers and the router's 404/405 alike."""
    relay = await start_inprocess()
    port = port_of(relay)
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-count"})
    replies: list[Reply] = [
        await rawhttp.exchange(port, [rawhttp.request(body, signed(ed25519_key, body))]),
        await rawhttp.exchange(port, [rawhttp.request(None, method=b"GET")]),
        await rawhttp.exchange(port, [rawhttp.request(b"{}", path=b"/nope")]),
    ]
    assert [r.status for r in replies] == [200, 405, 404]
    assert [responses(relay, s) for s in (200, 405, 404)] == [1, 1, 1]
    assert [r.value for r in delivered(relay)] == [body]


@pytest.mark.parametrize("value", [b"\x80", b"\xff\xfe", b"!", b"100-continue-please"])
async def test_unknown_expect_is_417_not_500(
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey, value: bytes
) -> None:
    """An Expect other than 100-continue, even not UTF-8: 417, counted, nothing produced."""
    relay = await start_inprocess()
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-expect"})
    data = rawhttp.request(body, [*signed(ed25519_key, body), (b"Expect", value)])
    reply = await rawhttp.exchange(port_of(relay), [data])
    assert reply.status == 417
    assert responses(relay, 417) == 1
    assert responses(relay, 500) == 0
    assert delivered(relay) == []


async def test_expect_100_continue_still_works(
    start_inprocess: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A sender that waits for 100 Continue before its body gets it, then its 200."""
    relay = await start_inprocess()
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


# --- answered before anything is delivered (from test_ingress.py) ---


async def test_legacy_rsa_refused_by_default(
    http: aiohttp.ClientSession, relay: RunningRelay, rsa_key: RSAPrivateKey
) -> None:
    """With legacy RSA off (the default), a valid X-WH-Signature alone gets 401."""
    body = as_delivery({"type": "TaskCreate", "locationId": "loc-rsa"})
    status, answer, _ = await post(http, relay, body, X_WH_Signature=sign_rsa(rsa_key, body))
    assert (status, answer["reason"]) == (401, "legacy_disabled")


async def test_repeated_signature_header_is_refused(
    http: aiohttp.ClientSession, relay: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """Two X-GHL-Signature headers on one request are ambiguous: 401."""
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-dup"})
    good = sign_ed25519(ed25519_key, body)
    headers = [("X-GHL-Signature", good), ("X-GHL-Signature", good)]
    async with http.post(relay.webhook_url, data=body, headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["reason"] == "ambiguous"


async def test_body_over_the_declared_cap_is_413(
    http: aiohttp.ClientSession, start_inprocess: StartRelay
) -> None:
    """A Content-Length over the cap answers 413 without the body being read."""
    relay = await start_inprocess(max_body_bytes=1024)
    body = b"x" * 4096
    status, answer, response = await post(http, relay, body, X_GHL_Signature="x")
    assert (status, answer["outcome"], answer["limit"]) == (413, "too_large", 1024)
    assert response.headers.get("Connection", "").lower() == "close"


async def test_chunked_body_past_the_cap_is_413(
    http: aiohttp.ClientSession, start_inprocess: StartRelay
) -> None:
    """A chunked body (no Content-Length) that grows past the cap answers 413."""
    relay = await start_inprocess(max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    async with http.post(relay.webhook_url, data=chunks()) as response:
        assert response.status == 413
        assert (await response.json())["outcome"] == "too_large"


async def test_encoded_body_is_415(
    http: aiohttp.ClientSession, relay: RunningRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A gzip body, even correctly signed, answers 415 and produces nothing."""
    body = gzip.compress(as_delivery({"type": "ContactCreate", "locationId": "loc-gz"}))
    status, answer, _ = await post(
        http, relay, body, X_GHL_Signature=sign_ed25519(ed25519_key, body), Content_Encoding="gzip"
    )
    assert (status, answer["outcome"]) == (415, "unsupported_encoding")


async def test_wrong_method_and_path(http: aiohttp.ClientSession, relay: RunningRelay) -> None:
    """GET on the webhook path is 405; an unknown path is 404; /healthz answers."""
    async with http.get(relay.webhook_url) as response:
        assert response.status == 405
    async with http.post(f"{relay.url}/nope", data=b"{}") as response:
        assert response.status == 404
    async with http.get(f"{relay.url}/healthz") as response:
        assert response.status == 200


async def test_oversize_content_length_gets_413_without_100_continue(
    start_inprocess: StartRelay,
) -> None:
    """``Expect: 100-continue`` with a Content-Length over the cap: 413 first, no go-ahead.

    curl waits for ``100 Continue`` before its body; sending it for a body the relay
    refuses unread only made the client start uploading what gets a 413.
    """
    relay = await start_inprocess(max_body_bytes=1000)
    head = rawhttp.request(None, [(b"Expect", b"100-continue")], content_length=1001, close=False)
    reply = await rawhttp.exchange(port_of(relay), [head], wait=SLACK_S)
    assert reply.status == 413, reply
    assert reply.closed
    assert outcomes(relay, "too_large") == 1
