"""Workflow webhooks end to end: the real relay on real sockets, the real broker.

Each refusal is proved to have produced nothing the way the signed tests do: after the
refused requests, one accepted sentinel must sit at offset 0 of the topic.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay import appkeys
from relay.ingress.limits import LINGER_S
from relay.ingress.tokens import TokenSet
from relay.settings import Settings
from relay.tools.deliveries import as_delivery, sign_ed25519
from relay.tools.samples import WORKFLOW_SAMPLES, sample
from relay.workflows import Idempotency, WorkflowSource
from tests import rawhttp, relayproc
from tests.cliutil import answers, cli_env, relay_cli, relay_cli_async
from tests.kafkautil import consume, unique_topic
from tests.relayutil import ROOT, RunningRelay, StartRelay, scrape

#: where the custom-header and query sources expect their tokens (names, not secrets)
HOOK_HEADER = "X-Hook-Token"
HOOK_PARAMETER = "key"
QUERY_PARAMETER = "token"
STANDARD = sample("Webhook", WORKFLOW_SAMPLES)
CUSTOM = sample("CustomWebhook", WORKFLOW_SAMPLES)


def token() -> str:
    """A fresh token, as `openssl rand -hex 16` makes one."""
    return secrets.token_hex(16)


def source(name: str, *tokens: str, **fields: Any) -> WorkflowSource:
    """A configured source accepting ``tokens``."""
    return WorkflowSource(name=name, tokens=TokenSet.of(t.encode() for t in tokens), **fields)


def url(relay: RunningRelay, name: str, query: str = "") -> str:
    """A workflow source's URL on the relay."""
    return f"{relay.webhook_url}/workflows/{name}{query}"


def bearer(value: str) -> dict[str, str]:
    """The default token header."""
    return {"Authorization": f"Bearer {value}"}


def headers_of(record: Any) -> dict[str, bytes]:
    """A record's headers as a dict (the relay writes each name once)."""
    return {name: bytes(value) for name, value in record.headers}


def bootstrap(relay: RunningRelay) -> str:
    """The relay's bootstrap servers."""
    return ",".join(relay.settings.kafka_bootstrap_servers)


async def post(
    http: aiohttp.ClientSession,
    target: str,
    body: bytes,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
) -> tuple[int, bytes]:
    """POST and return the status and the raw answer."""
    async with http.post(target, data=body, headers=headers) as response:
        return response.status, await response.read()


async def test_right_token_lands_the_body_byte_for_byte_with_its_key(
    http: aiohttp.ClientSession, start_relay: StartRelay
) -> None:
    """Bearer, custom header and query tokens: 200, the exact body, the key, the headers."""
    bearer_token, header_token, query_token = token(), token(), token()
    forms_topic = unique_topic("forms")
    relay = await start_relay(
        workflows=(
            source("leads", bearer_token),
            source("shop", header_token, token_header=HOOK_HEADER, key=("contact", "id")),
            source("forms", query_token, token_query=HOOK_PARAMETER, topic=forms_topic, key=()),
        )
    )
    status, answer = await post(http, url(relay, "leads"), STANDARD, bearer(bearer_token))
    assert status == 200, answer
    accepted = orjson.loads(answer)
    assert (accepted["outcome"], accepted["topic"], accepted["offset"]) == (
        "accepted",
        relay.topic("workflow.leads"),
        0,
    )
    (record,) = await consume(bootstrap(relay), relay.topic("workflow.leads"), 1)
    assert record.value == STANDARD  # pretty-printed, as the file is: untouched
    assert record.key == b"ve9EPM428h8vShlRW1KT"  # location.id
    headers = headers_of(record)
    assert headers["ce_type"] == b"com.hoopai.workflow.leads"
    assert headers["ce_id"].decode() == accepted["id"]
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_source"] == b"hoopai-relay"
    assert headers["content-type"] == b"application/json"
    assert (headers["hoopai_auth"], headers["hoopai_workflow"]) == (b"token", b"leads")
    assert bearer_token.encode() not in b"".join(headers.values())

    custom = {HOOK_HEADER: header_token}
    assert (await post(http, url(relay, "shop"), CUSTOM, custom))[0] == 200
    (record,) = await consume(bootstrap(relay), relay.topic("workflow.shop"), 1)
    assert (record.value, record.key) == (CUSTOM, b"nmFmQEsNgz6AVpgLVUJ0")

    assert (await post(http, url(relay, "forms", f"?key={query_token}"), CUSTOM))[0] == 200
    (record,) = await consume(bootstrap(relay), forms_topic, 1)
    assert (record.value, record.key) == (CUSTOM, None)


