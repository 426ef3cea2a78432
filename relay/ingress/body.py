"""Reading a webhook body, bounded in size and time: the body or why it was refused.

The refusals (415, 413, 408, 400) happen before anything is verified, so no authentic
event is refused here: a body that is encoded, too large, trickled past the deadline or cut
short cannot be verified over the bytes HoopAI signed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from relay.metrics import Outcome


@dataclass(frozen=True, slots=True)
class Refused:
    """A body not read: the status, the outcome, the answer's extra fields."""

    status: int
    outcome: Outcome
    fields: dict[str, object] = field(default_factory=dict)
    #: close the connection after the answer rather than read (or linger on) the rest
    close: bool = True


def _too_large(max_bytes: int) -> Refused:
    """The 413, made only when it is the answer (not on every request)."""
    return Refused(413, Outcome.TOO_LARGE, {"limit": max_bytes})


async def read_body(request: web.Request, max_bytes: int, deadline: float) -> bytes | Refused:
    """The whole body as received, or why it was refused; ``deadline`` is event-loop time."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in ("", "identity"):
        # The signature covers the bytes on the wire; inflating untrusted input is a bomb.
        return Refused(415, Outcome.UNSUPPORTED_ENCODING, {"error": "content-encoding"}, False)
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        return _too_large(max_bytes)
    try:
        if request.content.is_eof():
            # Usually the whole body came with the head: no timer to arm and cancel.
            return await request.read()  # capped by the app's client_max_size
        # A body trickled in (slowloris) gets the request's deadline, like the Kafka ack.
        async with asyncio.timeout_at(deadline):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(max_bytes)
    except TimeoutError:
        return Refused(408, Outcome.BODY_TIMEOUT, {"error": Outcome.BODY_TIMEOUT.value})
    except (ConnectionError, RequestPayloadError, HttpProcessingError):
        # The peer left mid-body or broke the chunked framing: no body, nothing to verify.
        return Refused(400, Outcome.INCOMPLETE_BODY, {"error": Outcome.INCOMPLETE_BODY.value})
