"""Why a secure Kafka connection fails, in words that name the broker and the cause.

aiokafka reports a TLS failure as ``Unable to bootstrap``, a listener that wants a client
certificate as ``Connection closed``, and (0.14) a refused OAUTHBEARER token not at all: its
authenticator ignores the broker's error challenge (RFC 7628 3.2.2), takes the login for a
success and then reads the broker's answer as metadata without brokers. So before a client
starts, :func:`preflight` makes one connection of its own to a bootstrap server, as the
client would, and turns what goes wrong into a :class:`KafkaLoginError` such as::

    kafka 127.0.0.1:9093: TLS: the broker's certificate (CN=broker.invalid, DNS:broker.invalid)
    is not valid for the host name 127.0.0.1 (hostname verification)

The checks only diagnose: a broker that is down or slow is left to the client's own retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import ssl
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed
from aiokafka.protocol.admin import SaslAuthenticateRequest, SaslHandShakeRequest
from cryptography import x509

#: each connection of a check gives up after this long: the client retries anyway
_TIMEOUT_S: Final = 5.0
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH: Final = frozenset({62, 64})
# ApiVersions v0 (api key 18), correlation id 1, client id "relay-check": any request will
# do to learn whether the broker keeps the connection after the handshake.
_CLIENT_ID: Final = b"relay-check"
_API_VERSIONS: Final = struct.pack(">hhih", 18, 0, 1, len(_CLIENT_ID)) + _CLIENT_ID


class KafkaLoginError(Exception):
    """A broker refused this client's TLS or SASL login, for the reason in the message."""


