"""Which Kafka topic a webhook body goes to: pure functions over the parsed payload.

What a body is comes from the event catalogue (``relay/ingress/catalogue.toml``, through
:mod:`relay.ingress.catalogue`): every known event has a family, and a family a default topic. The
operator's ``config/routes.toml`` overrides those topics (see the comments there). Nothing
here does I/O except :func:`load_routes` reading those files, and nothing keeps state.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from relay.ingress.catalogue import Catalogue, load_catalogue, recognise

__all__ = [
    "DEADLETTER_REASONS",
    "INVOICE_EVENT_TYPE",
    "KNOWN_EVENT_TYPES",
    "NOT_JSON",
    "NOT_OBJECT",
    "Kind",
    "Route",
    "Routes",
    "RoutesError",
    "all_topics",
    "load_routes",
    "metric_type",
    "parse_event",
    "route",
]

#: The 17 event types HoopAI itself lists (the catalogue has all 63 of HighLevel's).
KNOWN_EVENT_TYPES: Final = frozenset(
    {
        "AppointmentCreate",
        "AppointmentDelete",
        "AppointmentUpdate",
        "ContactCreate",
        "ContactDelete",
        "ContactDndUpdate",
        "ContactTagUpdate",
        "ContactUpdate",
        "InboundMessage",
        "InvoiceCreate",
        "InvoicePaid",
        "NoteCreate",
        "OpportunityCreate",
        "OpportunityStageUpdate",
        "OpportunityUpdate",
        "OutboundMessage",
        "TaskCreate",
    }
)

#: The name of a body with no string ``type`` but the invoice shape (a shape of the
#: catalogue). The seven published invoice examples carry no ``type`` and share one shape,
#: so which invoice event such a body is cannot be known; it is routed, and its ``ce_type``
#: named, as the family-level "Invoice".
INVOICE_EVENT_TYPE: Final = "Invoice"

#: Dead-letter reasons: a closed set, safe as a metric label.
NOT_JSON: Final = "not_json"
NOT_OBJECT: Final = "not_object"
DEADLETTER_REASONS: Final = frozenset({NOT_JSON, NOT_OBJECT})

_UNROUTED: Final = "unrouted"
_DEADLETTER: Final = "deadletter"
# relay/ingress/quarantine.py's topic: never a family's, so nothing routed lands there.
_QUARANTINE: Final = "quarantine"
_OTHER: Final = "other"

# Kafka's legal topic characters and its maximum topic name length.
_TOPIC_RE: Final = re.compile(r"[A-Za-z0-9._-]+")
_TOPIC_MAX: Final = 249
# An event type (or type prefix) in the file: no whitespace or control characters.
_TYPE_KEY_RE: Final = re.compile(r"[!-~]+")
_TABLES: Final = frozenset({"families", "topics"})


class RoutesError(ValueError):
    """The routes file (or the topic prefix) is malformed; the message names the culprit."""


class Kind(enum.StrEnum):
    """How a body was routed; a closed set, safe as a metric label."""

    ROUTED = "routed"
    UNROUTED = "unrouted"
    DEADLETTER = "deadletter"


@dataclass(frozen=True, slots=True)
class Routes:
    """A validated routing table, built by :func:`load_routes`."""

    prefix: str
    #: (type prefix, family) pairs, longest type prefix first.
    families: tuple[tuple[str, str], ...]
    #: exact event type -> full topic name (no prefix added).
    overrides: Mapping[str, str]
    #: what the relay knows of every event: families, recognition, key fields.
    catalogue: Catalogue
    #: the route of every name the catalogue can recognise, worked out once by
    #: :func:`load_routes` rather than on every request (the table is fixed once loaded)
    recognised: Mapping[str, Route]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one body goes, and why."""

    topic: str
    kind: Kind
    #: the catalogue's name for a recognised body (an event, or a family-level name such as
    #: "Invoice"); else the payload's ``type`` verbatim when a string. Never use it as a
    #: metric label unless recognised: see :func:`metric_type`.
    event_type: str | None
    #: one of :data:`DEADLETTER_REASONS` for a dead letter, else None.
    reason: str | None
    #: the fields the partition key is taken from, in order (the catalogue's, for the family)
    key_chain: tuple[str, ...] = ()
    #: the catalogue named the body: ``event_type`` is one of its bounded set of names
    recognised: bool = False


def _valid_topic(name: str) -> bool:
    """Tell whether Kafka accepts ``name`` as a topic name."""
    return (
        len(name) <= _TOPIC_MAX
        and name not in (".", "..")
        and _TOPIC_RE.fullmatch(name) is not None
    )


def _table(data: dict[str, object], name: str, path: Path) -> dict[str, str]:
    """Return the string-to-string table ``name`` of the file, checking each key and value."""
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        raise RoutesError(f"{path}: [{name}] must be a table, not {type(raw).__name__}")
    table: dict[str, str] = {}
    for key, value in raw.items():
        if _TYPE_KEY_RE.fullmatch(key) is None:
            raise RoutesError(f"{path}: [{name}] key {key!r} is not an event type (prefix)")
        if not isinstance(value, str):
            raise RoutesError(
                f"{path}: [{name}] {key}: value must be a string, not {type(value).__name__}"
            )
        table[key] = value
    return table


