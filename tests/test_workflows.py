"""Workflow sources, pure parts: tokens, the ``[workflows.<name>]`` tables, the record."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.errors import ConfigError
from relay.ingress.intake import MAX_FIELD_CHARS, Intake, field_at, workflow_intake
from relay.ingress.routing import Kind, load_routes
from relay.ingress.tokens import TokenSet, bad_token, from_header, from_query
from relay.settings import Settings
from relay.workflows import (
    DEFAULT_KEY,
    Idempotency,
    WorkflowSource,
    check_sources,
    load_tokens,
    parse_sources,
    topic_of,
)
from tests.relayutil import ROOT

TOKEN = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"
WHEN = datetime(2026, 12, 1, 10, 0, 0, 123000, tzinfo=UTC)


# --- tokens ------------------------------------------------------------------------------


def test_token_set_accepts_each_token_and_nothing_else() -> None:
    """Both configured tokens pass; near misses, the empty token and None do not."""
    tokens = TokenSet.of([TOKEN, OTHER])
    assert tokens.accepts(TOKEN)
    assert tokens.accepts(OTHER)
    for presented in (
        None,
        b"",
        TOKEN + b"\n",
        TOKEN[:-1],
        b"X" + TOKEN[1:],
        TOKEN[:-1] + b"X",
        TOKEN + OTHER,
        TOKEN.upper(),
    ):
        assert not tokens.accepts(presented), presented
    assert not TokenSet().accepts(b"")
    assert not TokenSet().accepts(TOKEN)


def test_token_set_keeps_digests_only() -> None:
    """The set holds SHA-256 digests, and its repr shows none of them."""
    tokens = TokenSet.of([TOKEN])
    assert tokens.digests == (hashlib.sha256(TOKEN).digest(),)
    assert TOKEN.decode() not in repr(tokens)
    assert tokens.digests[0].hex() not in repr(tokens)
    assert tokens.overlaps(TokenSet.of([OTHER, TOKEN]))
    assert not tokens.overlaps(TokenSet.of([OTHER]))


@pytest.mark.parametrize(
    ("values", "bearer", "expected"),
    [
        ([f"Bearer {TOKEN.decode()}"], True, TOKEN),
        ([f"bearer  {TOKEN.decode()}"], True, TOKEN),
        ([TOKEN.decode()], True, None),  # no scheme where Bearer is expected
        ([f"Basic {TOKEN.decode()}"], True, None),
        (["Bearer "], True, b""),
        ([], True, None),
        ([f"Bearer {TOKEN.decode()}"] * 2, True, None),  # sent twice
        ([TOKEN.decode()], False, TOKEN),
        ([f"Bearer {TOKEN.decode()}"], False, b"Bearer " + TOKEN),  # a custom header is raw
        ([TOKEN.decode(), TOKEN.decode()], False, None),
        ([""], False, b""),
    ],
)
def test_token_from_header(values: list[str], bearer: bool, expected: bytes | None) -> None:
    """The one value of the header, with or without the Bearer scheme."""
    assert from_header(values, bearer=bearer) == expected


def test_token_from_query() -> None:
    """The one value of the parameter; none or two are no token."""
    assert from_query([TOKEN.decode()]) == TOKEN
    assert from_query([]) is None
    assert from_query([TOKEN.decode(), OTHER.decode()]) is None


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (TOKEN, None),
        (b"short", "5 bytes"),
        (b"", "0 bytes"),
        (TOKEN + b" x", "a space"),
        (TOKEN + b"\n", "a control character"),
        (TOKEN + "é".encode(), "non-ASCII"),
        (b"x" * 4097, "4097 bytes"),
    ],
)
def test_bad_token_says_why_without_quoting(token: bytes, problem: str | None) -> None:
    """A token is 16 to 4096 visible ASCII bytes; the reason never quotes the token."""
    found = bad_token(token)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
        assert token.decode(errors="replace") not in found or not token


# --- the [workflows.<name>] tables --------------------------------------------------------


def test_parse_defaults_and_every_key() -> None:
    """A table with only token_files gets the defaults; every key is read when given."""
    minimal, full = parse_sources(
        {
            "leads": {"token_files": ["/run/leads"]},
            "orders-2": {
                "token_files": ["/a", "/b"],
                "token_env": ["ORDERS_TOKEN"],
                "token_query": "secret",
                "topic": "shop.orders",
                "key": "customData.shop_id",
                "idempotency": "field",
                "idempotency_field": "customData.order_id",
            },
        },
        "relay.toml",
    )
    assert minimal == WorkflowSource(name="leads", token_files=(Path("/run/leads"),))
    assert (minimal.key, minimal.idempotency, minimal.bearer) == (
        DEFAULT_KEY,
        Idempotency.NONE,
        True,
    )
    assert minimal.token_location() == "Authorization: Bearer <token>"
    assert topic_of(minimal, "acme") == "acme.workflow.leads"
    assert full.token_files == (Path("/a"), Path("/b"))
    assert full.token_env == ("ORDERS_TOKEN",)
    assert (full.token_query, full.bearer) == ("secret", False)
    assert full.token_location() == "query parameter secret"
    assert topic_of(full, "acme") == "shop.orders"
    assert full.key == ("customData", "shop_id")
    assert (full.idempotency, full.idempotency_field) == (
        Idempotency.FIELD,
        ("customData", "order_id"),
    )
    (custom,) = parse_sources(
        {"x": {"token_files": ["/t"], "token_header": "X-Hook-Token", "key": ""}}, "f"
    )
    assert (custom.bearer, custom.key, custom.token_location()) == (
        False,
        (),
        "header X-Hook-Token",
    )


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"leads": {"token": "hunter2hunter2hunter2"}}, r"leads\]\.token: a token never goes"),
        ({"leads": {"tokens": ["x"]}}, r"a token never goes in the settings file"),
        ({"leads": {}}, r"no token: set token_files"),
        ({"leads": {"token_files": "/one"}}, r"token_files: expected a list"),
        ({"leads": {"token_files": ["/t"], "colour": "x"}}, r"unknown key 'colour'"),
        ({"Leads": {"token_files": ["/t"]}}, r"\[workflows\.Leads\]: a name is"),
        ({"a/b": {"token_files": ["/t"]}}, r"a name is"),
        ({"leads": "x"}, r"expected a table"),
        (
            {"leads": {"token_files": ["/t"], "token_header": "X-A", "token_query": "a"}},
            r"token_header and token_query: set one",
        ),
        ({"leads": {"token_files": ["/t"], "token_header": "X A"}}, r"token_header='X A'"),
        ({"leads": {"token_files": ["/t"], "topic": "a b"}}, r"topic='a b': not a valid"),
        ({"leads": {"token_files": ["/t"], "key": "a..b"}}, r"key='a\.\.b'"),
        ({"leads": {"token_files": ["/t"], "key": 3}}, r"key: expected a string"),
        ({"leads": {"token_files": ["/t"], "idempotency": "maybe"}}, r"none, digest, field"),
        ({"leads": {"token_files": ["/t"], "idempotency": "field"}}, r"needs idempotency_field"),
        (
            {"leads": {"token_files": ["/t"], "idempotency_field": "id"}},
            r'only with idempotency = "field"',
        ),
    ],
)
def test_parse_refuses_naming_the_key(tables: dict[str, Any], message: str) -> None:
    """Each mistake in a table is a ConfigError naming the table and the key."""
    with pytest.raises(ConfigError, match=message) as caught:
        parse_sources(tables, "relay.toml")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="must be a table"):
        parse_sources(["leads"], "relay.toml")


def _source(tmp_path: Path, name: str, *contents: bytes, **keys: Any) -> WorkflowSource:
    """A parsed source whose token files hold ``contents``."""
    files = []
    for i, content in enumerate(contents):
        path = tmp_path / f"{name}-{i}.token"
        path.write_bytes(content)
        files.append(str(path))
    (source,) = parse_sources({name: {"token_files": files, **keys}}, "relay.toml")
    return source


def test_load_tokens_strips_one_trailing_newline(tmp_path: Path) -> None:
    """A file's content without its trailing newline (LF or CRLF) is the token."""
    for content in (TOKEN, TOKEN + b"\n", TOKEN + b"\r\n"):
        (loaded,) = load_tokens((_source(tmp_path, "a", content),), {})
        assert loaded.tokens == TokenSet.of([TOKEN])
    (both,) = load_tokens(
        (_source(tmp_path, "b", TOKEN, token_env=["B_TOKEN"]),), {"B_TOKEN": OTHER.decode()}
    )
    assert both.tokens.accepts(TOKEN)
    assert both.tokens.accepts(OTHER)
    assert len(both.tokens) == 2


