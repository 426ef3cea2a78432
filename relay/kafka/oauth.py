"""SASL OAUTHBEARER: a token from an OAuth 2.0 client-credentials grant, refreshed in time.

Every Kafka client of the relay (the producer, the admin client, ``relay tail``) logs in
with the token of one :class:`TokenProvider`. It asks the configured token endpoint
(RFC 6749 4.4, the client authenticated by HTTP Basic, 2.3.1) once, hands the same token to
every new connection, and fetches the next one in the background when 80% of the token's
lifetime has passed: a connection made at any time gets a token with time left, and a broker
that ends sessions when their token expires (KIP-368) finds a fresh one at the reconnection.

A refusal (a wrong client secret: ``401 invalid_client``) is a :class:`TokenError` whose
message names the endpoint, the client id and the error the endpoint gave, never the secret
or a token. The relay logs it and keeps retrying, answering the retryable status meanwhile.

For Amazon MSK's IAM access control (:class:`MskIam`) the token is instead a SigV4-signed
URL made from the process's AWS credentials by AWS's ``aws-msk-iam-sasl-signer-python`` (the
``msk`` extra), and refreshed in the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote_plus

import aiohttp
import orjson
from aiokafka.abc import AbstractTokenProvider

from relay.errors import RelayError

log = logging.getLogger(__name__)

#: the share of a token's lifetime after which the next one is fetched
REFRESH_AT: Final = 0.8
#: the lifetime assumed when the endpoint does not say (``expires_in`` is only RECOMMENDED)
DEFAULT_LIFETIME_S: Final = 300.0
#: the shortest wait between two fetches, whatever the lifetimes: a bound on the loop
_MIN_INTERVAL_S: Final = 1.0
_HTTP_TIMEOUT_S: Final = 10.0
#: the longest wait between two attempts after a failed background refresh
_RETRY_MAX_S: Final = 30.0


class TokenError(RelayError):
    """The token endpoint could not be reached, refused the client, or answered nonsense."""

    def __init__(self, message: str, *, outcome: str) -> None:
        super().__init__(message)
        #: ``refused`` or ``error``: a closed set, the metric's label
        self.outcome = outcome


@dataclass(frozen=True)
class ClientCredentials:
    """What a client-credentials grant needs; the secret never shows in a repr."""

    token_endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    #: space-separated scopes, as the endpoint wants them; None sends none
    scope: str | None = None


@dataclass(frozen=True)
class MskIam:
    """Amazon MSK IAM: tokens signed for the cluster's region with the AWS credentials."""

    region: str


@dataclass(frozen=True)
class Token:
    """An access token and how long it is valid from when it was received."""

    access_token: str = field(repr=False)
    lifetime_s: float


def read_answer(credentials: ClientCredentials, status: int, body: bytes) -> Token:
    """The token in a token endpoint's answer, or a :class:`TokenError` saying why not."""
    where = (
        f"kafka OAuth: the token endpoint {credentials.token_endpoint} "
        f"(client {credentials.client_id})"
    )
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise TokenError(f"{where} answered HTTP {status} without JSON", outcome="error")
    if status != 200:
        error = str(parsed.get("error", "no error code"))[:100]
        description = str(parsed.get("error_description", ""))[:200]
        detail = f"{error} ({description})" if description else error
        outcome = "refused" if 400 <= status < 500 else "error"
        raise TokenError(f"{where} refused the client: HTTP {status} {detail}", outcome=outcome)
    access_token = parsed.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise TokenError(f"{where} answered HTTP 200 without an access_token", outcome="error")
    token_type = str(parsed.get("token_type", "Bearer"))
    if token_type.lower() != "bearer":
        raise TokenError(f"{where} gave a {token_type[:40]} token, not Bearer", outcome="error")
    expires_in = parsed.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) else DEFAULT_LIFETIME_S
    return Token(access_token, lifetime)


def basic_authorization(client_id: str, secret: str) -> str:
    """The ``Authorization`` header of client_secret_basic (RFC 6749 2.3.1).

    The id and the secret are form-encoded before they are joined, so a ``:`` in either
    survives.
    """
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def refresh_delay(lifetime_s: float) -> float:
    """How long after receiving a token the next is fetched: 80% of its life, at least 1 s."""
    return max(_MIN_INTERVAL_S, lifetime_s * REFRESH_AT)


class TokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped
    """One token for all of a process's Kafka connections, fetched again before it expires.

    ``on_fetch`` is told the outcome of every fetch (``ok``, ``refused``, ``error``): the
    relay counts them (``relay_kafka_oauth_token_fetches_total``).
    """

    def __init__(
        self,
        credentials: ClientCredentials | MskIam,
        *,
        on_fetch: Callable[[str], None] = lambda outcome: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self._on_fetch = on_fetch
        self._clock = clock
        self._token: Token | None = None
        self._received = 0.0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task[None] | None = None

    def _valid(self) -> Token | None:
        """The current token if it has not expired yet."""
        token = self._token
        if token is not None and self._clock() < self._received + token.lifetime_s:
            return token
        return None

    async def token(self) -> str:
        """A token with time left: the current one, or a new one fetched now."""
        async with self._lock:
            current = self._valid()
            if current is None:
                current = await self._fetch()
            if self._refresher is None or self._refresher.done():
                self._refresher = asyncio.create_task(self._refresh(), name="kafka-oauth-refresh")
            return current.access_token

    async def _fetch(self) -> Token:
        """Get a token (from the endpoint, or signed for MSK) and keep it."""
        try:
            if isinstance(self.credentials, MskIam):
                token = await _sign_for_msk(self.credentials, time.time)
            else:
                token = await self._ask_endpoint(self.credentials)
        except TokenError as exc:
            self._on_fetch(exc.outcome)
            raise
        self._token, self._received = token, self._clock()
        self._on_fetch("ok")
        log.info(
            "kafka OAuth token received, valid for %.0f s",
            token.lifetime_s,
            extra={"event": "kafka_oauth_token", "lifetime_s": token.lifetime_s},
        )
        return token

    async def _ask_endpoint(self, creds: ClientCredentials) -> Token:
        """The client-credentials grant at the token endpoint."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT_S)
            )
        form = {"grant_type": "client_credentials"}
        if creds.scope:
            form["scope"] = creds.scope
        headers = {"Authorization": basic_authorization(creds.client_id, creds.client_secret)}
        try:
            async with self._session.post(
                creds.token_endpoint, data=form, headers=headers
            ) as answer:
                status, body = answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenError(
                f"kafka OAuth: could not reach the token endpoint {creds.token_endpoint}: "
                f"{type(exc).__name__}: {exc}",
                outcome="error",
            ) from None
        return read_answer(creds, status, body)

    async def _refresh(self) -> None:
        """Fetch the next token at 80% of the current one's life; retry until it is got."""
        retry = _MIN_INTERVAL_S
        while True:
            token = self._token
            if token is None:
                return
            due = self._received + refresh_delay(token.lifetime_s)
            await asyncio.sleep(max(0.0, due - self._clock()))
            try:
                async with self._lock:
                    if self._token is token:  # token() did not get a newer one meanwhile
                        await self._fetch()
                retry = _MIN_INTERVAL_S
            except TokenError as exc:
                # The current token may still be valid for a while: keep it, say why, retry.
                log.warning("%s; retrying in %.0f s", exc, retry, extra={"event": "kafka_oauth"})
                await asyncio.sleep(retry)
                retry = min(retry * 2, _RETRY_MAX_S)

    async def close(self) -> None:
        """Stop refreshing and close the HTTP client."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._session is not None:
            await self._session.close()


def msk_signer_installed() -> bool:
    """Whether the ``msk`` extra (aws-msk-iam-sasl-signer-python) can be imported."""
    try:
        import aws_msk_iam_sasl_signer  # noqa: F401 -- only whether it imports
    except ImportError:
        return False
    return True


async def _sign_for_msk(msk: MskIam, now: Callable[[], float]) -> Token:
    """An MSK IAM token: AWS's signer, in a thread (it may ask AWS for credentials)."""
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
    except ImportError:
        raise TokenError(
            "kafka MSK IAM: needs the msk extra (pip install 'hoopai-relay[msk]')",
            outcome="error",
        ) from None
    try:
        token, expiry_ms = await asyncio.to_thread(
            MSKAuthTokenProvider.generate_auth_token, msk.region
        )
    except Exception as exc:  # botocore's errors have no common base worth naming here
        raise TokenError(
            f"kafka MSK IAM: could not sign a token for region {msk.region}: "
            f"{type(exc).__name__}: {exc}",
            outcome="error",
        ) from None
    return Token(str(token), max(0.0, expiry_ms / 1000 - now()))
