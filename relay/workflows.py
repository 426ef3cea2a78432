"""Workflow sources: the ``[workflows.<name>]`` tables of the settings file.

A source is one kind of HighLevel workflow "Webhook" / "Custom Webhook" action that POSTs
to ``/webhooks/hoopai/workflows/<name>``, unsigned, with a shared-secret token. Each has:

- ``token_files`` and/or ``token_env``: where its accepted tokens are (a file's content
  without its trailing newline; an environment variable's value). Never the token itself:
  a token in the settings file is an error, so that the file can be reviewed and shared;
- ``token_header`` (default ``Authorization``, as ``Bearer <token>``) or ``token_query``;
- ``topic`` (default ``<prefix>.workflow.<name>``);
- ``key``: the dotted path of the partition key in the body (default ``location.id``;
  ``""`` for none);
- ``idempotency``: ``none`` (the default), ``digest``, or ``field`` with
  ``idempotency_field``: what ``ce_id`` is made of (relay/ingress/intake.py).

:func:`parse_sources` is pure (the table in, sources without tokens out);
:func:`load_tokens` reads the files and variables; :func:`check_sources` checks what needs
the topic prefix. Each error names the table and key, never a token.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from relay.errors import ConfigError
from relay.ingress.tokens import AUTHORIZATION, TokenSet, bad_token, without_newline

__all__ = [
    "DEFAULT_KEY",
    "TABLE",
    "Idempotency",
    "WorkflowSource",
    "check_sources",
    "dotted_path",
    "load_tokens",
    "parse_sources",
    "topic_of",
]

#: the settings file's table of sources
TABLE: Final = "workflows"
#: where HighLevel's standard Webhook action puts the location: ``location.id``
DEFAULT_KEY: Final = ("location", "id")
#: a source name: in the URL, the topic, ``ce_type`` and a metric label
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: an HTTP header name (RFC 9110 token) or a query parameter name
_FIELD_NAME_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_TOPIC_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
_KEYS: Final = frozenset(
    {
        "token_files",
        "token_env",
        "token_header",
        "token_query",
        "topic",
        "key",
        "idempotency",
        "idempotency_field",
    }
)
#: keys that would hold a token itself
_SECRET_KEYS: Final = frozenset({"token", "tokens", "secret", "password"})


class Idempotency(enum.StrEnum):
    """What a workflow record's ``ce_id`` is made of (README, "Workflow webhooks")."""

    #: a fresh id per request: two identical bodies are two events (the default)
    NONE = "none"
    #: ``sha256:<hex of the body>``: identical bodies are one event, deduplicated
    DIGEST = "digest"
    #: a body field (``idempotency_field``) the sender fills with a unique id
    FIELD = "field"


@dataclass(frozen=True, slots=True)
class WorkflowSource:
    """One ``[workflows.<name>]`` table, validated; tokens as digests only."""

    name: str
    tokens: TokenSet = field(default_factory=TokenSet, repr=False)
    token_files: tuple[Path, ...] = ()
    #: names of environment variables holding a token each
    token_env: tuple[str, ...] = ()
    #: the header carrying the token; ignored when ``token_query`` is set
    token_header: str = AUTHORIZATION
    token_query: str | None = None
    #: None: ``<prefix>.workflow.<name>``
    topic: str | None = None
    #: the partition key's dotted path in the body; () for no key
    key: tuple[str, ...] = DEFAULT_KEY
    idempotency: Idempotency = Idempotency.NONE
    idempotency_field: tuple[str, ...] = ()

    @property
    def bearer(self) -> bool:
        """Whether the token comes as ``Authorization: Bearer <token>``."""
        return self.token_query is None and self.token_header.lower() == AUTHORIZATION.lower()

    def token_location(self) -> str:
        """Where the token is read from, in words (check-config, the README)."""
        if self.token_query is not None:
            return f"query parameter {self.token_query}"
        if self.bearer:
            return f"{self.token_header}: Bearer <token>"
        return f"header {self.token_header}"


def topic_of(source: WorkflowSource, prefix: str) -> str:
    """The source's topic: its own, or ``<prefix>.workflow.<name>``."""
    return source.topic if source.topic is not None else f"{prefix}.workflow.{source.name}"


def dotted_path(where: str, raw: object, *, allow_empty: bool) -> tuple[str, ...]:
    """``"location.id"`` as ``("location", "id")``; ``""`` as () when ``allow_empty``."""
    if not isinstance(raw, str):
        raise ConfigError(f'{where}: expected a string such as "location.id"')
    if raw == "" and allow_empty:
        return ()
    parts = tuple(raw.split("."))
    if not all(parts):
        raise ConfigError(f"{where}={raw!r}: expected field names joined by dots")
    return parts