def load_routes(path: Path, prefix: str, catalogue: Catalogue | None = None) -> Routes:
    """Read and validate the routes file at ``path`` for topics under ``prefix``.

    ``catalogue`` defaults to the shipped one.
    """
    if catalogue is None:
        catalogue = load_catalogue()
    if not _valid_topic(prefix) or len(prefix) + 1 + len(_DEADLETTER) > _TOPIC_MAX:
        raise RoutesError(f"topic prefix {prefix!r} is not a valid Kafka topic name")
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RoutesError(f"{path}: not valid TOML: {e}") from e
    unknown = sorted(set(data) - _TABLES)
    if unknown:
        raise RoutesError(f"{path}: unknown key {unknown[0]!r} (expected [families], [topics])")
    if "families" not in data:
        raise RoutesError(f"{path}: missing the [families] table")
    families = _table(data, "families", path)
    for key, family in families.items():
        if family in (_UNROUTED, _DEADLETTER, _QUARANTINE):
            raise RoutesError(f"{path}: [families] {key}: family {family!r} is reserved")
        if not family or not _valid_topic(f"{prefix}.{family}"):
            raise RoutesError(
                f"{path}: [families] {key}: {prefix}.{family} is not a valid Kafka topic name"
            )
    overrides = _table(data, "topics", path)
    for key, topic in overrides.items():
        if not _valid_topic(topic):
            raise RoutesError(f"{path}: [topics] {key}: {topic!r} is not a valid Kafka topic name")
        named = catalogue.by_type.get(key)
        if named is not None and named.name != key:
            # The key would never match: a recognised body is routed by its event's name.
            raise RoutesError(
                f"{path}: [topics] {key}: that is the type value of {named.name}; "
                f"write {named.name} instead"
            )
    for family in catalogue.families:
        if not _valid_topic(f"{prefix}.{family}"):
            raise RoutesError(f"topic prefix {prefix!r}: {prefix}.{family} is not a valid topic")
    ordered = sorted(families.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    table = Routes(
        prefix=prefix,
        families=tuple(ordered),
        overrides=types.MappingProxyType(overrides),
        catalogue=catalogue,
        recognised=types.MappingProxyType({}),
    )
    names = {e.name: e.family for e in catalogue.events} | {
        s.name: s.family for s in catalogue.shapes
    }
    recognised = {name: _recognised_route(name, family, table) for name, family in names.items()}
    return dataclasses.replace(table, recognised=types.MappingProxyType(recognised))


def _recognised_route(name: str, family: str, routes: Routes) -> Route:
    """The route of a body the catalogue names ``name``, of ``family``."""
    topic = _family_topic(name, routes) or f"{routes.prefix}.{family}"
    chain = routes.catalogue.key_chain(family)
    return Route(topic, Kind.ROUTED, name, None, chain, recognised=True)


def all_topics(routes: Routes) -> list[str]:
    """Every topic the routes can produce to, for creating them up front."""
    families = {f"{routes.prefix}.{family}" for _, family in routes.families}
    families |= {f"{routes.prefix}.{family}" for family in routes.catalogue.families}
    reserved = {f"{routes.prefix}.{_UNROUTED}", f"{routes.prefix}.{_DEADLETTER}"}
    return sorted(families | reserved | set(routes.overrides.values()))


def parse_event(body: bytes) -> dict[str, object] | str:
    """Parse ``body`` as a JSON object, or return why it is a dead letter (a reason string)."""
    try:
        parsed: object = orjson.loads(body)
    except orjson.JSONDecodeError:  # also invalid UTF-8, lone surrogates, too deep
        return NOT_JSON
    if isinstance(parsed, dict):
        return parsed
    return NOT_OBJECT


def _family_topic(event_type: str, routes: Routes) -> str | None:
    """Return the override or family topic for ``event_type``, or None when none matches."""
    topic = routes.overrides.get(event_type)
    if topic is not None:
        return topic
    for type_prefix, family in routes.families:
        if event_type.startswith(type_prefix) and (
            len(event_type) == len(type_prefix) or not event_type[len(type_prefix)].islower()
        ):
            return f"{routes.prefix}.{family}"
    return None


def route(event: dict[str, object] | str, routes: Routes) -> Route:
    """Route a parsed body (or a :func:`parse_event` dead-letter reason) to its topic.

    A body the catalogue recognises goes to the operator's topic for its name, else to its
    family's default topic. Any other body goes where the operator's file sends its
    ``type``, else to ``unrouted``: kept, never dead-lettered.
    """
    if isinstance(event, str):
        if event not in DEADLETTER_REASONS:
            raise ValueError(f"not a dead-letter reason: {event!r}")
        return Route(f"{routes.prefix}.{_DEADLETTER}", Kind.DEADLETTER, None, event)
    catalogue = routes.catalogue
    named = recognise(event, catalogue)
    if named is not None:
        return routes.recognised[named.name]
    raw_type = event.get("type")
    event_type = raw_type if isinstance(raw_type, str) else None
    if event_type is not None:
        override = _family_topic(event_type, routes)
        if override is not None:
            return Route(override, Kind.ROUTED, event_type, None, catalogue.key)
    return Route(f"{routes.prefix}.{_UNROUTED}", Kind.UNROUTED, event_type, None, catalogue.key)


def metric_type(route: Route) -> str:
    """Return a metric label for the route's event type: a catalogue name, or "other"."""
    if route.recognised and route.event_type is not None:
        return route.event_type
    return _OTHER