@pytest.mark.parametrize(
    ("contents", "environ", "message"),
    [
        ((TOKEN + b"\n\n",), {}, r"the token is .* a control character"),
        ((b"short\n",), {}, r"the token is 5 bytes"),
        ((b"\n",), {}, r"the token is 0 bytes"),
        ((TOKEN,), {"X": ""}, r"token_env: X: the token is 0 bytes"),
    ],
)
def test_load_tokens_refuses_bad_tokens_without_quoting(
    tmp_path: Path, contents: tuple[bytes, ...], environ: dict[str, str], message: str
) -> None:
    """A short, empty or space-carrying token stops the relay, naming its file, not it."""
    keys = {"token_env": list(environ)} if environ else {}
    with pytest.raises(ConfigError, match=message) as caught:
        load_tokens((_source(tmp_path, "a", *contents, **keys),), environ)
    assert TOKEN.decode() not in str(caught.value)


def test_load_tokens_refuses_missing_and_shared_tokens(tmp_path: Path) -> None:
    """An unreadable file, an unset variable, and one token for two sources are errors."""
    (missing,) = parse_sources({"a": {"token_files": [str(tmp_path / "nope")]}}, "f")
    with pytest.raises(ConfigError, match=r"\[workflows\.a\] token_files: .*nope: unreadable"):
        load_tokens((missing,), {})
    (unset,) = parse_sources({"a": {"token_env": ["NOPE"]}}, "f")
    with pytest.raises(ConfigError, match=r"token_env: NOPE is not set"):
        load_tokens((unset,), {})
    shared = (_source(tmp_path, "a", TOKEN), _source(tmp_path, "b", OTHER, TOKEN + b"\n"))
    with pytest.raises(ConfigError, match=r"\[workflows\.b\]: a token .* \[workflows\.a\]"):
        load_tokens(shared, {})


