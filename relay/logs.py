"""Structured logs: one JSON object per line on stdout.

Call sites pass context with ``extra={...}``; those fields become keys of the line.
Bodies and signatures are never passed: the relay logs what happened, not what was sent.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson
from aiohttp.http_exceptions import HttpProcessingError

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format a record as a single JSON line: time, level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            # Tells apart the workers of `relay serve --workers N`, which share stdout.
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse at ERROR, with a traceback: one INFO line.

    Anyone can send garbage to the port, so those tracebacks would let them flood the
    logs; the 400s are counted in ``relay_http_responses_total{status="400"}`` anyway.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote a parse error to one line; let every other record through unchanged."""
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "malformed request", ()
        record.exc_info, record.exc_text = None, None
        record.error = type(error).__name__
        return logging.getLogger().isEnabledFor(logging.INFO)


#: aiokafka's messages about conditions the relay reports itself, as state changes: a broker
#: it cannot reach (readiness: "kafka unreachable", then "kafka reachable again" with the
#: outage's length), a topic not yet in its metadata (it is fetched, and the send goes on),
#: a group coordinator not yet elected (``relay tail`` waits for it), a produce request the
#: library retries. The library repeats
#: them at ERROR for as long as the condition lasts: about 2 lines a second per client in
#: an outage, which buried the relay's own lines.
LIBRARY_REPEATS: Final = frozenset(
    {
        "Unable connect to node with id %s: %s",
        'Unable connect to "%s:%s": %s',
        "Unable to update metadata from %s",
        "Unable to request metadata from node with id %s: %r",
        'Unable to request metadata from "%s:%s": %s',
        "Topic %s not found in cluster metadata",
        # A batch the library retries itself (a topic just created has no leader yet, a
        # leader moved); if the retries fail, the relay logs and counts that record.
        "Got error produce response on topic-partition %s, retrying. Error: %s",
        "Group Coordinator Request failed: %s",
        "Marking the coordinator dead (node %s)for group %s.",
        "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid",
        "Heartbeat failed for group %s because it is rebalancing",
        "Error sending %s to node %s [%s] -- marking coordinator dead",
        "Heartbeat send request failed: %s. Will retry.",
        "Failed fetch messages from %s: %s",
        "Failed fetch offsets from %s: %s",
        "Cannot send %r to %s: %r",
        "Could not send %r: %r",
    }
)


class LibraryRepeats(logging.Filter):
    """Counts aiokafka's :data:`LIBRARY_REPEATS` instead of printing them (DEBUG shows them).

    Any other aiokafka line passes unchanged: an error the relay does not track stays loud.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Count and drop a repeat (demoted to DEBUG at that level); pass the rest."""
        if not record.name.startswith("aiokafka") or record.msg not in LIBRARY_REPEATS:
            return True
        if record.levelno <= logging.DEBUG:
            return True
        self.counts[str(record.msg)] += 1
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)

    def take(self) -> int:
        """How many repeats were counted since the last call; starts the count again."""
        total = sum(self.counts.values())
        self.counts.clear()
        return total


def library_repeats() -> LibraryRepeats | None:
    """The :class:`LibraryRepeats` of the installed handler, if :func:`configure` ran."""
    for handler in logging.getLogger().handlers:
        for found in handler.filters:
            if isinstance(found, LibraryRepeats):
                return found
    return None


def configure(level: str) -> None:
    """Send every log record, as JSON lines, to stdout at ``level``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LibraryRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())


def configure_tool(name: str, stream: TextIO = sys.stderr) -> None:
    """For a command that is not ``serve`` (``relay tail``): warnings as plain lines.

    The library's repeats are counted and dropped as for ``serve``, so that a tail on a
    broker still electing its group coordinator prints records, not coordinator errors.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"relay {name}: %(levelname)s %(message)s"))
    handler.addFilter(LibraryRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