async def test_refused_tokens_get_one_401_and_produce_nothing(
    http: aiohttp.ClientSession, start_relay: StartRelay
) -> None:
    """Wrong, missing, another source's, newline-suffixed, empty and repeated: the same 401."""
    right, others, in_query = token(), token(), token()
    relay = await start_relay(
        workflows=(
            source("leads", right),
            source("other", others),
            source("forms", in_query, token_query=QUERY_PARAMETER),
        )
    )
    leads, forms = url(relay, "leads"), url(relay, "forms")
    cases: list[tuple[str, str, dict[str, str] | list[tuple[str, str]] | None]] = [
        ("wrong", leads, bearer(token())),
        ("first byte differs", leads, bearer(("0" if right[0] != "0" else "1") + right[1:])),
        ("last byte differs", leads, bearer(right[:-1] + ("0" if right[-1] != "0" else "1"))),
        ("missing", leads, None),
        ("another source's", leads, bearer(others)),
        ("empty bearer", leads, {"Authorization": "Bearer "}),
        ("empty header", leads, {"Authorization": ""}),
        ("no scheme", leads, {"Authorization": right}),
        ("sent twice", leads, [("Authorization", f"Bearer {right}")] * 2),
        ("in the query instead", f"{leads}?token={right}", None),
        ("query: wrong", f"{forms}?token={token()}", None),
        ("query: missing", forms, None),
        ("query: another source's", f"{forms}?token={right}", None),
        ("query: trailing newline", f"{forms}?token={quote(in_query + chr(10))}", None),
        ("query: empty", f"{forms}?token=", None),
        ("query: sent twice", f"{forms}?token={in_query}&token={in_query}", None),
        ("query: in a header instead", forms, bearer(in_query)),
    ]
    answers = set()
    for name, target, headers in cases:
        status, answer = await post(http, target, STANDARD, headers)
        assert status == 401, (name, answer)
        answers.add(answer)
    # In a header, a trailing newline cannot reach the relay as part of the value: the line
    # ends there, and aiohttp's parser refuses the request (400) before any handler runs.
    port = int(relay.url.rsplit(":", 1)[1])
    header = (b"Authorization", f"Bearer {right}\n".encode())
    raw = rawhttp.request(b"{}", [header], path=b"/webhooks/hoopai/workflows/leads")
    assert (await rawhttp.exchange(port, [raw])).status == 400

    assert answers == {b'{"outcome":"unauthenticated","reason":"workflow_token"}'}
    metrics = relay.app[appkeys.METRICS]
    refused = metrics.workflow_requests.labels(source="leads", outcome="unauthenticated")
    assert refused._value.get() >= 10

    for target, headers, topic in (
        (leads, bearer(right), "workflow.leads"),
        (f"{forms}?token={in_query}", None, "workflow.forms"),
    ):
        sentinel = orjson.dumps({"sentinel": topic})
        assert (await post(http, target, sentinel, headers))[0] == 200
        (record,) = await consume(bootstrap(relay), relay.topic(topic), 1)
        assert (record.value, record.offset) == (sentinel, 0)


