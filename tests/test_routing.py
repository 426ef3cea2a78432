import dataclasses
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ingress.catalogue import load_catalogue
from relay.ingress.routing import (
    INVOICE_EVENT_TYPE,
    KNOWN_EVENT_TYPES,
    NOT_JSON,
    NOT_OBJECT,
    Kind,
    Route,
    Routes,
    RoutesError,
    all_topics,
    load_routes,
    metric_type,
    parse_event,
    route,
)
from relay.tools.samples import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
ROUTES_TOML = ROOT / "config" / "routes.toml"
PAYLOADS = SAMPLES
PREFIX = "hoopai"

# The published examples of HoopAI's 17 events (relay/tools/samples/, copied unchanged), with what
# routing did with them before the catalogue, and still does: (file, topic, event_type). The
# published AppointmentUpdate/Delete examples say "AppointmentCreate" and the InboundMessage
# Call example says "OutboundMessage": they still land in the right family, under the (wrong)
# type they carry.
PUBLISHED: list[tuple[str, str, str]] = [
    ("AppointmentCreate.json", "hoopai.appointments", "AppointmentCreate"),
    ("AppointmentDelete.json", "hoopai.appointments", "AppointmentCreate"),
    ("AppointmentUpdate.json", "hoopai.appointments", "AppointmentCreate"),
    ("ContactCreate.json", "hoopai.contacts", "ContactCreate"),
    ("ContactDelete.json", "hoopai.contacts", "ContactDelete"),
    ("ContactDndUpdate.json", "hoopai.contacts", "ContactDndUpdate"),
    ("ContactDndUpdate.docs-2026-08.json", "hoopai.contacts", "ContactDndUpdate"),
    ("ContactTagUpdate.json", "hoopai.contacts", "ContactTagUpdate"),
    ("ContactUpdate.json", "hoopai.contacts", "ContactUpdate"),
    ("InboundMessage.json", "hoopai.messages", "InboundMessage"),
    ("InboundMessage.Call.json", "hoopai.messages", "OutboundMessage"),
    ("InboundMessage.Email.json", "hoopai.messages", "InboundMessage"),
    ("InboundMessage.Voicemail.json", "hoopai.messages", "InboundMessage"),
    ("InvoiceCreate.json", "hoopai.invoices", INVOICE_EVENT_TYPE),
    ("InvoicePaid.json", "hoopai.invoices", INVOICE_EVENT_TYPE),
    ("NoteCreate.json", "hoopai.notes", "NoteCreate"),
    ("OpportunityCreate.json", "hoopai.opportunities", "OpportunityCreate"),
    ("OpportunityStageUpdate.json", "hoopai.opportunities", "OpportunityStageUpdate"),
    ("OpportunityUpdate.json", "hoopai.opportunities", "OpportunityUpdate"),
    ("OutboundMessage.json", "hoopai.messages", "OutboundMessage"),
    ("OutboundMessage.CallAndVoicemail.json", "hoopai.messages", "OutboundMessage"),
    ("OutboundMessage.Email.json", "hoopai.messages", "OutboundMessage"),
    ("OutboundMessage.VoicemailViaWorkflow.json", "hoopai.messages", "OutboundMessage"),
    ("TaskCreate.json", "hoopai.tasks", "TaskCreate"),
]


@pytest.fixture(scope="module")
def routes() -> Routes:
    """Return the shipped routing table under the prefix "hoopai"."""
    return load_routes(ROUTES_TOML, PREFIX)


def routes_from(tmp_path: Path, text: str, prefix: str = PREFIX) -> Routes:
    """Write ``text`` as a routes file and load it."""
    path = tmp_path / "routes.toml"
    path.write_text(text, encoding="utf-8")
    return load_routes(path, prefix)


def route_body(body: bytes, routes: Routes) -> Route:
    """Parse and route one body."""
    return route(parse_event(body), routes)


def route_obj(obj: object, routes: Routes) -> Route:
    """Serialise ``obj`` to JSON and route it."""
    return route_body(orjson.dumps(obj), routes)


