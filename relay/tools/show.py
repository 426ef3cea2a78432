"""How the tools show Kafka records and answers as text: one line each, headers decoded."""

from __future__ import annotations

from typing import Any, Final

#: control characters (which could break the line or drive the terminal) as escapes; tab
#: and everything else, backslashes included, as they are: a compact JSON body stays JSON
_ESCAPES: Final = str.maketrans(
    {
        **{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, 0x85) if code != 0x09},
        0x0A: "\\n",
        0x0D: "\\r",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
    }
)


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped: one line."""
    return text.translate(_ESCAPES)


def header(record: Any, name: str) -> str | None:
    """A record header as text (``ce_id``, ``ce_type``, ...), or None when absent."""
    for key, value in record.headers:
        if key == name:
            return bytes(value).decode("utf-8", "replace")
    return None
