"""The event catalogue: its file, recognition, keys, and the README table made from it."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ingress.catalogue import (
    CATALOGUE_FILE,
    KEY_FIELDS,
    CatalogueError,
    event_table,
    load_catalogue,
    mask_sensitive,
    recognise,
)
from relay.ingress.routing import Kind, load_routes, parse_event, route
from relay.tools.samples import sample, sample_names

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = load_catalogue()
ROUTES = load_routes(ROOT / "config" / "routes.toml", "hoopai")
#: routes with no operator entries: the catalogue alone decides
BARE = load_routes(ROOT / "tests" / "data" / "no-routes.toml", "hoopai")
README = ROOT / "README.md"
TABLE_RE = re.compile(
    r"<!-- event table: generated from relay/ingress/catalogue.toml, do not edit by hand -->\n"
    r"(.*?)\n<!-- end of event table -->",
    re.S,
)


# --- the file ----------------------------------------------------------------------------


def test_the_catalogue_lists_the_63_events_each_citing_its_docs_page() -> None:
    """63 events, unique names; each cites its page in the docs repo or on HighLevel's site."""
    names = [e.name for e in CATALOGUE.events]
    assert len(names) == len(set(names)) == 63
    assert CATALOGUE.docs_repo == "GoHighLevel/highlevel-api-docs"
    assert re.fullmatch(r"[0-9a-f]{40}", CATALOGUE.docs_commit)
    site = [e.name for e in CATALOGUE.events if e.docs.startswith("https://")]
    assert sorted(site) == [
        "ExternalAuthConnected", "SaaSPlanCreate", "UserDelete", "UserUpdate", "VoiceAiCallEnd",
    ]  # fmt: skip
    for event in CATALOGUE.events:
        assert event.docs in (
            f"docs/webhook events/{event.name}.md",
            f"https://marketplace.gohighlevel.com/docs/webhook/{event.name}",
        )


def test_every_family_has_events_and_a_topic_name() -> None:
    """Each family holds events; the families are the ones the README's table shows."""
    used = {e.family for e in CATALOGUE.events}
    assert used == set(CATALOGUE.families)
    assert len(used) == 17


def test_key_chains_keep_the_location_first() -> None:
    """Every key chain lists its fields in KEY_FIELDS order: a location's events stay together."""
    for _, chain in CATALOGUE.families.values():
        assert list(chain) == sorted(chain, key=KEY_FIELDS.index)
        assert chain[0] == "locationId"
    assert CATALOGUE.key_chain("locations") == ("locationId", "altId", "id", "companyId")
    assert CATALOGUE.key_chain(None) == ("locationId", "altId", "companyId")


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the shipped catalogue with ``old`` replaced by ``new`` (once, must exist)."""
    text = CATALOGUE_FILE.read_text()
    assert old in text
    path = tmp_path / "catalogue.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "culprit"),
    [
        ('aliases = ["INSTALL"]', 'aliases = ["UNINSTALL"]', "'UNINSTALL' names both"),
        ('name = "AppInstall"', 'name = "App Install"', "letters and digits"),
        ('family = "apps"', 'family = "applications"', "'applications' is not in [families]"),
        ('docs = "docs/webhook events/AppInstall.md"', 'docs = "x.md"', "docs must be"),
        ('location = ["locationId", "companyId"]', "location = []", "location must list"),
        ('key = ["locationId", "altId", "companyId"]', 'key = ["companyId", "locationId"]',
         "key must keep the order"),
        ('type_values = ["one_time", "recurring"]', 'type_values = ["PriceCreate"]',
         "'PriceCreate' names an event"),
        ('requires = ["owners", "followers", "properties"]', "requires = []",
         "requires must name at least one field"),
        ('events = ["RecordCreate", "RecordDelete", "RecordUpdate"]', 'events = ["NoteCreate"]',
         "events must be events of the family"),
        ("docs_repo", "docs_repository", "unknown key"),
        ('title = "Contacts"', 'title = "Contacts"\ncolour = "red"', "unknown field 'colour'"),
    ],
)  # fmt: skip
def test_a_malformed_catalogue_is_refused_naming_the_entry(
    tmp_path: Path, old: str, new: str, culprit: str
) -> None:
    """A mistake in the catalogue raises CatalogueError naming the file and the culprit."""
    path = _broken(tmp_path, old, new)
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    assert str(path) in str(info.value)
    assert culprit in str(info.value)


def test_a_catalogue_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    """Invalid TOML is refused as such, naming the file."""
    path = tmp_path / "catalogue.toml"
    path.write_bytes(b"[[event]\n")
    with pytest.raises(CatalogueError, match="not valid TOML"):
        load_catalogue(path)


# --- recognition ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"type": "INSTALL", "companyId": "c"}, "AppInstall"),
        ({"type": "ConversationUnreadUpdate"}, "ConversationUnreadWebhook"),
        ({"type": "SaasPlanCreate"}, "SaaSPlanCreate"),
        ({"type": "one_time", "product": "p", "amount": 1, "currency": "INR"}, "Price"),
        ({"priceType": "recurring", "product": "p", "amount": 1, "currency": "INR"}, "Price"),
        ({"type": "SMS", "messageId": "m", "contactId": "c", "locationId": "l"},
         "ProviderOutboundMessage"),
        ({"type": "RecordCreate", "owners": [], "followers": [], "properties": []},
         "RecordCreate"),
        ({"owners": [], "followers": [], "properties": []}, "Record"),
        ({"type": "OrderCreate", "altType": "location", "_id": "o"}, "OrderCreate"),
    ],
)  # fmt: skip
def test_recognise_names_aliases_and_shapes(body: dict[str, object], name: str) -> None:
    """Type values name their event; shapes name the rest, a family at a time when shared."""
    got = recognise(body, CATALOGUE)
    assert got is not None
    assert got.name == name


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"type": "SMS", "body": "hi"},  # a channel, but not the provider's outbound shape
        {"type": "SMS", "messageId": "m", "contactId": "c", "locationId": "l", "direction": "in"},
        {"messageId": "m", "contactId": "c", "locationId": "l"},  # no type: no channel said
        {"type": "weekly", "product": "p", "amount": 1, "currency": "INR"},
        {"type": "Price", "product": "p", "amount": 1, "currency": "INR"},
        {"type": "install"},
        {"_id": "x", "productType": "PHYSICAL", "name": "n", "product": "p"},
    ],
)
def test_recognise_does_not_guess(body: dict[str, object]) -> None:
    """A body the catalogue cannot place is not named: no event, no family."""
    assert recognise(body, CATALOGUE) is None


def test_every_untyped_sample_has_exactly_one_shape() -> None:
    """Shapes do not overlap on any published example: the first match is the only match."""
    for name in sample_names():
        body = orjson.loads(sample(name))
        matching = [s.name for s in CATALOGUE.shapes if s.matches(body)]
        if body.get("type") in CATALOGUE.by_type:
            continue
        assert len(matching) == 1, (name, matching)


def test_the_shipped_routes_agree_with_the_catalogue() -> None:
    """config/routes.toml sends every event, by any of its type values, to its family's topic."""
    for kind, event in CATALOGUE.by_type.items():
        assert route({"type": kind}, ROUTES).topic == f"hoopai.{event.family}", kind
    for shape in CATALOGUE.shapes:
        body: dict[str, object] = {f: "x" for f in (*shape.requires, *shape.requires_any[:1])}
        if shape.type_required:
            body["type"] = sorted(shape.type_values)[0]
        got = route(body, ROUTES)
        assert (got.topic, got.event_type) == (f"hoopai.{shape.family}", shape.name)


