"""The event catalogue: every HighLevel webhook event, and how a body is recognised as one.

The data is ``relay/ingress/catalogue.toml`` (its comments explain each table); this module loads
and checks it, and holds the pure functions that use it: :func:`recognise` names a parsed
body, :func:`partition_key` picks its key. Nothing here does I/O except
:func:`load_catalogue`, and nothing keeps state.
"""

from __future__ import annotations

import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "CATALOGUE_FILE",
    "KEY_FIELDS",
    "KEY_SOURCES",
    "NO_KEY",
    "Catalogue",
    "CatalogueError",
    "Event",
    "Recognition",
    "Shape",
    "event_table",
    "load_catalogue",
    "mask_sensitive",
    "partition_key",
    "recognise",
]

#: The catalogue shipped in the package.
CATALOGUE_FILE: Final = Path(__file__).resolve().parent / "catalogue.toml"

#: The fields a key can come from, in the only order a key chain may list them: a body's
#: location first, so that every event of one location lands on one partition, in order.
KEY_FIELDS: Final = ("locationId", "altId", "id", "companyId")
#: The ``hoopai_key_source`` value for each key field: a closed set, safe as a label.
KEY_SOURCES: Final = types.MappingProxyType(
    {"locationId": "location", "altId": "alt", "id": "id", "companyId": "company"}
)
#: ``hoopai_key_source`` of a record without a key.
NO_KEY: Final = "none"

# Names (and family names) become ce_type suffixes, metric labels and topic names.
_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_FAMILY_RE: Final = re.compile(r"[a-z][a-z0-9-]*")
_FIELD_RE: Final = re.compile(r"[!-~]+")
_EVENT_KEYS: Final = frozenset(
    {"name", "family", "aliases", "location", "docs", "sensitive", "note"}
)
_SHAPE_KEYS: Final = frozenset(
    {"name", "family", "events", "requires", "requires_any", "forbids", "type_values",
     "type_required"}
)  # fmt: skip
_TOP_KEYS: Final = frozenset({"docs_repo", "docs_commit", "key", "families", "event", "shape"})
_DOCS_PAGE: Final = "docs/webhook events/{}.md"
_SITE_PAGE: Final = "https://marketplace.gohighlevel.com/docs/webhook/{}"
_MASK: Final = '"***"'
_FIELD_LABELS: Final = {
    "locationId": "`locationId`",
    "altId": "`altId` (`altType` location)",
    "id": "`id` (the location's own)",
    "companyId": "`companyId` (agency level)",
}


class CatalogueError(ValueError):
    """The catalogue file is malformed; the message names the entry and the field."""


@dataclass(frozen=True, slots=True)
class Event:
    """One webhook event of the catalogue."""

    name: str
    family: str
    #: ``type`` values that name this event besides its name (``INSTALL`` for AppInstall)
    aliases: tuple[str, ...]
    #: the fields the published examples carry the location (or agency) in
    location: tuple[str, ...]
    #: the docs page: a path in the docs repository, or the page's address on the site
    docs: str
    #: dotted paths (``[]`` for "each item") of fields that can hold a secret
    sensitive: tuple[str, ...]
    note: str


@dataclass(frozen=True, slots=True)
class Shape:
    """How a body whose ``type`` names no event is recognised (see the file's comments)."""

    name: str
    family: str
    events: tuple[str, ...]
    requires: tuple[str, ...]
    requires_any: tuple[str, ...]
    forbids: tuple[str, ...]
    type_values: frozenset[str]
    type_required: bool

    def matches(self, event: Mapping[str, object]) -> bool:
        """Tell whether ``event`` has this shape."""
        kind = event.get("type")
        if isinstance(kind, str):
            if kind not in self.type_values:
                return False
        elif self.type_required:
            return False
        return (
            all(field in event for field in self.requires)
            and (not self.requires_any or any(field in event for field in self.requires_any))
            and not any(field in event for field in self.forbids)
        )