def where(got: Route) -> tuple[str, Kind, str | None, str | None]:
    """The route's topic, kind, event type and dead-letter reason (not its key chain)."""
    return got.topic, got.kind, got.event_type, got.reason


# --- the published examples -------------------------------------------------------------


def test_seed_table_covers_every_sample_of_the_17() -> None:
    """Every sample of one of HoopAI's 17 events has an expected route above, and vice versa."""
    seeds = [p.name for p in PAYLOADS.glob("*.json") if p.name.split(".")[0] in KNOWN_EVENT_TYPES]
    assert sorted(seeds) == sorted(f for f, _, _ in PUBLISHED)


def test_known_event_types_are_the_17_published_events() -> None:
    """The 17 known types are exactly the events with a published example."""
    assert len(KNOWN_EVENT_TYPES) == 17
    assert {f.split(".")[0] for f, _, _ in PUBLISHED} == KNOWN_EVENT_TYPES


@pytest.mark.parametrize(("name", "topic", "event_type"), PUBLISHED)
def test_published_example_routes_to_its_family(
    routes: Routes, name: str, topic: str, event_type: str
) -> None:
    """Each published example goes to its family's topic, under the type it carries."""
    got = route_body((PAYLOADS / name).read_bytes(), routes)
    assert where(got) == (topic, Kind.ROUTED, event_type, None)
    assert got.recognised


def test_published_examples_with_the_wrong_type_keep_it(routes: Routes) -> None:
    """The examples whose type is a published mistake are routed by that type, verbatim."""
    for name in ("AppointmentUpdate.json", "AppointmentDelete.json"):
        got = route_body((PAYLOADS / name).read_bytes(), routes)
        assert (got.topic, got.event_type) == ("hoopai.appointments", "AppointmentCreate")
    call = route_body((PAYLOADS / "InboundMessage.Call.json").read_bytes(), routes)
    assert (call.topic, call.event_type) == ("hoopai.messages", "OutboundMessage")


def test_real_delivery_fields_do_not_change_the_route(routes: Routes) -> None:
    """A delivery with webhookId, timestamp, appId and versionId routes like the example."""
    event = orjson.loads((PAYLOADS / "ContactCreate.json").read_bytes())
    event |= {
        "webhookId": "wh-1",
        "timestamp": "2025-01-01T00:00:00.000Z",
        "appId": "a",
        "versionId": "v",
    }
    assert route_obj(event, routes).topic == "hoopai.contacts"


# --- invoices without a type ------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"altType": "location", "altId": "loc", "_id": "inv"},
        {"altType": "location", "invoiceNumber": "19"},
        {"altType": "company", "_id": "inv"},
        {"type": None, "altType": "location", "_id": "inv"},
        {"type": 7, "altType": "location", "invoiceNumber": "19"},
    ],
)
def test_typeless_invoice_goes_to_invoices(routes: Routes, event: dict[str, object]) -> None:
    """A body with no string type but the invoice shape is routed as an "Invoice"."""
    got = route_obj(event, routes)
    assert where(got) == ("hoopai.invoices", Kind.ROUTED, INVOICE_EVENT_TYPE, None)


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"_id": "inv", "invoiceNumber": "19"},
        {"altType": "location", "altId": "loc"},
        {"type": ["ContactCreate"], "locationId": "loc"},
        {"type": None},
    ],
)
def test_typeless_non_invoice_is_unrouted(routes: Routes, event: dict[str, object]) -> None:
    """A body with no string type and no invoice shape is unrouted, with no event type."""
    assert where(route_obj(event, routes)) == ("hoopai.unrouted", Kind.UNROUTED, None, None)


def test_a_string_type_wins_over_the_invoice_shape(routes: Routes) -> None:
    """An invoice-shaped body that does carry a type is routed by that type."""
    event = {"type": "InvoiceSent", "altType": "location", "_id": "inv"}
    got = route_obj(event, routes)
    assert where(got) == ("hoopai.invoices", Kind.ROUTED, "InvoiceSent", None)
    event = {"type": "INSTALL", "altType": "location", "_id": "inv"}
    assert where(route_obj(event, routes)) == ("hoopai.apps", Kind.ROUTED, "AppInstall", None)
    event = {"type": "AppExploded", "altType": "location", "_id": "inv"}
    assert route_obj(event, routes).kind is Kind.UNROUTED


