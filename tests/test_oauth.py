"""OAUTHBEARER's token source: the client-credentials grant, its refresh, its refusals.

Against a real HTTP token endpoint on 127.0.0.1 (an aiohttp server in the test's own
process); the secure broker's tests (tests/test_secure_kafka.py) take the same provider to a
real broker and the OIDC stand-in.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from relay.errors import ConfigError
from relay.kafka.oauth import (
    ClientCredentials,
    MskIam,
    TokenError,
    TokenProvider,
    basic_authorization,
    read_answer,
    refresh_delay,
)
from relay.kafka.options import token_provider
from relay.settings import Settings

CREDS = ClientCredentials("https://idp.example/token", "relay", "s3cr:et+x", "kafka")


def test_basic_authorization_form_encodes_id_and_secret() -> None:
    """RFC 6749 2.3.1: a ':' or '+' in the secret survives, encoded before Basic."""
    header = basic_authorization("relay", "s3cr:et+x")
    decoded = base64.b64decode(header.removeprefix("Basic ")).decode()
    assert decoded == "relay:s3cr%3Aet%2Bx"


@pytest.mark.parametrize(
    ("status", "body", "outcome", "said"),
    [
        (401, b'{"error":"invalid_client","error_description":"bad secret"}', "refused",
         "refused the client: HTTP 401 invalid_client (bad secret)"),
        (400, b'{"error":"invalid_scope"}', "refused", "HTTP 400 invalid_scope"),
        (503, b'{"error":"temporarily_unavailable"}', "error", "HTTP 503"),
        (200, b"<html>", "error", "answered HTTP 200 without JSON"),
        (200, b'{"token_type":"Bearer"}', "error", "without an access_token"),
        (200, b'{"access_token":"t","token_type":"mac"}', "error", "a mac token, not Bearer"),
    ],
)  # fmt: skip
def test_refusals_and_nonsense_are_named(status: int, body: bytes, outcome: str, said: str) -> None:
    """Each bad answer is a TokenError naming the endpoint and client, with its outcome label."""
    with pytest.raises(TokenError) as caught:
        read_answer(CREDS, status, body)
    assert said in str(caught.value)
    assert "https://idp.example/token (client relay)" in str(caught.value)
    assert caught.value.outcome == outcome
    assert CREDS.client_secret not in str(caught.value)


def test_a_good_answer_and_the_refresh_point() -> None:
    """A token with ``expires_in``; the next is fetched at 80% of it, never within 1 s."""
    token = read_answer(CREDS, 200, b'{"access_token":"abc","token_type":"bearer","expires_in":20}')
    assert (token.access_token, token.lifetime_s) == ("abc", 20)
    assert "abc" not in repr(token)
    assert refresh_delay(20) == 16
    assert refresh_delay(0) == 1
    assert read_answer(CREDS, 200, b'{"access_token":"x"}').lifetime_s == 300  # unsaid


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[dict[str, Any]], Callable[[int], None]]]:
    """A token endpoint on 127.0.0.1 granting 2 s tokens; it can be told to refuse."""
    seen: list[dict[str, Any]] = []
    refuse = {"status": 0}

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        seen.append({"form": form, "authorization": request.headers.get("Authorization")})
        if refuse["status"]:
            return web.json_response({"error": "invalid_client"}, status=refuse["status"])
        return web.json_response(
            {"access_token": f"token-{len(seen)}", "token_type": "Bearer", "expires_in": 2}
        )

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    def set_refusal(status: int) -> None:
        refuse["status"] = status

    yield f"http://127.0.0.1:{port}/token", seen, set_refusal
    await runner.cleanup()


async def test_provider_shares_one_token_and_refreshes_it_before_expiry(
    endpoint: tuple[str, list[dict[str, Any]], Callable[[int], None]],
) -> None:
    """Concurrent logins share one fetch; at 80% of its 2 s the next token is already there."""
    url, seen, _ = endpoint
    outcomes: list[str] = []
    provider = TokenProvider(ClientCredentials(url, "relay", "s3cr:et", "kafka"),
                             on_fetch=outcomes.append)  # fmt: skip
    try:
        first = await asyncio.gather(*(provider.token() for _ in range(5)))
        assert first == ["token-1"] * 5
        assert seen[0]["form"] == {"grant_type": "client_credentials", "scope": "kafka"}
        assert seen[0]["authorization"] == basic_authorization("relay", "s3cr:et")
        await asyncio.sleep(1.9)  # past 1.6 s: refreshed in the background, not yet expired
        assert len(seen) == 2
        assert await provider.token() == "token-2"
        assert outcomes == ["ok", "ok"]
    finally:
        await provider.close()


async def test_provider_says_why_the_endpoint_refuses(
    endpoint: tuple[str, list[dict[str, Any]], Callable[[int], None]],
) -> None:
    """A refused client secret: TokenError with the endpoint's error, counted as refused."""
    url, _, set_refusal = endpoint
    set_refusal(401)
    outcomes: list[str] = []
    provider = TokenProvider(ClientCredentials(url, "relay", "nope"), on_fetch=outcomes.append)
    try:
        with pytest.raises(TokenError, match="refused the client: HTTP 401 invalid_client"):
            await provider.token()
    finally:
        await provider.close()
    assert outcomes == ["refused"]


