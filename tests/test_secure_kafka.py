"""The relay over SASL/SCRAM against the local broker's SCRAM listener; SASL_SSL client options."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import localkafka
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.kafka.options import client_options
from relay.settings import Settings
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests.certs import self_signed
from tests.kafkautil import first_record
from tests.relayutil import RunningRelay, StartRelay

SINGLE = localkafka.CLUSTERS["single"]


@pytest.fixture
def scram(kafka_bootstrap: str) -> tuple[str, str, str]:
    """``(bootstrap, user, password)`` of the local single broker's SCRAM listener."""
    if kafka_bootstrap != SINGLE.bootstrap or SINGLE.sasl_bootstrap is None:
        pytest.skip(
            f"KAFKA_BOOTSTRAP_SERVERS={kafka_bootstrap}: the SCRAM listener and its password "
            "belong to the local single broker (dev/localkafka.py)"
        )
    credentials = localkafka.scram_credentials(SINGLE)
    if credentials is None:
        pytest.fail(
            f"no {localkafka.scram_password_file(SINGLE)}: the broker on {kafka_bootstrap} was "
            "not formatted with SCRAM users; restart it with "
            "`python3 dev/localkafka.py down && python3 dev/localkafka.py up`"
        )
    return (SINGLE.sasl_bootstrap, *credentials)


async def post_signed(relay: RunningRelay, key: Ed25519PrivateKey, body: bytes) -> tuple[int, Any]:
    """POST a delivery with a valid X-GHL-Signature; return the status and the JSON answer."""
    timeout = aiohttp.ClientTimeout(total=15)
    headers = {"X-GHL-Signature": sign_ed25519(key, body)}
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(relay.webhook_url, data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_relay_publishes_over_scram(
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    scram: tuple[str, str, str],
    mechanism: str,
) -> None:
    """With SCRAM credentials the relay acks a delivery; it reads back byte for byte over SCRAM."""
    bootstrap, user, password = scram
    relay = await start_relay(
        kafka_bootstrap_servers=(bootstrap,),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=user,
        kafka_sasl_password=password,
    )
    body = as_delivery({"type": "ContactCreate", "locationId": f"loc-{mechanism.lower()}"})
    status, answer = await post_signed(relay, ed25519_key, body)
    assert status == 200, answer
    assert answer["topic"] == relay.topic("contacts")

    record = await first_record(answer["topic"], **client_options(relay.settings))
    assert (record.value, record.key) == (body, f"loc-{mechanism.lower()}".encode())
    assert (record.partition, record.offset) == (answer["partition"], answer["offset"])


async def test_wrong_scram_password_never_answers_2xx(
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    scram: tuple[str, str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused SCRAM login leaves the relay unconnected: an authentic delivery gets 429."""
    bootstrap, user, password = scram
    relay = await start_relay(
        wait_connected=False,
        kafka_bootstrap_servers=(bootstrap,),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username=user,
        kafka_sasl_password=password + "-wrong",
    )
    # Wait for the broker's refusal, so the 429 is for bad credentials, not a slow start.
    async with asyncio.timeout(30):
        while "SaslAuthenticationFailed" not in caplog.text:
            await asyncio.sleep(0.1)
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-wrong-password"})
    status, answer = await post_signed(relay, ed25519_key, body)
    assert (status, answer["outcome"], answer["error"]) == (429, "unavailable", "not_connected")


def test_sasl_ssl_options_carry_sasl_and_a_verifying_tls_context(tmp_path: Path) -> None:
    """SASL_SSL gives aiokafka the SASL fields and a TLS context trusting the configured CA."""
    cafile, _ = self_signed(tmp_path, common_name="test CA")
    settings = Settings(
        kafka_bootstrap_servers=("kafka.example:9093",),
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=cafile,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="relay",
        kafka_sasl_password="s3cret",  # noqa: S106 -- a made-up password for a unit test
    )
    settings.validate()

    options = client_options(settings)

    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": ["kafka.example:9093"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "relay",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test CA"),),)]