async def test_two_tokens_both_work_and_after_removing_one_only_the_other(
    http: aiohttp.ClientSession, start_relay: StartRelay, tmp_path: Path
) -> None:
    """A rotation from the settings file: both tokens, then (restarted) only the new one."""
    old, new = token(), token()
    (tmp_path / "old.token").write_text(old + "\n")
    (tmp_path / "new.token").write_text(new + "\n")
    config = tmp_path / "relay.toml"

    def configured(*files: str) -> Settings:
        listed = ", ".join(f'"{tmp_path / f}"' for f in files)
        config.write_text(f"[workflows.leads]\ntoken_files = [{listed}]\n")
        return Settings.load({"RELAY_CONFIG_FILE": str(config)})

    both = await start_relay(workflows=configured("old.token", "new.token").workflows)
    for value in (old, new):
        assert (await post(http, url(both, "leads"), STANDARD, bearer(value)))[0] == 200
    only_new = await start_relay(workflows=configured("new.token").workflows)
    assert (await post(http, url(only_new, "leads"), STANDARD, bearer(old)))[0] == 401
    assert (await post(http, url(only_new, "leads"), STANDARD, bearer(new)))[0] == 200
    (record,) = await consume(bootstrap(only_new), only_new.topic("workflow.leads"), 1)
    assert record.offset == 0  # the old token's request produced nothing


async def test_signed_and_workflow_deliveries_do_not_cross(
    http: aiohttp.ClientSession, start_relay: StartRelay, ed25519_key: Ed25519PrivateKey
) -> None:
    """A signed delivery on a workflow path, and a workflow body on the signed path: 401."""
    right = token()
    relay = await start_relay(workflows=(source("leads", right),))
    signed = as_delivery({"type": "ContactCreate", "locationId": "loc-x"})
    signature = {"X-GHL-Signature": sign_ed25519(ed25519_key, signed)}
    status, answer = await post(http, url(relay, "leads"), signed, signature)
    assert (status, orjson.loads(answer)["reason"]) == (401, "workflow_token")
    status, answer = await post(http, relay.webhook_url, STANDARD, bearer(right))
    assert (status, orjson.loads(answer)["reason"]) == (401, "missing")

    # Sentinels: nothing reached the workflow topic, nor the signed path's topics.
    assert (await post(http, url(relay, "leads"), STANDARD, bearer(right)))[0] == 200
    (record,) = await consume(bootstrap(relay), relay.topic("workflow.leads"), 1)
    assert (record.value, record.offset) == (STANDARD, 0)
    # A workflow body, had it been accepted there, would be unrouted (it names no event).
    unknown = as_delivery({"type": "SomeFutureEvent", "locationId": "loc-x"})
    unknown_signature = {"X-GHL-Signature": sign_ed25519(ed25519_key, unknown)}
    assert (await post(http, relay.webhook_url, unknown, unknown_signature))[0] == 200
    (record,) = await consume(bootstrap(relay), relay.topic("unrouted"), 1)
    assert (record.value, record.offset) == (unknown, 0)


async def test_unknown_workflow_name_is_404(
    http: aiohttp.ClientSession, start_relay: StartRelay
) -> None:
    """A name no table configures: 404, counted without its name; with no source too."""
    right = token()
    relay = await start_relay(workflows=(source("leads", right),))
    for name in ("nope", "Leads", "leads-2"):
        status, answer = await post(http, url(relay, name), STANDARD, bearer(right))
        assert (status, orjson.loads(answer)["outcome"]) == (404, "not_found")
    text = await scrape(http, relay)
    assert 'relay_requests_total{event_type="none",outcome="not_found"} 3.0' in text
    assert "nope" not in text
    bare = await start_relay()
    assert (await post(http, url(bare, "leads"), STANDARD, bearer(right)))[0] == 404


