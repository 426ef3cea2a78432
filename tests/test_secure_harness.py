"""The secure broker of the harness: each listener takes its client and refuses the wrong one.

The broker is real (dev/localkafka.py's ``secure`` cluster), its certificates made at format
time, its OAUTHBEARER logins checked by Kafka's own validator against the JWKS of the OIDC
stand-in (dev/securekafka.py). The refusals go through relay/kafka/check.py, which is also
what names them in the relay's log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import securekafka
from aiokafka import AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.helpers import create_ssl_context
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.kafka.check import KafkaLoginError, check_oauth, check_tls
from tests.certs import self_signed
from tests.kafkautil import first_record, unique_topic

MODES = ("SSL", "mutual TLS", "SASL_SSL PLAIN", "SASL_SSL SCRAM-SHA-512", "SASL_SSL OAUTHBEARER")


class StandInToken(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped
    """A token of one stand-in client, fetched once per login (enough for a test)."""

    def __init__(self, kafka: securekafka.SecureKafka, client_id: str) -> None:
        self.kafka, self.client_id = kafka, client_id

    async def token(self) -> str:
        """A fresh access token from the stand-in's token endpoint."""
        status, body = await asyncio.to_thread(securekafka.token, self.kafka, self.client_id)
        assert status == 200, body
        return str(body["access_token"])


def client_options(kafka: securekafka.SecureKafka, mode: str) -> dict[str, Any]:
    """The aiokafka options for one listener of the secure broker, as a well-configured client."""
    cafile = str(kafka.cafile)
    if mode == "SSL":
        return {"bootstrap_servers": kafka.ssl_bootstrap, "security_protocol": "SSL",
                "ssl_context": create_ssl_context(cafile=cafile)}  # fmt: skip
    if mode == "mutual TLS":
        context = create_ssl_context(
            cafile=cafile, certfile=str(kafka.client_certfile), keyfile=str(kafka.client_keyfile)
        )
        return {"bootstrap_servers": kafka.mtls_bootstrap, "security_protocol": "SSL",
                "ssl_context": context}  # fmt: skip
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.sasl_ssl_bootstrap,
        "security_protocol": "SASL_SSL",
        "ssl_context": create_ssl_context(cafile=cafile),
        "sasl_mechanism": mode.split()[1],
    }
    if mode.endswith("OAUTHBEARER"):
        options["sasl_oauth_token_provider"] = StandInToken(kafka, "relay")
    else:
        options |= {"sasl_plain_username": kafka.sasl_username,
                    "sasl_plain_password": kafka.sasl_password}  # fmt: skip
    return options


@pytest.mark.parametrize("mode", MODES)
async def test_each_listener_round_trips(kafka_secure: securekafka.SecureKafka, mode: str) -> None:
    """A record written through each secure listener is acknowledged and reads back over it."""
    topic = unique_topic("secure")
    producer = AIOKafkaProducer(**client_options(kafka_secure, mode), acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"over " + mode.encode(), key=b"k")
    finally:
        await producer.stop()
    record = await first_record(topic, **client_options(kafka_secure, mode))
    assert (record.value, record.offset) == (b"over " + mode.encode(), sent.offset)


async def test_tls_refusals_name_the_cause(
    kafka_secure: securekafka.SecureKafka, tmp_path: Path
) -> None:
    """Another CA, another host name, no client certificate: each says so, naming the broker."""
    right = create_ssl_context(cafile=str(kafka_secure.cafile))
    assert await check_tls(kafka_secure.ssl_bootstrap, right, cafile=None, client_cert=None)

    other_ca, _ = self_signed(tmp_path, common_name="some other CA")
    with pytest.raises(KafkaLoginError, match="not signed by a CA in RELAY_KAFKA_SSL_CAFILE") as e:
        await check_tls(
            kafka_secure.ssl_bootstrap,
            create_ssl_context(cafile=str(other_ca)),
            cafile=str(other_ca),
            client_cert=None,
        )
    assert kafka_secure.ssl_bootstrap in str(e.value)
    assert "CN=127.0.0.1" in str(e.value)  # the certificate's subject

    with pytest.raises(KafkaLoginError, match=r"not valid for the host name 127\.0\.0\.1") as e:
        await check_tls(kafka_secure.wrong_host_bootstrap, right, cafile=None, client_cert=None)
    assert "CN=broker.invalid" in str(e.value)
    assert "DNS:broker.invalid" in str(e.value)

    with pytest.raises(KafkaLoginError, match="requires a client certificate"):
        await check_tls(kafka_secure.mtls_bootstrap, right, cafile=None, client_cert=None)
    with_cert = create_ssl_context(
        cafile=str(kafka_secure.cafile),
        certfile=str(kafka_secure.client_certfile),
        keyfile=str(kafka_secure.client_keyfile),
    )
    assert await check_tls(kafka_secure.mtls_bootstrap, with_cert, cafile=None, client_cert="x")