@dataclass(frozen=True, slots=True)
class Recognition:
    """What a body is: an event of the catalogue, or a family-level name from a shape."""

    #: the event's name, or a shape's family-level name such as "Invoice"
    name: str
    family: str
    #: the event, when the body names exactly one
    event: Event | None


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The validated catalogue, built by :func:`load_catalogue`."""

    docs_repo: str
    docs_commit: str
    #: family -> (title, key chain)
    families: Mapping[str, tuple[str, tuple[str, ...]]]
    events: tuple[Event, ...]
    shapes: tuple[Shape, ...]
    #: the default key chain, for every family without one of its own and unrecognised bodies
    key: tuple[str, ...]
    #: every ``type`` value that names an event (names and aliases) -> that event
    by_type: Mapping[str, Event]
    #: the same values -> the recognition of a body with that ``type``, made once
    recognised_by_type: Mapping[str, Recognition]

    def names(self) -> frozenset[str]:
        """Every name a recognised body can carry: the events' and the shapes'."""
        return frozenset(e.name for e in self.events) | {s.name for s in self.shapes}

    def key_chain(self, family: str | None) -> tuple[str, ...]:
        """The key fields of a family's events, in order; the default for None."""
        if family is None:
            return self.key
        return self.families[family][1]


def _strings(entry: Mapping[str, object], field: str, where: str) -> tuple[str, ...]:
    """The list of strings ``field`` of ``entry`` (empty when absent)."""
    raw = entry.get(field, [])
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise CatalogueError(f"{where}: {field} must be a list of non-empty strings")
    if len(set(raw)) != len(raw):
        raise CatalogueError(f"{where}: {field} lists a value twice")
    return tuple(raw)


def _string(entry: Mapping[str, object], field: str, where: str, *, required: bool = True) -> str:
    """The string ``field`` of ``entry``: non-empty when required, else it may be absent."""
    raw = entry.get(field, None if required else "")
    if not isinstance(raw, str) or (required and not raw):
        raise CatalogueError(f"{where}: {field} must be a non-empty string")
    return raw


def _key_chain(raw: object, where: str) -> tuple[str, ...]:
    """A key chain: fields of :data:`KEY_FIELDS`, in that order, at least one."""
    if not isinstance(raw, list) or not raw or not all(f in KEY_FIELDS for f in raw):
        raise CatalogueError(f"{where}: key must list fields of {list(KEY_FIELDS)}")
    chain = tuple(raw)
    if list(chain) != sorted(chain, key=KEY_FIELDS.index) or len(set(chain)) != len(chain):
        raise CatalogueError(f"{where}: key must keep the order {list(KEY_FIELDS)}")
    return chain


def _table_list(data: Mapping[str, object], name: str) -> list[dict[str, object]]:
    """The array of tables ``[[name]]``."""
    raw = data.get(name, [])
    if not isinstance(raw, list) or not all(isinstance(v, dict) for v in raw):
        raise CatalogueError(f"[[{name}]] must be an array of tables")
    return raw


def _families(
    data: Mapping[str, object], default: tuple[str, ...]
) -> dict[str, tuple[str, tuple[str, ...]]]:
    raw = data.get("families")
    if not isinstance(raw, dict) or not raw:
        raise CatalogueError("[families] must be a table of families")
    families: dict[str, tuple[str, tuple[str, ...]]] = {}
    for family, entry in raw.items():
        where = f"[families.{family}]"
        if _FAMILY_RE.fullmatch(family) is None or not isinstance(entry, dict):
            raise CatalogueError(f"{where}: a family is a lower-case name with a table")
        unknown = set(entry) - {"title", "key"}
        if unknown:
            raise CatalogueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        chain = _key_chain(entry["key"], where) if "key" in entry else default
        families[family] = (_string(entry, "title", where), chain)
    return families