async def test_the_signed_paths_guarantees_hold(
    http: aiohttp.ClientSession, start_relay: StartRelay, tmp_path: Path
) -> None:
    """Body cap 413, dead letter for a non-object, in-flight cap and no Kafka: 429."""
    right = token()
    relay = await start_relay(workflows=(source("leads", right),), max_body_bytes=1024)
    status, answer = await post(http, url(relay, "leads"), b"x" * 4096, bearer(right))
    assert (status, orjson.loads(answer)["outcome"]) == (413, "too_large")
    # ... and a stranger's oversized body is refused for its token, unread.
    assert (await post(http, url(relay, "leads"), b"x" * 4096, bearer(token())))[0] == 401
    # A stranger's body still to come: 401 at once, then the connection closed once the
    # relay's linger (limits.LINGER_S) is over, the body never read into the handler.
    head = rawhttp.request(
        None,
        [(b"Authorization", f"Bearer {token()}".encode())],
        path=b"/webhooks/hoopai/workflows/leads",
        content_length=900,
        close=False,
    )
    reply = await rawhttp.exchange(int(relay.url.rsplit(":", 1)[1]), [head], wait=5)
    assert (reply.status, reply.closed) == (401, True)
    assert reply.seconds < LINGER_S + 2  # the relay's linger bound, not aiohttp's 10 s
    status, answer = await post(http, url(relay, "leads"), b"[1, 2]", bearer(right))
    assert (status, orjson.loads(answer)["outcome"]) == (200, "deadletter")
    (record,) = await consume(bootstrap(relay), relay.topic("deadletter"), 1)
    assert record.value == b"[1, 2]"
    assert headers_of(record)["hoopai_deadletter_reason"] == b"not_object"
    assert headers_of(record)["hoopai_workflow"] == b"leads"

    admission = relay.app[appkeys.ADMISSION]
    entered = 0
    while admission.enter():  # as if max_in_flight requests were in progress
        entered += 1
    try:
        async with http.post(url(relay, "leads"), data=STANDARD, headers=bearer(right)) as shed:
            assert (shed.status, shed.headers["Retry-After"]) == (429, "5")
            assert (await shed.json())["error"] == "overloaded"
    finally:
        for _ in range(entered):
            admission.leave()
    assert entered == relay.settings.max_in_flight

    down = await start_relay(
        wait_connected=False,
        workflows=(source("leads", right),),
        kafka_bootstrap_servers=("127.0.0.1:1",),
        ack_timeout_ms=1000,
    )
    async with http.post(url(down, "leads"), data=STANDARD, headers=bearer(right)) as response:
        assert (response.status, response.headers["Retry-After"]) == (429, "5")
        assert (await response.json())["error"] == "not_connected"

    spooled = await start_relay(
        wait_connected=False,
        workflows=(source("leads", right),),
        kafka_bootstrap_servers=("127.0.0.1:1",),
        spool_dir=tmp_path / "spool",
        spool_after_ms=200,
    )
    status, answer = await post(http, url(spooled, "leads"), STANDARD, bearer(right))
    assert (status, orjson.loads(answer)["outcome"]) == (200, "spooled")


async def test_idempotency_digest_dedups_and_none_does_not(
    http: aiohttp.ClientSession, start_relay: StartRelay
) -> None:
    """digest: an identical body is a duplicate, not produced; none: both are produced."""
    a, b = token(), token()
    relay = await start_relay(
        workflows=(source("digest", a, idempotency=Idempotency.DIGEST), source("plain", b))
    )
    first = orjson.loads((await post(http, url(relay, "digest"), CUSTOM, bearer(a)))[1])
    again = orjson.loads((await post(http, url(relay, "digest"), CUSTOM, bearer(a)))[1])
    assert (first["outcome"], again["outcome"], again["id"]) == (
        "accepted",
        "duplicate",
        first["id"],
    )
    ids = []
    for _ in range(2):
        status, answer = await post(http, url(relay, "plain"), CUSTOM, bearer(b))
        assert status == 200
        ids.append(orjson.loads(answer)["id"])
    records = await consume(bootstrap(relay), relay.topic("workflow.plain"), 2)
    assert {headers_of(r)["ce_id"].decode() for r in records} == set(ids)
    assert len(set(ids)) == 2


