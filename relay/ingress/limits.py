"""The HTTP server's limits against hostile clients: options for ``web.AppRunner``.

aiohttp's defaults suit a server behind a trusted proxy, not one facing the internet:
a connection that never completes its request head is kept 3,630 s, and one request
head may buffer 128 headers of 8 KiB each (about 2 MiB of memory per slow connection,
measured). Here the idle timer (which also runs while a head is being trickled in)
and the header count come from the settings; a trickled *body* is bounded in the
handler by the request's deadline (408). docs/reliability.md lists every case.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from relay import appkeys
from relay.metrics import Children, Countable
from relay.settings import Settings

log = logging.getLogger(__name__)

#: aiohttp's limit on one header (name and value together) and on the request line;
#: kept: the largest real header, an RSA-4096 signature, is 684 bytes
MAX_FIELD_BYTES = 8190
#: after an answer that refused a body (408, 413), how long the rest is read and dropped
#: before the close, so the client reads the answer rather than a reset (aiohttp: 10 s)
LINGER_S = 2.0


async def expect_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` as aiohttp does; any other value 417, without echoing it.

    aiohttp's own handler echoes the value into its 417 text and answers 500 when that
    value is not UTF-8 (found by tests/test_fuzz.py). A declared ``Content-Length`` over
    ``max_body_bytes`` gets no ``100 Continue``: the handler's 413 is the first answer.
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="unsupported Expect")
    settings = request.app.get(appkeys.SETTINGS)
    declared = request.content_length
    if settings is not None and declared is not None and declared > settings.max_body_bytes:
        # No "go ahead" for a body the handler refuses unread: it answers 413 at once, and
        # the client never starts sending it.
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer proper has not started yet


def response_counter(counter: Children[Countable]) -> type[AbstractAccessLogger]:
    """An access "logger" that counts every answer by status instead of logging it."""

    class ResponseCounter(AbstractAccessLogger):
        """Counts answers, including aiohttp's own for requests that never reach a handler."""

        def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
            """Count one answer."""
            counter(str(response.status)).inc()

    return ResponseCounter


def runner_options(app: web.Application) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner(app, ...)``: timeouts, header limits, counting."""
    settings = app.get(appkeys.SETTINGS) or Settings()
    options: dict[str, Any] = {
        # Armed at connect and after each answer, and only disarmed by a complete request
        # head: it closes idle keep-alive connections and header slowloris alike.
        "keepalive_timeout": settings.http_idle_timeout_s,
        "max_headers": settings.http_max_headers,
        "max_field_size": MAX_FIELD_BYTES,
        "max_line_size": MAX_FIELD_BYTES,
        "lingering_time": LINGER_S,
        "access_log": None,
    }
    metrics = app.get(appkeys.METRICS)
    if metrics is not None:
        options["access_log"] = log  # never written to: the class below only counts
        options["access_log_class"] = response_counter(metrics.http_responses_by)
    return options