# --- unknown types and families ----------------------------------------------------------


@pytest.mark.parametrize("event_type", ["AppExploded", "INSTALLED", "", "contactcreate", "x"])
def test_unknown_type_is_unrouted(routes: Routes, event_type: str) -> None:
    """A string type that no family or override knows goes to unrouted, type verbatim."""
    got = route_obj({"type": event_type, "locationId": "loc"}, routes)
    assert where(got) == ("hoopai.unrouted", Kind.UNROUTED, event_type, None)
    assert not got.recognised


@pytest.mark.parametrize(
    ("event_type", "topic"),
    [
        ("ContactMerged", "hoopai.contacts"),
        ("OpportunityArchived", "hoopai.opportunities"),
        ("TaskReopened", "hoopai.tasks"),
        ("Contact", "hoopai.contacts"),
    ],
)
def test_family_covers_types_beyond_the_catalogue(
    routes: Routes, event_type: str, topic: str
) -> None:
    """Types the catalogue does not know still route by the operator's family prefixes."""
    got = route_obj({"type": event_type}, routes)
    assert where(got) == (topic, Kind.ROUTED, event_type, None)
    assert not got.recognised


@pytest.mark.parametrize("event_type", ["Contacts", "ContactlessPay", "Notebook", "Taskforce"])
def test_family_prefix_matches_only_at_a_word_boundary(routes: Routes, event_type: str) -> None:
    """A family prefix followed by a lower-case letter is another word, not that family."""
    assert route_obj({"type": event_type}, routes).kind is Kind.UNROUTED


def test_longest_family_prefix_wins(tmp_path: Path) -> None:
    """The longest matching type prefix decides the family, whatever the file order."""
    routes = routes_from(
        tmp_path,
        '[families]\nContact = "contacts"\nOpportunity = "opps"\nContactDnd = "dnd"\n',
    )
    assert routes.families == (
        ("Opportunity", "opps"),
        ("ContactDnd", "dnd"),
        ("Contact", "contacts"),
    )
    assert route_obj({"type": "ContactDndUpdate"}, routes).topic == "hoopai.dnd"
    assert route_obj({"type": "ContactUpdate"}, routes).topic == "hoopai.contacts"
    assert route_obj({"type": "OpportunityUpdate"}, routes).topic == "hoopai.opps"


# --- overrides ---------------------------------------------------------------------------


def test_override_wins_over_family(tmp_path: Path) -> None:
    """An exact-type override sends that type to its full topic; siblings keep the family."""
    routes = routes_from(
        tmp_path,
        '[families]\nContact = "contacts"\n\n[topics]\nContactDelete = "crm.contact-deletes"\n',
    )
    got = route_obj({"type": "ContactDelete"}, routes)
    assert where(got) == ("crm.contact-deletes", Kind.ROUTED, "ContactDelete", None)
    assert route_obj({"type": "ContactCreate"}, routes).topic == "hoopai.contacts"


def test_override_routes_an_otherwise_unrouted_type(tmp_path: Path) -> None:
    """An override needs no family: it routes a type that would be unrouted."""
    routes = routes_from(tmp_path, '[families]\n\n[topics]\nAppExploded = "apps"\n')
    got = route_obj({"type": "AppExploded"}, routes)
    assert where(got) == ("apps", Kind.ROUTED, "AppExploded", None)


def test_override_of_an_event_applies_to_its_aliases(tmp_path: Path) -> None:
    """An override keyed by the event's name catches every type value naming that event."""
    routes = routes_from(tmp_path, '[families]\n\n[topics]\nAppInstall = "apps.installs"\n')
    got = route_obj({"type": "INSTALL", "companyId": "co"}, routes)
    assert where(got) == ("apps.installs", Kind.ROUTED, "AppInstall", None)
    assert route_obj({"type": "UNINSTALL"}, routes).topic == "hoopai.apps"