async def test_metrics_count_by_source_and_outcome(
    http: aiohttp.ClientSession, start_relay: StartRelay
) -> None:
    """relay_workflow_requests_total{source, outcome}: configured names only."""
    right = token()
    relay = await start_relay(workflows=(source("leads", right),))
    await asyncio.gather(
        post(http, url(relay, "leads"), STANDARD, bearer(right)),
        post(http, url(relay, "leads"), STANDARD, bearer(token())),
        post(http, url(relay, "unknown"), STANDARD, bearer(right)),
    )
    text = await scrape(http, relay)
    assert 'relay_workflow_requests_total{outcome="accepted",source="leads"} 1.0' in text
    assert 'relay_workflow_requests_total{outcome="unauthenticated",source="leads"} 1.0' in text
    assert 'source="unknown"' not in text
    assert 'relay_unauthenticated_requests_total{reason="workflow_token"} 1.0' in text


@pytest.mark.parametrize("mode", ["header", "query"])
async def test_check_is_one_path_for_every_refusal(
    http: aiohttp.ClientSession, start_relay: StartRelay, mode: str
) -> None:
    """The 401's answer carries nothing of the request: same bytes, same headers."""
    right = token()
    fields = {"token_query": "t"} if mode == "query" else {}
    relay = await start_relay(workflows=(source("leads", right, **fields),))
    seen = set()
    for value in ("", "x", token(), right + "x", right[:-1]):
        target = url(relay, "leads", f"?t={value}" if mode == "query" else "")
        headers = None if mode == "query" else bearer(value)
        async with http.post(target, data=b"{}", headers=headers) as response:
            assert response.status == 401
            kept = {k: v for k, v in response.headers.items() if k.lower() != "date"}
            seen.add((await response.read(), tuple(sorted(kept.items()))))
    assert len(seen) == 1


def _write_config(folder: Path, tokens: dict[str, list[str]], **tables: str) -> Path:
    """A settings file with a [workflows.<name>] table per source, its tokens in files."""
    lines = []
    for name, values in tokens.items():
        files = []
        for i, value in enumerate(values):
            path = folder / f"{name}-{i}.token"
            path.write_text(value + "\n")
            files.append(f'"{path}"')
        lines += [f"[workflows.{name}]", f"token_files = [{', '.join(files)}]"]
        lines += tables.get(name, "").splitlines()
    config = folder / "relay.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


async def _wait_ready(http: aiohttp.ClientSession, port: int) -> None:
    """Return once the relay's /readyz answers 200 (Kafka reached), within 30 s."""
    async with asyncio.timeout(30):
        while True:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.2)


