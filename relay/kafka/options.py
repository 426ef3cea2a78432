"""Connection options shared by every Kafka client of the relay (producer, admin, tail)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka.helpers import create_ssl_context

from relay.errors import ConfigError
from relay.kafka import check
from relay.kafka.oauth import ClientCredentials, MskIam, TokenProvider, msk_signer_installed
from relay.settings import Settings


def token_provider(
    settings: Settings, on_fetch: Callable[[str], None] = lambda outcome: None
) -> TokenProvider | None:
    """The OAUTHBEARER token source of one process, or None for other mechanisms."""
    if not (
        settings.kafka_security_protocol.startswith("SASL")
        and settings.kafka_sasl_mechanism == "OAUTHBEARER"
    ):
        return None
    if settings.kafka_msk_iam_region is not None:
        return TokenProvider(MskIam(settings.kafka_msk_iam_region), on_fetch=on_fetch)
    endpoint = settings.kafka_oauth_token_endpoint
    client_id, secret = settings.kafka_oauth_client_id, settings.kafka_oauth_client_secret
    if not (endpoint and client_id and secret):  # Settings.validate() refuses this already
        raise ConfigError("RELAY_KAFKA_SASL_MECHANISM=OAUTHBEARER: incomplete OAuth settings")
    credentials = ClientCredentials(endpoint, client_id, secret, settings.kafka_oauth_scope)
    return TokenProvider(credentials, on_fetch=on_fetch)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Kafka clients (SSL, SASL_SSL), or None; ConfigError if unloadable.

    It verifies the brokers' certificates against ``kafka_ssl_cafile`` (else the system's
    CAs) and, unless ``kafka_ssl_check_hostname`` is off, their host names.
    """
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    files = {
        name: str(path)
        for name, path in (
            ("cafile", settings.kafka_ssl_cafile),
            ("certfile", settings.kafka_ssl_certfile),
            ("keyfile", settings.kafka_ssl_keyfile),
        )
        if path is not None
    }
    try:
        context: ssl.SSLContext = create_ssl_context(**files)
    except (OSError, ssl.SSLError) as exc:
        named = ", ".join(f"RELAY_KAFKA_SSL_{name.upper()}={path}" for name, path in files.items())
        raise ConfigError(f"{named or 'the system CAs'}: {exc}") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def check_at_start(settings: Settings) -> None:
    """What only shows when the clients start, checked at start-up: ConfigError, exit 2.

    The TLS files must load; MSK IAM needs its extra installed.
    """
    ssl_context(settings)
    if settings.kafka_msk_iam_region is not None and not msk_signer_installed():
        raise ConfigError(
            f"RELAY_KAFKA_MSK_IAM_REGION={settings.kafka_msk_iam_region}: needs the msk extra "
            "(pip install 'hoopai-relay[msk]'), which is not installed"
        )


def client_options(settings: Settings, tokens: TokenProvider | None = None) -> dict[str, Any]:
    """Bootstrap servers, TLS and SASL keyword arguments for an aiokafka client.

    ``tokens`` (from :func:`token_provider`) is needed for OAUTHBEARER and ignored otherwise.
    """
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": list(settings.kafka_bootstrap_servers),
        "security_protocol": protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_mechanism == "OAUTHBEARER":
            if tokens is None:
                raise ValueError("OAUTHBEARER needs the token provider of token_provider()")
            options["sasl_oauth_token_provider"] = tokens
        else:
            options["sasl_plain_username"] = settings.kafka_sasl_username
            options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


async def preflight(settings: Settings, options: dict[str, Any]) -> None:
    """Raise :class:`~relay.kafka.check.KafkaLoginError` naming why the brokers refuse us."""
    await check.preflight(
        options,
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        client_cert=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
    )


@contextlib.asynccontextmanager
async def checked_options(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """Client options for a command's one client (``relay tail``), checked by :func:`preflight`.

    Its token provider, if any, is closed on the way out.
    """
    tokens = token_provider(settings)
    try:
        options = client_options(settings, tokens)
        await preflight(settings, options)
        yield options
    finally:
        if tokens is not None:
            await tokens.close()