JSON_VALUES: st.SearchStrategy[object] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
SHAPE_FIELDS = sorted({f for s in CATALOGUE.shapes for f in (*s.requires, *s.requires_any)})
OTHER_FIELDS = st.dictionaries(
    st.sampled_from([*SHAPE_FIELDS, "locationId", "altType", "altId", "companyId"])
    | st.text(max_size=10),
    JSON_VALUES | st.sampled_from(["location", "SMS", "Email", "one_time", "recurring"]),
    max_size=10,
)


@settings(database=None, max_examples=150)
@given(kind=st.sampled_from(sorted(CATALOGUE.by_type)), fields=OTHER_FIELDS)
def test_a_recognised_type_routes_to_its_family_whatever_else(
    kind: str, fields: dict[str, object]
) -> None:
    """Any JSON object whose type names an event goes to that event's family, named so."""
    event = CATALOGUE.by_type[kind]
    body = parse_event(orjson.dumps({**fields, "type": kind}))
    for routes in (ROUTES, BARE):
        got = route(body, routes)
        assert (got.topic, got.kind, got.event_type) == (
            f"hoopai.{event.family}",
            Kind.ROUTED,
            event.name,
        )


@settings(database=None, max_examples=150)
@given(
    fields=st.dictionaries(
        st.text(max_size=10).filter(lambda f: f not in SHAPE_FIELDS and f != "type"),
        JSON_VALUES,
        max_size=8,
    ),
    kind=st.none() | st.text(max_size=20) | JSON_VALUES,
)
def test_an_unrecognisable_body_is_unrouted_never_a_dead_letter(
    fields: dict[str, object], kind: object
) -> None:
    """A JSON object with no event's type and no shape's fields goes to unrouted, and only there."""
    if kind is not None:
        fields["type"] = kind
    body = parse_event(orjson.dumps(fields))
    if isinstance(kind, str) and kind in CATALOGUE.by_type:
        return  # a name of the catalogue: the property above
    got = route(body, BARE)
    assert (got.topic, got.kind, got.recognised) == ("hoopai.unrouted", Kind.UNROUTED, False)


# --- the README and the display mask ------------------------------------------------------


def test_the_readme_table_is_the_catalogue() -> None:
    """The README's event table is exactly what event_table() makes of the catalogue."""
    found = TABLE_RE.search(README.read_text())
    assert found is not None, "the README lost its event table markers"
    assert found.group(1) == event_table(CATALOGUE), (
        "README event table is stale; replace it with the output of\n"
        "python -c 'from relay.ingress.catalogue import *; print(event_table(load_catalogue()))'"
    )
    rows = found.group(1).splitlines()[2:]
    assert sorted(row.split(" | ")[0].removeprefix("| ") for row in rows) == sorted(
        e.name for e in CATALOGUE.events
    )


def test_mask_sensitive_hides_only_the_secret() -> None:
    """The bearer token is masked wherever it is; other bytes are left exactly as they were."""
    body = sample("VoiceAiCallEnd")
    masked = mask_sensitive(body, CATALOGUE)
    assert b"sk_live" not in masked
    assert masked.replace(b'"***"', b'"Bearer sk_live_xxx"') == body
    nested = b'{"a": [{"authenticationValue" : "s\\"ecret"}], "authenticationRequired": true}'
    assert mask_sensitive(nested, CATALOGUE) == (
        b'{"a": [{"authenticationValue" : "***"}], "authenticationRequired": true}'
    )