def test_override_keyed_by_an_alias_is_refused(tmp_path: Path) -> None:
    """A [topics] key that is a type value of an event, not its name, would never match."""
    with pytest.raises(RoutesError, match=r"INSTALL: .* of AppInstall; write AppInstall"):
        routes_from(tmp_path, '[families]\n\n[topics]\nINSTALL = "apps"\n')


def test_family_prefix_overrides_the_catalogue_family(tmp_path: Path) -> None:
    """An operator's [families] prefix wins over the catalogue's family for its events."""
    routes = routes_from(tmp_path, '[families]\nApp = "marketplace"\n')
    assert route_obj({"type": "INSTALL"}, routes).topic == "hoopai.marketplace"
    assert route_obj({"type": "ContactCreate"}, routes).topic == "hoopai.contacts"


def test_invoice_override_catches_typeless_invoices(tmp_path: Path) -> None:
    """A type-less invoice is routed as type "Invoice", so an "Invoice" override applies."""
    routes = routes_from(
        tmp_path, '[families]\nInvoice = "invoices"\n\n[topics]\nInvoice = "billing"\n'
    )
    got = route_body((PAYLOADS / "InvoicePaid.json").read_bytes(), routes)
    assert where(got) == ("billing", Kind.ROUTED, INVOICE_EVENT_TYPE, None)


def test_typeless_invoice_without_an_invoice_family_goes_to_the_catalogue_family(
    tmp_path: Path,
) -> None:
    """Without an Invoice family or override a type-less invoice goes to invoices all the same."""
    routes = routes_from(tmp_path, '[families]\nContact = "contacts"\n')
    got = route_body((PAYLOADS / "InvoiceCreate.json").read_bytes(), routes)
    assert where(got) == ("hoopai.invoices", Kind.ROUTED, INVOICE_EVENT_TYPE, None)


# --- dead letters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", NOT_OBJECT),
        (b'[{"type": "ContactCreate"}]', NOT_OBJECT),
        (b"42", NOT_OBJECT),
        (b"-1.5e3", NOT_OBJECT),
        (b'"ContactCreate"', NOT_OBJECT),
        (b"null", NOT_OBJECT),
        (b"true", NOT_OBJECT),
        (b"", NOT_JSON),
        (b"{", NOT_JSON),
        (b"{'type': 'ContactCreate'}", NOT_JSON),
        (b'{"type": "ContactCreate"} trailing', NOT_JSON),
        (b"NaN", NOT_JSON),
        (b"\xff\xfe{}", NOT_JSON),
        (b'{"type": "Contact\xc3Create"}', NOT_JSON),
        (b'{"type": "\\ud800"}', NOT_JSON),
        (b"[" * 2000 + b"]" * 2000, NOT_JSON),
    ],
)
def test_non_object_body_is_a_dead_letter(routes: Routes, body: bytes, reason: str) -> None:
    """Invalid JSON, invalid UTF-8 and non-object JSON go to deadletter with the reason."""
    assert parse_event(body) == reason
    got = route_body(body, routes)
    assert where(got) == ("hoopai.deadletter", Kind.DEADLETTER, None, reason)


def test_parse_event_returns_the_object() -> None:
    """A JSON object body parses to its dict."""
    assert parse_event(b'{"type": "NoteCreate", "n": [1, 2]}') == {
        "type": "NoteCreate",
        "n": [1, 2],
    }


def test_route_rejects_a_string_that_is_no_deadletter_reason(routes: Routes) -> None:
    """Reasons form a closed set: route() refuses any other string (a caller's bug)."""
    with pytest.raises(ValueError, match="not a dead-letter reason"):
        route("something else", routes)


# --- metric labels -----------------------------------------------------------------------