async def test_provider_says_when_the_endpoint_is_unreachable() -> None:
    """Nobody on the port: TokenError naming the endpoint, counted as an error."""
    outcomes: list[str] = []
    creds = ClientCredentials("http://127.0.0.1:1/token", "relay", "x")
    provider = TokenProvider(creds, on_fetch=outcomes.append)
    try:
        with pytest.raises(TokenError, match="could not reach the token endpoint"):
            await provider.token()
    finally:
        await provider.close()
    assert outcomes == ["error"]


def _oauth(tmp_path: Path, **changes: str) -> dict[str, str]:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    return {
        "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RELAY_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "RELAY_KAFKA_OAUTH_TOKEN_ENDPOINT": "https://idp.example/token",
        "RELAY_KAFKA_OAUTH_CLIENT_ID": "relay",
        "RELAY_KAFKA_OAUTH_CLIENT_SECRET_FILE": str(secret),
        **changes,
    }


def test_oauth_settings(tmp_path: Path) -> None:
    """The secret comes from its file; no username is needed; the pieces are required."""
    settings = Settings.from_env(_oauth(tmp_path))
    assert settings.kafka_oauth_client_secret == "s3cret"
    assert "s3cret" not in repr(settings)
    loopback = "http://127.0.0.1:8080/token"  # in the clear, but only to this host
    local = _oauth(tmp_path, **{"RELAY_KAFKA_OAUTH_TOKEN_ENDPOINT": loopback})
    assert Settings.from_env(local).kafka_oauth_token_endpoint == loopback
    missing = _oauth(tmp_path, RELAY_KAFKA_OAUTH_CLIENT_ID="")
    with pytest.raises(ConfigError, match="OAUTHBEARER needs RELAY_KAFKA_OAUTH_TOKEN_ENDPOINT"):
        Settings.from_env(missing)


@pytest.mark.parametrize("url", ["http://idp.example/token", "ftp://idp/token", "idp/token"])
def test_client_secret_never_goes_in_the_clear(tmp_path: Path, url: str) -> None:
    """A token endpoint that is not https:// (or plain http to this host) stops the relay."""
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        Settings.from_env(_oauth(tmp_path, **{"RELAY_KAFKA_OAUTH_TOKEN_ENDPOINT": url}))


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """AWS credentials from the environment only: no files, no instance metadata, no network."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


@pytest.mark.usefixtures("fake_aws")
async def test_msk_iam_token_is_a_signed_connect_url_for_the_region() -> None:
    """MSK IAM: AWS's signer makes a SigV4 URL for kafka-cluster:Connect, valid ~15 min."""
    outcomes: list[str] = []
    provider = TokenProvider(MskIam("eu-west-1"), on_fetch=outcomes.append)
    try:
        token = await provider.token()
    finally:
        await provider.close()
    url = urlsplit(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    query = parse_qs(url.query)
    assert url.hostname == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIAIOSFODNN7EXAMPLE/")
    assert query["X-Amz-Signature"][0]
    assert "wJalrXUtnFEMI" not in token
    assert provider._token is not None  # the lifetime AWS's signer gave
    assert 800 <= provider._token.lifetime_s <= 900
    assert outcomes == ["ok"]


async def test_msk_iam_without_credentials_says_so(
    monkeypatch: pytest.MonkeyPatch, fake_aws: None
) -> None:
    """No AWS credentials: a TokenError naming MSK IAM and the region, counted as an error."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    outcomes: list[str] = []
    provider = TokenProvider(MskIam("eu-west-1"), on_fetch=outcomes.append)
    try:
        with pytest.raises(
            TokenError, match="MSK IAM: could not sign a token for region eu-west-1"
        ):
            await provider.token()
    finally:
        await provider.close()
    assert outcomes == ["error"]


def test_msk_iam_settings_need_no_token_endpoint() -> None:
    """OAUTHBEARER with RELAY_KAFKA_MSK_IAM_REGION: no endpoint, client id or secret."""
    settings = Settings.from_env(
        {
            "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "RELAY_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "RELAY_KAFKA_MSK_IAM_REGION": "eu-west-1",
        }
    )
    provider = token_provider(settings)
    assert provider is not None
    assert provider.credentials == MskIam("eu-west-1")