def _event(entry: dict[str, object], families: Mapping[str, object]) -> Event:
    """One ``[[event]]`` table, checked."""
    where = f"[[event]] {entry.get('name')!r}"
    unknown = set(entry) - _EVENT_KEYS
    if unknown:
        raise CatalogueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name = _string(entry, "name", where)
    if _NAME_RE.fullmatch(name) is None:
        raise CatalogueError(f"{where}: name must be letters and digits")
    family = _string(entry, "family", where)
    if family not in families:
        raise CatalogueError(f"{where}: family {family!r} is not in [families]")
    docs = _string(entry, "docs", where)
    if docs not in (_DOCS_PAGE.format(name), _SITE_PAGE.format(name)):
        raise CatalogueError(f"{where}: docs must be {_DOCS_PAGE.format(name)!r} or its site page")
    location = _strings(entry, "location", where)
    if not location or any(f not in KEY_FIELDS for f in location):
        raise CatalogueError(f"{where}: location must list fields of {list(KEY_FIELDS)}")
    sensitive = _strings(entry, "sensitive", where)
    for path in sensitive:
        if not all(_NAME_RE.fullmatch(part.removesuffix("[]")) for part in path.split(".")):
            raise CatalogueError(f"{where}: sensitive path {path!r} is not dotted field names")
    return Event(
        name=name,
        family=family,
        aliases=_strings(entry, "aliases", where),
        location=location,
        docs=docs,
        sensitive=sensitive,
        note=_string(entry, "note", where, required=False),
    )


def _shape(entry: dict[str, object], events: Mapping[str, Event]) -> Shape:
    """One ``[[shape]]`` table, checked against the events."""
    where = f"[[shape]] {entry.get('name')!r}"
    unknown = set(entry) - _SHAPE_KEYS
    if unknown:
        raise CatalogueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name = _string(entry, "name", where)
    family = _string(entry, "family", where)
    members = _strings(entry, "events", where)
    if not members or any(events.get(m) is None or events[m].family != family for m in members):
        raise CatalogueError(f"{where}: events must be events of the family {family!r}")
    if _NAME_RE.fullmatch(name) is None or (name in events and members != (name,)):
        raise CatalogueError(f"{where}: name must be its one event's, or a family-level name")
    requires = _strings(entry, "requires", where)
    if not requires:
        # Without a required field, a shape would claim bodies that carry none of its data.
        raise CatalogueError(f"{where}: requires must name at least one field")
    type_required = entry.get("type_required", False)
    if not isinstance(type_required, bool):
        raise CatalogueError(f"{where}: type_required must be true or false")
    type_values = _strings(entry, "type_values", where)
    if type_required and not type_values:
        raise CatalogueError(f"{where}: type_required needs type_values")
    return Shape(
        name=name,
        family=family,
        events=members,
        requires=requires,
        requires_any=_strings(entry, "requires_any", where),
        forbids=_strings(entry, "forbids", where),
        type_values=frozenset(type_values),
        type_required=type_required,
    )


def load_catalogue(path: Path = CATALOGUE_FILE) -> Catalogue:
    """Read and check the catalogue at ``path`` (the shipped one by default)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CatalogueError(f"{path}: not valid TOML: {e}") from e
    try:
        return _build(data)
    except CatalogueError as e:
        raise CatalogueError(f"{path}: {e}") from None


def _build(data: dict[str, object]) -> Catalogue:
    """The catalogue from the parsed file, every cross-reference checked."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise CatalogueError(f"unknown key {sorted(unknown)[0]!r}")
    key = _key_chain(data.get("key"), "key")
    families = _families(data, key)
    events: dict[str, Event] = {}
    by_type: dict[str, Event] = {}
    for entry in _table_list(data, "event"):
        event = _event(entry, families)
        if event.name in events:
            raise CatalogueError(f"[[event]] {event.name!r} is listed twice")
        events[event.name] = event
        for value in (event.name, *event.aliases):
            other = by_type.setdefault(value, event)
            if other is not event:
                raise CatalogueError(f"type {value!r} names both {other.name} and {event.name}")
    shapes = tuple(_shape(entry, events) for entry in _table_list(data, "shape"))
    for shape in shapes:
        clash = shape.type_values & by_type.keys()
        if clash:
            raise CatalogueError(f"[[shape]] {shape.name!r}: {sorted(clash)[0]!r} names an event")
        if shape.name in by_type and shape.name not in events:
            raise CatalogueError(f"[[shape]] {shape.name!r}: the name is an alias of an event")
    if len({s.name for s in shapes}) != len(shapes):
        raise CatalogueError("[[shape]]: a name is listed twice")
    return Catalogue(
        docs_repo=_string(data, "docs_repo", "docs_repo"),
        docs_commit=_string(data, "docs_commit", "docs_commit"),
        families=types.MappingProxyType(families),
        events=tuple(events.values()),
        shapes=shapes,
        key=key,
        by_type=types.MappingProxyType(by_type),
        recognised_by_type=types.MappingProxyType(
            {value: Recognition(e.name, e.family, e) for value, e in by_type.items()}
        ),
    )