def test_metric_type_only_passes_known_types(routes: Routes) -> None:
    """metric_type returns a catalogue name, or "other"; never a payload string."""
    assert metric_type(route_obj({"type": "ContactCreate"}, routes)) == "ContactCreate"
    assert metric_type(route_obj({"type": "OpportunityDelete"}, routes)) == "OpportunityDelete"
    assert metric_type(route_obj({"type": "INSTALL"}, routes)) == "AppInstall"
    assert metric_type(route_obj({"type": "OpportunityArchived"}, routes)) == "other"
    assert metric_type(route_obj({"type": "x" * 10_000}, routes)) == "other"
    assert metric_type(route_obj({}, routes)) == "other"
    assert metric_type(route_body(b"[]", routes)) == "other"
    invoice = route_body((PAYLOADS / "InvoiceCreate.json").read_bytes(), routes)
    assert metric_type(invoice) == INVOICE_EVENT_TYPE


def test_kind_values_are_stable_labels() -> None:
    """Kind members are the strings used as metric labels."""
    assert [str(k) for k in Kind] == ["routed", "unrouted", "deadletter"]


# --- the routes file ----------------------------------------------------------------------


def test_load_routes_reads_the_shipped_file(routes: Routes) -> None:
    """The shipped config/routes.toml maps the eight prefixes and overrides nothing."""
    assert routes.prefix == PREFIX
    assert dict(routes.families) == {
        "Contact": "contacts",
        "Appointment": "appointments",
        "Opportunity": "opportunities",
        "Invoice": "invoices",
        "Note": "notes",
        "Task": "tasks",
        "InboundMessage": "messages",
        "OutboundMessage": "messages",
    }
    lengths = [len(p) for p, _ in routes.families]
    assert lengths == sorted(lengths, reverse=True)
    assert dict(routes.overrides) == {}


