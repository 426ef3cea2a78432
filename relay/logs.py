"""Structured logs: one JSON object per line on stdout.

Call sites pass context with ``extra={...}``; those fields become keys of the line.
Bodies and signatures are never passed: the relay logs what happened, not what was sent.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

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


def configure(level: str) -> None:
    """Send every log record, as JSON lines, to stdout at ``level``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())