def test_check_sources_needs_tokens_and_a_valid_topic() -> None:
    """No token, or a prefix that makes the default topic invalid, is refused."""
    with pytest.raises(ConfigError, match=r"\[workflows\.a\]: no accepted token"):
        check_sources((WorkflowSource(name="a"),), "hoopai")
    with_token = WorkflowSource(name="a", tokens=TokenSet.of([TOKEN]))
    check_sources((with_token,), "hoopai")
    with pytest.raises(ConfigError, match=r"topic 'x" + "y" * 10 + r".*not a valid"):
        check_sources((with_token,), "x" + "y" * 250)


def test_settings_file_reads_the_tables(tmp_path: Path) -> None:
    """RELAY_CONFIG_FILE's [workflows.<name>] tables load with their tokens, validated."""
    (tmp_path / "leads.token").write_bytes(TOKEN + b"\n")
    config = tmp_path / "relay.toml"
    config.write_text(
        'topic_prefix = "acme"\n'
        "[workflows.leads]\n"
        f'token_files = ["{tmp_path / "leads.token"}"]\n'
        'key = "contact.id"\n',
        encoding="utf-8",
    )
    settings = Settings.load({"RELAY_CONFIG_FILE": str(config)})
    (leads,) = settings.workflows
    assert (leads.name, leads.key, topic_of(leads, settings.topic_prefix)) == (
        "leads",
        ("contact", "id"),
        "acme.workflow.leads",
    )
    assert leads.tokens.accepts(TOKEN)
    assert TOKEN.decode() not in repr(settings)
    config.write_text(f'[workflows.leads]\ntoken = "{TOKEN.decode()}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="a token never goes") as caught:
        Settings.load({"RELAY_CONFIG_FILE": str(config)})
    assert TOKEN.decode() not in str(caught.value)


# --- the record ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("location", "id"), "loc-1"),
        (("n",), "42"),
        (("missing",), None),
        (("location", "id", "deeper"), None),
        (("flag",), None),
        (("ratio",), None),
        (("empty",), None),
        (("long",), None),
        (("list",), None),
        ((), None),
    ],
)
def test_field_at(path: tuple[str, ...], expected: str | None) -> None:
    """A string or integer at a dotted path; anything else, or nothing, is None."""
    event: dict[str, object] = {
        "location": {"id": "loc-1"},
        "n": 42,
        "flag": True,
        "ratio": 0.5,
        "empty": "",
        "long": "x" * (MAX_FIELD_CHARS + 1),
        "list": ["a"],
    }
    assert field_at(event, path) == expected


ROUTES = load_routes(ROOT / "config" / "routes.toml", "acme")
STANDARD = (
    b'{"contact_id":"c-1","first_name":"Ada","location":{"id":"loc-9","name":"Main"},'
    b'"workflow":{"id":"wf-1","name":"New lead"},"triggerData":{},"customData":{"n":"7"}}'
)