def test_routes_are_immutable(routes: Routes) -> None:
    """Neither the Routes nor its overrides mapping can be changed after loading."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        routes.prefix = "other"  # type: ignore[misc]  # assigning a frozen field on purpose
    with pytest.raises(TypeError):
        routes.overrides["ContactCreate"] = "x"  # type: ignore[index]  # read-only on purpose


def test_load_routes_applies_the_prefix(tmp_path: Path) -> None:
    """Family topics, unrouted and deadletter all live under the given prefix."""
    routes = load_routes(ROUTES_TOML, "acme.prod-1")
    assert route_obj({"type": "TaskCreate"}, routes).topic == "acme.prod-1.tasks"
    assert route_obj({"type": "AppInstall"}, routes).topic == "acme.prod-1.apps"
    assert route_obj({"type": "AppExploded"}, routes).topic == "acme.prod-1.unrouted"
    assert route_body(b"1", routes).topic == "acme.prod-1.deadletter"


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        ("[families\n", "not valid TOML"),
        ('[families]\nContact = "contacts"\nContact = "again"\n', "not valid TOML"),
        ("", "[families]"),
        ('[topics]\nContactDelete = "x"\n', "[families]"),
        ('families = "contacts"\n', "[families]"),
        ('[families]\nContact = "contacts"\n[topic]\nContactDelete = "x"\n', "'topic'"),
        ("[families]\nContact = 3\n", "Contact"),
        ('[families]\nContact = "contacts"\nTask = ["tasks"]\n', "Task"),
        ('[families]\nContact = "con tacts"\n', "Contact"),
        ('[families]\nNote = "notes/x"\n', "Note"),
        ('[families]\nNote = ""\n', "Note"),
        ('[families]\nNote = "unrouted"\n', "Note"),
        ('[families]\nNote = "deadletter"\n', "Note"),
        ('[families]\n"Contact Create" = "contacts"\n', "Contact Create"),
        ('[families]\n"" = "contacts"\n', "''"),
        ('[families]\n[topics]\nContactDelete = "crm contact"\n', "ContactDelete"),
        ('[families]\n[topics]\nContactDelete = ".."\n', "ContactDelete"),
        ("[families]\n[topics]\nContactDelete = 5\n", "ContactDelete"),
        ("[families]\n[topics]\nContactDelete = {x = 1}\n", "ContactDelete"),
        (f'[families]\n[topics]\nContactDelete = "{"t" * 250}"\n', "ContactDelete"),
    ],
)
def test_load_routes_rejects_a_malformed_file(tmp_path: Path, text: str, culprit: str) -> None:
    """A malformed routes file raises RoutesError naming the file and the bad key."""
    path = tmp_path / "bad-routes.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RoutesError) as info:
        load_routes(path, PREFIX)
    assert str(path) in str(info.value)
    assert culprit in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_routes_rejects_a_topics_table_that_is_not_a_table(tmp_path: Path) -> None:
    """A [topics] key that is not a table is rejected, naming the file and the table."""
    path = tmp_path / "bad-routes.toml"
    path.write_text('topics = "x"\n[families]\n', encoding="utf-8")
    with pytest.raises(RoutesError, match=r"\[topics\] must be a table") as info:
        load_routes(path, PREFIX)
    assert str(path) in str(info.value)


def test_load_routes_rejects_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    """A routes file that is not UTF-8 is rejected as invalid TOML, naming the file."""
    path = tmp_path / "bad-routes.toml"
    path.write_bytes(b'[families]\nContact = "contacts\xff"\n')
    with pytest.raises(RoutesError, match="not valid TOML") as info:
        load_routes(path, PREFIX)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("prefix", ["", "hoop ai", "hoopai/", ".", "..", "p" * 240])
def test_load_routes_rejects_a_bad_prefix(prefix: str) -> None:
    """A topic prefix that cannot start a Kafka topic name is rejected."""
    with pytest.raises(RoutesError, match="topic prefix"):
        load_routes(ROUTES_TOML, prefix)


def test_load_routes_rejects_a_family_topic_that_is_too_long(tmp_path: Path) -> None:
    """A prefix and family longer together than Kafka allows are rejected."""
    with pytest.raises(RoutesError, match="Note"):
        routes_from(tmp_path, f'[families]\nNote = "{"n" * 200}"\n', prefix="p" * 60)


# --- properties ---------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
TYPE_VALUES = st.sampled_from(sorted(KNOWN_EVENT_TYPES)) | st.text() | JSON_VALUES
EVENT_KEYS = st.sampled_from(["type", "altType", "altId", "_id", "invoiceNumber", "locationId"])


@settings(database=None, max_examples=300)
@given(body=st.binary(max_size=512))
def test_route_never_raises_for_arbitrary_bytes(routes: Routes, body: bytes) -> None:
    """Any bytes at all route somewhere under the prefix, with a consistent kind."""
    got = route(parse_event(body), routes)
    assert got.topic.startswith(PREFIX + ".")
    assert (got.reason is not None) == (got.kind is Kind.DEADLETTER)
    assert metric_type(got) in routes.catalogue.names() | {"other"}


@settings(database=None, max_examples=300)
@given(
    event=st.dictionaries(EVENT_KEYS | st.text(max_size=8), JSON_VALUES, max_size=6),
    type_value=TYPE_VALUES,
)
def test_route_never_raises_for_any_json_object(
    routes: Routes, event: dict[str, object], type_value: object
) -> None:
    """Any JSON object routes under the prefix; a string type is kept verbatim unless known."""
    event["type"] = type_value
    got = route_obj(event, routes)
    assert got.topic.startswith(PREFIX + ".")
    assert got.kind is not Kind.DEADLETTER
    assert (got.kind is Kind.ROUTED) == (got.topic != PREFIX + ".unrouted")
    if isinstance(type_value, str) and not got.recognised:
        assert got.event_type == type_value


def test_all_topics_lists_families_overrides_and_reserved(tmp_path: Path) -> None:
    """all_topics() names every topic routing can produce to, once each."""
    path = tmp_path / "routes.toml"
    path.write_text(
        '[families]\nContact = "contacts"\nNote = "notes"\n[topics]\nNoteCreate = "x.y"\n'
    )
    families = {f"p.{family}" for family in load_catalogue().families}
    assert all_topics(load_routes(path, "p")) == sorted(
        families | {"p.contacts", "p.deadletter", "p.notes", "p.unrouted", "x.y"}
    )