def _forged(token: str) -> str:
    """The same claims with a signature that is not the stand-in's."""
    head, claims, _ = token.split(".")
    return f"{head}.{claims}.{base64.urlsafe_b64encode(b'0' * 256).rstrip(b'=').decode()}"


async def test_broker_checks_tokens_signature_audience_and_expiry(
    kafka_secure: securekafka.SecureKafka,
) -> None:
    """The broker takes the stand-in's token; it refuses a forged, a misaddressed, an expired one.

    So Kafka's validator really checks them (see dev/localkafka.py, the validator class).
    """
    context = create_ssl_context(cafile=str(kafka_secure.cafile))
    server = kafka_secure.sasl_ssl_bootstrap
    good = await StandInToken(kafka_secure, "relay").token()
    await check_oauth(server, context, good)  # accepted: no exception

    for token, seen in (
        (_forged(good), "sub=relay"),
        (await StandInToken(kafka_secure, "relay-wrong-audience").token(), "aud=another-service"),
        (await StandInToken(kafka_secure, "relay-expired").token(), "expired 3"),
    ):
        with pytest.raises(KafkaLoginError, match="the broker refused the token") as e:
            await check_oauth(server, context, token)
        assert "status invalid_token" in str(e.value)
        assert seen in str(e.value)
        assert token.split(".")[2] not in str(e.value)  # never the token itself


def _jwks_key(kafka: securekafka.SecureKafka) -> rsa.RSAPublicKey:
    issuer = kafka.token_endpoint.rsplit("/", 1)[0]
    with urllib.request.urlopen(f"{issuer}/jwks", timeout=5) as response:  # noqa: S310 -- 127.0.0.1
        (jwk,) = json.load(response)["keys"]

    def number(field: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(jwk[field] + "=="), "big")

    return rsa.RSAPublicNumbers(number("e"), number("n")).public_key()


def test_token_endpoint_grants_signed_tokens_and_refuses_a_wrong_secret(
    kafka_secure: securekafka.SecureKafka,
) -> None:
    """Client credentials get an RS256 JWT that the JWKS verifies; a wrong secret gets 401."""
    status, body = securekafka.token(kafka_secure, "relay-20s")
    assert status == 200, body
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 20)
    head, claims, signature = body["access_token"].split(".")
    _jwks_key(kafka_secure).verify(
        base64.urlsafe_b64decode(signature + "=="),
        f"{head}.{claims}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=="))
    assert decoded["aud"] == "hoopai-relay-kafka"
    assert 15 <= decoded["exp"] - time.time() <= 21

    status, body = securekafka.token(kafka_secure, "relay", secret="not-the-secret")  # noqa: S106 -- wrong on purpose
    assert (status, body["error"]) == (401, "invalid_client")
    assert "access_token" not in body


def test_certificates_are_for_loopback_and_secrets_are_private(
    kafka_secure: securekafka.SecureKafka,
) -> None:
    """The broker's certificate verifies for 127.0.0.1 and localhost; secret files are 0600."""
    context = ssl.create_default_context(cafile=str(kafka_secure.cafile))
    port = int(kafka_secure.ssl_bootstrap.rsplit(":", 1)[1])
    for name in ("127.0.0.1", "localhost"):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.getpeercert() is not None
    for path in (kafka_secure.client_keyfile, kafka_secure.oauth_secret_file,
                 kafka_secure.sasl_password_file):  # fmt: skip
        assert path.stat().st_mode & 0o077 == 0, path