def _event(source: WorkflowSource, body: bytes, fresh: str = "fresh-1") -> Intake:
    """The intake of ``body`` from ``source``, received at WHEN."""
    return workflow_intake(
        body, source, ROUTES, ce_source="relay-x", received_at=WHEN, fresh_id=fresh
    )


def test_record_of_a_standard_body() -> None:
    """Body untouched, key location.id, the CloudEvents set, hoopai_auth and the name."""
    made = _event(WorkflowSource(name="leads"), STANDARD)
    record = made.record
    assert (record.topic, record.key, record.value) == ("acme.workflow.leads", b"loc-9", STANDARD)
    assert record.value is STANDARD
    assert dict(record.headers) == {
        "ce_specversion": b"1.0",
        "ce_id": b"fresh-1",
        "ce_type": b"com.hoopai.workflow.leads",
        "ce_source": b"relay-x",
        "ce_time": b"2026-12-01T10:00:00.123Z",
        "content-type": b"application/json",
        "hoopai_auth": b"token",
        "hoopai_workflow": b"leads",
        "hoopai_key_source": b"path",
    }
    assert len(record.headers) == len(dict(record.headers))
    assert (made.route.kind, made.ce_id, made.dedup_key) == (Kind.ROUTED, "fresh-1", None)


def test_missing_key_field_gives_no_key() -> None:
    """The documented fallback: no such field, no key (the producer spreads the records)."""
    made = _event(WorkflowSource(name="leads", key=("contact", "id")), STANDARD)
    assert made.record.key is None
    assert dict(made.record.headers)["hoopai_key_source"] == b"none"
    assert _event(WorkflowSource(name="leads", key=()), STANDARD).record.key is None


def test_idempotency_choices() -> None:
    """none: the fresh id; digest: the body's; field: the value, else the fresh id."""
    digest = "sha256:" + hashlib.sha256(STANDARD).hexdigest()
    by_digest = _event(WorkflowSource(name="a", idempotency=Idempotency.DIGEST), STANDARD)
    assert (by_digest.ce_id, by_digest.dedup_key) == (digest, f"workflow:a:{digest}")
    field = WorkflowSource(
        name="a", idempotency=Idempotency.FIELD, idempotency_field=("customData", "n")
    )
    assert (_event(field, STANDARD).ce_id, _event(field, STANDARD).dedup_key) == (
        "7",
        "workflow:a:7",
    )
    thin = orjson.dumps({"customData": {}})
    assert (_event(field, thin).ce_id, _event(field, thin).dedup_key) == ("fresh-1", None)
    none = WorkflowSource(name="a")
    assert _event(none, STANDARD, "f-1").ce_id != _event(none, STANDARD, "f-2").ce_id


@pytest.mark.parametrize(("body", "reason"), [(b"[1]", b"not_object"), (b"\xff", b"not_json")])
def test_non_object_goes_to_the_dead_letter_topic(body: bytes, reason: bytes) -> None:
    """Not a JSON object: <prefix>.deadletter, no key, with the reason and the source."""
    made = _event(WorkflowSource(name="leads", idempotency=Idempotency.DIGEST), body)
    headers = dict(made.record.headers)
    assert (made.record.topic, made.record.key, made.route.kind) == (
        "acme.deadletter",
        None,
        Kind.DEADLETTER,
    )
    assert headers["hoopai_deadletter_reason"] == reason
    assert headers["hoopai_workflow"] == b"leads"
    assert re.fullmatch(rb"sha256:[0-9a-f]{64}", headers["ce_id"])


def test_token_variables_pass_the_unknown_variable_check(tmp_path: Path) -> None:
    """A RELAY_* variable named in token_env is a token, not a mistyped setting; others are."""
    config = tmp_path / "relay.toml"
    config.write_text('[workflows.leads]\ntoken_env = ["RELAY_LEADS_TOKEN"]\n', encoding="utf-8")
    environ = {"RELAY_CONFIG_FILE": str(config), "RELAY_LEADS_TOKEN": TOKEN.decode()}
    (leads,) = Settings.load(environ).workflows
    assert leads.tokens.accepts(TOKEN)
    with pytest.raises(ConfigError, match="RELAY_LEADS_TOKN: no such setting"):
        Settings.load({**environ, "RELAY_LEADS_TOKN": "x"})