def _strings(where: str, raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise ConfigError(f"{where}: expected a list of non-empty strings")
    return tuple(raw)


def _field_name(where: str, raw: object) -> str:
    if not isinstance(raw, str) or _FIELD_NAME_RE.fullmatch(raw) is None:
        raise ConfigError(f"{where}={raw!r}: expected a header or parameter name")
    return raw


def _source(where: str, name: str, table: Mapping[str, object]) -> WorkflowSource:
    """One table, checked key by key."""
    for name_of_key in table:
        if name_of_key in _SECRET_KEYS:
            raise ConfigError(
                f"{where}.{name_of_key}: a token never goes in the settings file: "
                "name its file in token_files or its variable in token_env"
            )
        if name_of_key not in _KEYS:
            raise ConfigError(
                f"{where}: unknown key {name_of_key!r} (expected one of {sorted(_KEYS)})"
            )
    files = tuple(Path(p) for p in _strings(f"{where}.token_files", table.get("token_files", [])))
    env = _strings(f"{where}.token_env", table.get("token_env", []))
    if not files and not env:
        raise ConfigError(f"{where}: no token: set token_files (or token_env)")
    if "token_header" in table and "token_query" in table:
        raise ConfigError(f"{where}: token_header and token_query: set one of them")
    header = _field_name(f"{where}.token_header", table.get("token_header", AUTHORIZATION))
    query = table.get("token_query")
    if query is not None:
        query = _field_name(f"{where}.token_query", query)
    topic = table.get("topic")
    if topic is not None and (not isinstance(topic, str) or _TOPIC_RE.fullmatch(topic) is None):
        raise ConfigError(f"{where}.topic={topic!r}: not a valid Kafka topic name")
    key = dotted_path(f"{where}.key", table.get("key", ".".join(DEFAULT_KEY)), allow_empty=True)
    raw_mode = table.get("idempotency", Idempotency.NONE.value)
    try:
        mode = Idempotency(str(raw_mode))
    except ValueError:
        choices = ", ".join(m.value for m in Idempotency)
        raise ConfigError(f"{where}.idempotency={raw_mode!r}: expected one of {choices}") from None
    id_field: tuple[str, ...] = ()
    if mode is Idempotency.FIELD:
        if "idempotency_field" not in table:
            raise ConfigError(f'{where}: idempotency = "field" needs idempotency_field')
        id_field = dotted_path(
            f"{where}.idempotency_field", table["idempotency_field"], allow_empty=False
        )
    elif "idempotency_field" in table:
        raise ConfigError(f'{where}.idempotency_field: only with idempotency = "field"')
    return WorkflowSource(
        name=name,
        token_files=files,
        token_env=env,
        token_header=header,
        token_query=query,
        topic=topic,
        key=key,
        idempotency=mode,
        idempotency_field=id_field,
    )


def parse_sources(raw: object, where: str) -> tuple[WorkflowSource, ...]:
    """The ``[workflows]`` table of the settings file at ``where``, without tokens yet."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {TABLE} must be a table of [{TABLE}.<name>] tables")
    sources = []
    for name, table in raw.items():
        at = f"{where}: [{TABLE}.{name}]"
        if _NAME_RE.fullmatch(name) is None:
            raise ConfigError(f"{at}: a name is 1 to 63 of a-z, 0-9, _ and -, from a-z or 0-9")
        if not isinstance(table, dict):
            raise ConfigError(f"{at}: expected a table")
        sources.append(_source(at, name, table))
    return tuple(sources)


def _read_token(where: str, path: Path) -> bytes:
    """A token file's content without its trailing newline."""
    try:
        return without_newline(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: unreadable ({exc.strerror or exc})") from None


def load_tokens(
    sources: tuple[WorkflowSource, ...], environ: Mapping[str, str]
) -> tuple[WorkflowSource, ...]:
    """The sources with their tokens read from their files and variables, once, at start-up."""
    loaded: list[WorkflowSource] = []
    for source in sources:
        where = f"[{TABLE}.{source.name}]"
        found: list[tuple[str, bytes]] = []
        for path in source.token_files:
            found.append((f"token_files: {path}", _read_token(f"{where} token_files", path)))
        for variable in source.token_env:
            if variable not in environ:
                raise ConfigError(f"{where} token_env: {variable} is not set")
            found.append((f"token_env: {variable}", environ[variable].encode("utf-8")))
        for origin, token in found:
            problem = bad_token(token)
            if problem is not None:
                raise ConfigError(f"{where} {origin}: the token is {problem}")
        tokens = TokenSet.of(token for _, token in found)
        for other in loaded:
            if tokens.overlaps(other.tokens):
                raise ConfigError(
                    f"{where}: a token of this source is also one of [{TABLE}.{other.name}]: "
                    "give each source tokens of its own"
                )
        loaded.append(replace(source, tokens=tokens))
    return tuple(loaded)


def check_sources(sources: tuple[WorkflowSource, ...], prefix: str) -> None:
    """What depends on the topic prefix, and that each source has a token."""
    for source in sources:
        where = f"[{TABLE}.{source.name}]"
        topic = topic_of(source, prefix)
        if _TOPIC_RE.fullmatch(topic) is None or topic in (".", ".."):
            raise ConfigError(f"{where}: topic {topic!r} is not a valid Kafka topic name")
        if not source.tokens:
            raise ConfigError(f"{where}: no accepted token")