def describe_certificate(der: bytes) -> str:
    """``CN=..., DNS:..., IP:... (issuer CN=...)``: whom a certificate is for, and by whom."""
    cert = x509.load_der_x509_certificate(der)
    names: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [f"DNS:{name}" for name in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    subject = cert.subject.rfc4514_string() or "(no subject)"
    return f"{', '.join([subject, *names])}; issuer {cert.issuer.rfc4514_string()}"


def token_summary(token: str, now: float) -> str:
    """The claims of a JWT that say why a broker may refuse it: issuer, audience, expiry.

    Read without verifying (the broker verifies); never the signature or the token itself.
    """
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return "not a JWT"
    if not isinstance(claims, dict):
        return "not a JWT"
    parts = [f"{name}={claims[name]}" for name in ("iss", "sub", "aud") if name in claims]
    exp = claims.get("exp")
    if isinstance(exp, int | float):
        at = datetime.datetime.fromtimestamp(exp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        left = exp - now
        parts.append(f"exp={at} ({'expired ' + _ago(-left) if left <= 0 else 'in ' + _ago(left)})")
    return ", ".join(parts)


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds >= 0 else f"{-seconds:.0f} s"


def _split(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


async def _peer_certificate(host: str, port: int) -> bytes | None:
    """The certificate a TLS server presents, fetched without verifying it (diagnosis only)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port, ssl=context)
    except (OSError, TimeoutError):
        return None
    try:
        der: bytes | None = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return der
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def check_tls(
    server: str, context: ssl.SSLContext, *, cafile: str | None, client_cert: str | None
) -> bool:
    """Raise :class:`KafkaLoginError` if ``server`` refuses, or is refused by, this TLS setup.

    Connection errors (a broker down, a port closed) are not diagnosed: False, else True.
    """
    host, port = _split(server)
    where = f"kafka {server}: TLS"
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except ssl.SSLCertVerificationError as exc:
        der = await _peer_certificate(host, port)
        shown = describe_certificate(der) if der else "(could not be read)"
        if exc.verify_code in _NAME_MISMATCH:
            raise KafkaLoginError(
                f"{where}: the broker's certificate ({shown}) is not valid for the host name "
                f"{host} (hostname verification; the bootstrap servers and the brokers' "
                "advertised listeners must be names the certificate carries)"
            ) from None
        trusted = f"RELAY_KAFKA_SSL_CAFILE={cafile}" if cafile else "the system's CAs"
        raise KafkaLoginError(
            f"{where}: the broker's certificate ({shown}) is not signed by a CA in {trusted} "
            f"({exc.verify_message})"
        ) from None
    except ssl.SSLError as exc:
        raise KafkaLoginError(f"{where}: handshake failed: {exc.reason or exc}") from None
    except (OSError, TimeoutError):
        return False
    # TLS 1.3 finishes the client's side of the handshake before the server has checked the
    # client's certificate: a missing or refused one shows at the first read.
    try:
        writer.write(struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS)
        async with asyncio.timeout(_TIMEOUT_S):
            await reader.readexactly(4)
    except (ssl.SSLError, asyncio.IncompleteReadError, ConnectionError) as exc:
        alert = getattr(exc, "reason", None) or type(exc).__name__
        if client_cert is None:
            cause = "requires a client certificate (mutual TLS): set RELAY_KAFKA_SSL_CERTFILE "
            cause += "and RELAY_KAFKA_SSL_KEYFILE"
        else:
            cause = f"refused the client certificate RELAY_KAFKA_SSL_CERTFILE={client_cert}"
        raise KafkaLoginError(f"{where}: the broker {cause} ({alert})") from None
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return True


async def check_password(server: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`KafkaLoginError` if ``server`` refuses this SASL PLAIN/SCRAM login.

    aiokafka does the exchange; its refusal only shows in its own log, not in the error
    its client start raises (``Unable to bootstrap``).
    """
    host, port = _split(server)
    mechanism = options["sasl_mechanism"]
    try:
        conn = await create_conn(
            host,
            port,
            ssl_context=options.get("ssl_context"),
            security_protocol=options["security_protocol"],
            sasl_mechanism=mechanism,
            sasl_plain_username=options.get("sasl_plain_username"),
            sasl_plain_password=options.get("sasl_plain_password"),
            request_timeout_ms=int(_TIMEOUT_S * 1000),
            client_id="relay-check",
        )
    except SaslAuthenticationFailed as exc:
        raise KafkaLoginError(
            f"kafka {server}: SASL {mechanism}: the broker refused user "
            f"{options.get('sasl_plain_username')} ({type(exc).__name__}: {exc})"
        ) from None
    except (KafkaError, OSError, TimeoutError):
        return  # unreachable, or not a login problem: the client's own retries report it
    conn.close()


async def check_oauth(server: str, context: ssl.SSLContext | None, token: str) -> None:
    """Raise :class:`KafkaLoginError` if ``server`` refuses ``token`` (SASL OAUTHBEARER).

    The exchange aiokafka gets wrong, done right: a refused token is answered with a JSON
    error challenge, to which the client sends a single 0x01 to learn the final error.
    """
    host, port = _split(server)
    try:
        conn = await create_conn(
            host,
            port,
            ssl_context=context,
            security_protocol="PLAINTEXT" if context is None else "SSL",
            request_timeout_ms=int(_TIMEOUT_S * 1000),
            client_id="relay-check",
        )
    except (KafkaError, OSError, TimeoutError):
        return  # unreachable: the client's own retries report it
    try:
        handshake = await conn.send(SaslHandShakeRequest("OAUTHBEARER"))
        if handshake.error_code or "OAUTHBEARER" not in handshake.enabled_mechanisms:
            raise KafkaLoginError(
                f"kafka {server}: SASL: the listener does not take OAUTHBEARER "
                f"(it takes {', '.join(handshake.enabled_mechanisms) or 'none'})"
            )
        first = f"n,,\x01auth=Bearer {token}\x01\x01".encode()
        answer = await conn.send(SaslAuthenticateRequest(first))
        challenge = bytes(answer.sasl_auth_bytes or b"")
        if not answer.error_code and not challenge:
            return  # accepted
        status = _challenge_status(challenge)
        if challenge and not answer.error_code:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                final = await conn.send(SaslAuthenticateRequest(b"\x01"))
                status += f"; {final.error_message}" if final.error_message else ""
        elif answer.error_message:
            status += f"; {answer.error_message}"
        raise KafkaLoginError(
            f"kafka {server}: SASL OAUTHBEARER: the broker refused the token ({status}); "
            f"the token: {token_summary(token, time.time())}"
        )
    except (KafkaError, OSError, TimeoutError):
        return
    finally:
        conn.close()


def _challenge_status(challenge: bytes) -> str:
    """The ``status`` of an OAUTHBEARER error challenge (RFC 7628 3.2.2), else the bytes."""
    try:
        parsed = json.loads(challenge)
    except ValueError:
        return challenge.decode("utf-8", "replace")[:200] or "no reason given"
    if isinstance(parsed, dict):
        return f"status {parsed.get('status', '?')}"
    return str(parsed)[:200]


async def preflight(
    options: Mapping[str, Any], *, cafile: str | None = None, client_cert: str | None = None
) -> None:
    """Check TLS and the SASL login against the first bootstrap server that answers.

    ``options`` are aiokafka client options (relay/kafka/options.py); ``cafile`` and
    ``client_cert`` only name the files in the diagnosis. Raises :class:`KafkaLoginError`
    with the diagnosis; returns when it finds nothing wrong, or no server answers.
    """
    protocol = options.get("security_protocol", "PLAINTEXT")
    context: ssl.SSLContext | None = options.get("ssl_context")
    oauth = options.get("sasl_mechanism") == "OAUTHBEARER" and protocol.startswith("SASL")
    servers: Sequence[str] = options["bootstrap_servers"]
    for server in servers:
        if context is not None and not await check_tls(
            server, context, cafile=cafile, client_cert=client_cert
        ):
            continue  # not reachable: try the next
        if oauth:
            await check_oauth(server, context, await options["sasl_oauth_token_provider"].token())
        elif protocol.startswith("SASL"):
            await check_password(server, options)
        return