def recognise(event: Mapping[str, object], catalogue: Catalogue) -> Recognition | None:
    """Name a parsed body, or None when the catalogue cannot tell what it is.

    A string ``type`` that names an event wins over any shape, whatever else the body holds;
    a price type or a channel in ``type`` names no event and leaves the body to the shapes.
    """
    kind = event.get("type")
    if isinstance(kind, str):
        named = catalogue.recognised_by_type.get(kind)
        if named is not None:
            return named
    for shape in catalogue.shapes:
        if shape.matches(event):
            one = catalogue.by_type[shape.name] if shape.events == (shape.name,) else None
            return Recognition(shape.name, shape.family, one)
    return None


def partition_key(event: Mapping[str, object], chain: tuple[str, ...]) -> tuple[bytes | None, str]:
    """The key of ``event`` by the first field of ``chain`` it carries, and that field's source.

    ``altId`` counts only with ``altType`` "location". None and :data:`NO_KEY` without one.
    """
    for field in chain:
        if field == "altId" and event.get("altType") != "location":
            continue
        value = event.get(field)
        if isinstance(value, str) and value:
            # Stray surrogates are escaped rather than raising, as for every header.
            return value.encode("utf-8", "backslashreplace"), KEY_SOURCES[field]
    return None, NO_KEY


def _sensitive_re(catalogue: Catalogue) -> re.Pattern[bytes] | None:
    """A pattern of the JSON string members named by any event's sensitive paths."""
    names = sorted({path.split(".")[-1] for e in catalogue.events for path in e.sensitive})
    if not names:
        return None
    alternatives = b"|".join(re.escape(n.encode()) for n in names)
    return re.compile(rb'("(?:' + alternatives + rb')"\s*:\s*)"(?:[^"\\]|\\.)*"')


def mask_sensitive(body: bytes, catalogue: Catalogue) -> bytes:
    """``body`` with the string value of every sensitive field replaced by ``"***"``.

    For display only (the record itself stays byte-exact, since consumers re-verify its
    signature). It masks the field wherever it appears, in any event: a mistyped body or an
    unexpected nesting must not show the secret either.
    """
    pattern = _sensitive_re(catalogue)
    if pattern is None:
        return body
    return pattern.sub(lambda m: m.group(1) + _MASK.encode(), body)


def _recognised_by(event: Event, catalogue: Catalogue) -> str:
    """The README's "recognised by" cell for ``event``."""
    values = [event.name, *event.aliases]
    cell = "`type` " + " or ".join(f"`{v}`" for v in values)
    for shape in catalogue.shapes:
        if event.name in shape.events:
            label = "shape" if shape.name == event.name else f"shape, as `{shape.name}`"
            return f"{cell}; else {label}"
    return cell


def event_table(catalogue: Catalogue, prefix: str = "<prefix>") -> str:
    """The README's table of every event: topic, recognition, key fields, docs page."""
    rows = [
        "| event | topic | recognised by | key field |",
        "|---|---|---|---|",
    ]
    for event in sorted(catalogue.events, key=lambda e: (e.family, e.name)):
        rows.append(
            f"| {event.name} | `{prefix}.{event.family}` | {_recognised_by(event, catalogue)} "
            f"| {', else '.join(_FIELD_LABELS[f] for f in event.location)} |"
        )
    return "\n".join(rows)
