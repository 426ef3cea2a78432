"""Shared-secret tokens of the workflow sources: where a request carries one, and the check.

HighLevel's workflow "Webhook" actions are not signed: the only proof of origin is a
secret the user typed into the action, as a header or a query parameter. Pure functions.

The check compares the SHA-256 digest of what was presented with the digest of every
accepted token, all of them, with :func:`hmac.compare_digest` and no early exit:

- digests have one length, so neither a token's length nor its content moves the time of
  a comparison (``compare_digest`` itself stops early on unequal lengths);
- hashing the presented value costs time in its own length only, which the sender knows;
- a missing token is checked the same way (as the empty string, which no accepted token
  is), so missing, wrong and malformed cost the same and are answered alike.

Only digests are kept after start-up: the settings, and so a log line or a repr, cannot
show a token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "AUTHORIZATION",
    "MAX_TOKEN_BYTES",
    "MIN_TOKEN_BYTES",
    "TokenSet",
    "bad_token",
    "from_header",
    "from_query",
    "without_newline",
]

#: the default header; its value is ``Bearer <token>`` (RFC 6750)
AUTHORIZATION: Final = "Authorization"
#: shortest accepted token: 128 bits of hex, as `openssl rand -hex 16` writes
MIN_TOKEN_BYTES: Final = 16
#: longest accepted token; a header line is capped at 8190 bytes anyway
MAX_TOKEN_BYTES: Final = 4096
#: visible ASCII only: what a header value or a query parameter carries without escaping
#: ambiguity, and nothing a copy-paste adds unseen (spaces, tabs, line ends)
_TOKEN_RE: Final = re.compile(rb"[!-~]+")
_BEARER_RE: Final = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(.*)", re.DOTALL)
_NOTHING: Final = b""


def without_newline(content: bytes) -> bytes:
    """A token file's content without its trailing newline (``echo`` and editors add one)."""
    for newline in (b"\r\n", b"\n"):
        if content.endswith(newline):
            return content[: -len(newline)]
    return content


def bad_token(token: bytes) -> str | None:
    """Why ``token`` cannot be an accepted token (never quoting it), or None when it can."""
    if not MIN_TOKEN_BYTES <= len(token) <= MAX_TOKEN_BYTES:
        return f"{len(token)} bytes, expected {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES}"
    if _TOKEN_RE.fullmatch(token) is None:
        return "contains a space, a control character or a non-ASCII byte"
    return None


@dataclass(frozen=True, slots=True)
class TokenSet:
    """The accepted tokens of one source, as SHA-256 digests only."""

    digests: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, tokens: Iterable[bytes]) -> TokenSet:
        """The set accepting each of ``tokens`` (checked by the caller with :func:`bad_token`)."""
        return cls(tuple(hashlib.sha256(token).digest() for token in tokens))

    def __len__(self) -> int:
        return len(self.digests)

    def overlaps(self, other: TokenSet) -> bool:
        """Whether a token is in both sets (a configuration mistake: one secret, two sources)."""
        return bool(set(self.digests) & set(other.digests))

    def accepts(self, presented: bytes | None) -> bool:
        """Whether ``presented`` is one of the tokens, in a time independent of its content."""
        candidate = hashlib.sha256(_NOTHING if presented is None else presented).digest()
        matched = 0
        for digest in self.digests:  # every one of them: no early exit on a match
            matched |= hmac.compare_digest(candidate, digest)
        # The empty string is never accepted (bad_token refuses it at start-up); checked
        # after the loop, so that a missing token took the same path as a wrong one.
        return bool(matched) and bool(presented)


def from_header(values: Sequence[str], *, bearer: bool) -> bytes | None:
    """The token in a header's values: its only value, or ``Bearer <token>`` with ``bearer``.

    None when the header is absent, sent twice (which of the two was meant is unknowable),
    or without the ``Bearer`` scheme where one is expected.
    """
    if len(values) != 1:
        return None
    value = values[0]
    if bearer:
        found = _BEARER_RE.fullmatch(value)
        if found is None:
            return None
        value = found[1]
    return value.encode("utf-8", "surrogateescape")


def from_query(values: Sequence[str]) -> bytes | None:
    """The token in a query parameter's (decoded) values: its only value, else None."""
    if len(values) != 1:
        return None
    return values[0].encode("utf-8", "surrogateescape")