async def test_no_token_in_logs_metrics_check_config_or_kafka_headers(
    kafka_bootstrap: str, public_key_files: tuple[Path, ...], tmp_path: Path
) -> None:
    """`relay serve` at DEBUG, every outcome once: no token in any of the four outputs."""
    leads, rotated, forms = token(), token(), token()
    near_miss = leads[:-1] + ("0" if leads[-1] != "0" else "1")
    config = _write_config(
        tmp_path,
        {"leads": [leads, rotated], "forms": [forms]},
        forms=f'token_query = "{QUERY_PARAMETER}"\nidempotency = "digest"',
    )
    prefix = unique_topic("wf")
    with relayproc.serve(
        kafka_bootstrap,
        public_key_files,
        tmp_path,
        prefix,
        config_file=str(config),
        log_level="DEBUG",
        drain_delay_s="0",
    ) as relay:
        base = f"http://127.0.0.1:{relay.port}/webhooks/hoopai"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            await _wait_ready(http, relay.port)
            for target, headers, status in (
                (f"{base}/workflows/leads", bearer(leads), 200),
                (f"{base}/workflows/leads", bearer(rotated), 200),
                (f"{base}/workflows/leads", bearer(near_miss), 401),
                (f"{base}/workflows/leads", bearer(forms), 401),
                (f"{base}/workflows/forms?{QUERY_PARAMETER}={forms}", None, 200),
                (f"{base}/workflows/forms?{QUERY_PARAMETER}={forms}", None, 200),  # duplicate
                (f"{base}/workflows/forms?{QUERY_PARAMETER}={leads}", None, 401),
                (f"{base}/workflows/nope", bearer(leads), 404),
                (base, bearer(leads), 401),
            ):
                assert (await post(http, target, STANDARD, headers))[0] == status, target
        metrics = relay.scrape()
        records = await consume(kafka_bootstrap, f"{prefix}.workflow.leads", 2)
        records += await consume(kafka_bootstrap, f"{prefix}.workflow.forms", 1)
    logs = relay.log.read_text()
    checked = relay_cli(
        "check-config",
        cwd=tmp_path,
        env=cli_env(
            RELAY_CONFIG_FILE=str(config),
            RELAY_ROUTES_FILE=str(ROOT / "config" / "routes.toml"),
            RELAY_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        ),
    )
    assert checked.returncode == 0, checked.stderr
    assert "leads: POST /webhooks/hoopai/workflows/leads, 2 token(s)" in checked.stdout
    assert "forms: POST /webhooks/hoopai/workflows/forms, 1 token(s) in query" in checked.stdout
    values = b"\n".join(value for record in records for _, value in record.headers)
    assert b"hoopai_auth" not in values  # the values only: names may say "token"
    assert b"token" in values  # hoopai_auth = token: the values were read
    assert '"workflow":"leads"' in logs  # the 401s were logged, by source
    assert 'source="forms"' in metrics
    for secret in (leads, rotated, forms, near_miss):
        for name, text in (
            ("logs", logs),
            ("metrics", metrics),
            ("check-config", checked.stdout + checked.stderr),
            ("kafka headers", values.decode(errors="replace")),
        ):
            assert secret not in text, name


async def test_relay_send_posts_a_workflow_sample(start_relay: StartRelay, tmp_path: Path) -> None:
    """`relay send --workflow NAME --token-file F`: the sample lands as it is; 1 on a 401."""
    right, in_query = token(), token()
    relay = await start_relay(
        workflows=(source("leads", right), source("forms", in_query, token_query=QUERY_PARAMETER))
    )
    (tmp_path / "leads.token").write_text(right + "\n")
    (tmp_path / "forms.token").write_text(in_query)
    (tmp_path / "wrong.token").write_text(token())
    base = ("send", "--url", relay.webhook_url)
    out = await relay_cli_async(
        *base, "--workflow", "leads", "--token-file", "leads.token", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    ((status, answer),) = answers(out.stdout)
    assert (status, answer["outcome"]) == (200, "accepted")
    out = await relay_cli_async(
        *base, "--workflow", "forms", "--token-file", "forms.token",
        "--token-query", QUERY_PARAMETER, "--type", "CustomWebhook", "--count", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [s for s, _ in answers(out.stdout)] == [200, 200]
    (record,) = await consume(bootstrap(relay), relay.topic("workflow.leads"), 1)
    assert (record.value, record.key) == (STANDARD, b"ve9EPM428h8vShlRW1KT")
    records = await consume(bootstrap(relay), relay.topic("workflow.forms"), 2)
    assert [r.value for r in records] == [CUSTOM, CUSTOM]

    wrong = await relay_cli_async(
        *base, "--workflow", "leads", "--token-file", "wrong.token", cwd=tmp_path
    )
    assert wrong.returncode == 1
    assert answers(wrong.stdout)[0][0] == 401
    listed = await relay_cli_async("send", "--workflow", "x", "--type", "list", cwd=tmp_path)
    assert listed.stdout.split() == ["CustomWebhook", "Webhook"]
    alone = await relay_cli_async(*base, "--workflow", "leads", cwd=tmp_path)
    assert (alone.returncode, alone.stdout) == (2, "")
    assert "--workflow and --token-file go together" in alone.stderr
