"""The relay against real secure listeners, each mode publishing and reading back.

SCRAM over plaintext on the single broker; SSL, mutual TLS, SASL_SSL PLAIN/SCRAM and
OAUTHBEARER on the secure broker (dev/securekafka.py), where each refusal is also shown to be
never 2xx, unready, and named in the log.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import localkafka
import pytest
import securekafka
from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.kafka.options import checked_options, client_options
from relay.settings import SECRET_SETTINGS, Settings
from relay.tools.consumer import EffectStore, consume_batch
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests import relayproc
from tests.certs import self_signed
from tests.chaosutil import pick
from tests.kafkautil import first_record, unique_topic
from tests.relayutil import ROOT, RunningRelay, StartRelay, scrape

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


# --- the secure broker: TLS, mutual TLS, SASL_SSL, OAUTHBEARER ------------------------------

MODES = ("SSL", "mutual TLS", "SASL_SSL PLAIN", "SASL_SSL SCRAM-SHA-512", "SASL_SSL OAUTHBEARER")


def mode_settings(kafka: securekafka.SecureKafka, mode: str, **changes: Any) -> dict[str, Any]:
    """The relay's settings for one mode against the secure broker, as a user would set them."""
    settings: dict[str, Any] = {"kafka_ssl_cafile": kafka.cafile}
    if mode == "SSL":
        settings |= {"kafka_bootstrap_servers": (kafka.ssl_bootstrap,),
                     "kafka_security_protocol": "SSL"}  # fmt: skip
    elif mode == "mutual TLS":
        settings |= {"kafka_bootstrap_servers": (kafka.mtls_bootstrap,),
                     "kafka_security_protocol": "SSL",
                     "kafka_ssl_certfile": kafka.client_certfile,
                     "kafka_ssl_keyfile": kafka.client_keyfile}  # fmt: skip
    else:
        mechanism = mode.split()[1]
        settings |= {"kafka_bootstrap_servers": (kafka.sasl_ssl_bootstrap,),
                     "kafka_security_protocol": "SASL_SSL",
                     "kafka_sasl_mechanism": mechanism}  # fmt: skip
        if mechanism == "OAUTHBEARER":
            settings |= {"kafka_oauth_token_endpoint": kafka.token_endpoint,
                         "kafka_oauth_client_id": "relay",
                         "kafka_oauth_client_secret_file": kafka.oauth_secret_file,
                         "kafka_oauth_client_secret": kafka.oauth_secret,
                         "kafka_oauth_scope": "kafka"}  # fmt: skip
        else:
            settings |= {"kafka_sasl_username": kafka.sasl_username,
                         "kafka_sasl_password_file": kafka.sasl_password_file,
                         "kafka_sasl_password": kafka.sasl_password}  # fmt: skip
    return settings | changes


def as_environment(settings: dict[str, Any]) -> dict[str, str]:
    """``RELAY_*`` variables for these settings; secrets by their files, as in production."""
    environ = {}
    for name, value in settings.items():
        if name in SECRET_SETTINGS:
            continue  # its *_file is there
        text = ",".join(value) if isinstance(value, tuple) else str(value)
        environ[f"RELAY_{name.upper()}"] = text
    return environ


async def relay_command(*args: str, settings: dict[str, Any], cwd: Path) -> tuple[int, str, str]:
    """Run ``relay ARGS`` as a process with these settings: (status, stdout, stderr)."""
    environ = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
               **as_environment(settings)}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, cwd=cwd, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def readiness(relay: RunningRelay) -> tuple[int, Any]:
    """``GET /readyz``: the status and the JSON answer."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(f"{relay.url}/readyz") as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize("mode", MODES)
async def test_relay_publishes_and_tail_reads_back_in_every_mode(
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    kafka_secure: securekafka.SecureKafka,
    caplog: pytest.LogCaptureFixture,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    mode: str,
) -> None:
    """Each mode: ready, a delivery acked, ``relay tail`` prints it; no secret logged, exported."""
    settings = mode_settings(kafka_secure, mode)
    relay = await start_relay(**settings)
    async with asyncio.timeout(15):  # the readiness probe's first round
        while (await readiness(relay))[0] != 200:
            await asyncio.sleep(0.2)
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-secure"})
    status, answer = await post_signed(relay, ed25519_key, body)
    assert status == 200, answer
    assert answer["outcome"] == "accepted"

    code, out, err = await relay_command(
        "tail", "--from-beginning", "--max", "1", "--timeout", "30",
        settings={**settings, "topic_prefix": relay.settings.topic_prefix}, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    ((topic, partition, offset, *_),) = [line.split(" ", 6) for line in out.splitlines()]
    assert (topic, int(partition), int(offset)) == (
        answer["topic"],
        answer["partition"],
        answer["offset"],
    )
    assert out.rstrip("\n").endswith(body.decode())
    metrics = await scrape(http, relay)
    if mode.endswith("OAUTHBEARER"):
        assert 'relay_kafka_oauth_token_fetches_total{outcome="ok"} 1.0' in metrics
    assert_no_secret("\n".join([caplog.text, metrics, out, err]), kafka_secure)


@pytest.mark.parametrize("mode", MODES)
async def test_check_config_reports_tls_files_and_mechanism_without_secrets(
    kafka_secure: securekafka.SecureKafka, tmp_path: Path, mode: str
) -> None:
    """``check-config`` names the CA, the client certificate, hostname checks, the mechanism."""
    settings = mode_settings(kafka_secure, mode, routes_file=ROOT / "config" / "routes.toml")
    code, out, err = await relay_command("check-config", settings=settings, cwd=tmp_path)
    assert code == 0, err
    protocol = settings["kafka_security_protocol"]
    assert f"security:        {protocol}" in out
    assert f"brokers verified by RELAY_KAFKA_SSL_CAFILE={kafka_secure.cafile}" in out
    assert "CN=hoopai-relay local test CA" in out
    assert "hostname verification on" in out
    if mode == "mutual TLS":
        assert f"client certificate RELAY_KAFKA_SSL_CERTFILE={kafka_secure.client_certfile}" in out
        assert "CN=relay" in out
    else:
        assert "no client certificate" in out
    if mode.endswith("OAUTHBEARER"):
        assert f"(OAUTHBEARER: client relay at {kafka_secure.token_endpoint}, scope kafka)" in out
    elif protocol == "SASL_SSL":
        assert f"({settings['kafka_sasl_mechanism']} as relay)" in out
    assert_no_secret(out + err, kafka_secure)


def _other_ca(tmp_path: Path) -> Path:
    cafile, _ = self_signed(tmp_path, common_name="a CA that signed nothing here")
    return cafile


WRONG_PASSWORD = "wrong-password-5f1c"
WRONG_SECRET = "wrong-client-secret-9e2a"
# (mode, changes, what the log line must say)
REFUSALS: list[tuple[str, str, Any, tuple[str, ...]]] = [
    ("ca", "SSL", lambda k, tmp: {"kafka_ssl_cafile": _other_ca(tmp)},
     ("is not signed by a CA in RELAY_KAFKA_SSL_CAFILE", "CN=127.0.0.1")),
    ("hostname", "SSL", lambda k, tmp: {"kafka_bootstrap_servers": (k.wrong_host_bootstrap,)},
     ("not valid for the host name 127.0.0.1", "DNS:broker.invalid")),
    ("client-cert", "mutual TLS",
     lambda k, tmp: {"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None},
     ("requires a client certificate",)),
    ("plain-password", "SASL_SSL PLAIN", lambda k, tmp: {"kafka_sasl_password": WRONG_PASSWORD},
     ("SASL PLAIN: the broker refused user relay", "Invalid username or password")),
    ("client-secret", "SASL_SSL OAUTHBEARER",
     lambda k, tmp: {"kafka_oauth_client_secret": WRONG_SECRET},
     ("refused the client: HTTP 401 invalid_client", "(client relay)")),
    ("audience", "SASL_SSL OAUTHBEARER",
     lambda k, tmp: {"kafka_oauth_client_id": "relay-wrong-audience"},
     ("the broker refused the token (status invalid_token", "aud=another-service")),
    ("expired", "SASL_SSL OAUTHBEARER", lambda k, tmp: {"kafka_oauth_client_id": "relay-expired"},
     ("the broker refused the token (status invalid_token", "expired 3")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "changes", "said"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
async def test_refused_login_is_never_2xx_unready_and_named_in_the_log(
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    kafka_secure: securekafka.SecureKafka,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    mode: str,
    changes: Any,
    said: tuple[str, ...],
) -> None:
    """A login the broker (or the token endpoint) refuses: 429, /readyz 503, the cause logged."""
    relay = await start_relay(
        wait_connected=False, **mode_settings(kafka_secure, mode, **changes(kafka_secure, tmp_path))
    )
    async with asyncio.timeout(30):
        while not any("kafka not ready" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.1)
    (line, *_) = [r.getMessage() for r in caplog.records if "kafka not ready" in r.getMessage()]
    for words in said:
        assert words in line, line
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-refused"})
    status, answer = await post_signed(relay, ed25519_key, body)
    assert (status, answer["outcome"]) == (429, "unavailable")
    ready, why = await readiness(relay)
    assert (ready, why["problems"]) == (503, ["kafka: producer not started"])
    assert_no_secret(caplog.text, kafka_secure)
    assert WRONG_PASSWORD not in caplog.text
    assert WRONG_SECRET not in caplog.text


async def test_reference_consumer_reads_over_oauthbearer(
    start_relay: StartRelay, ed25519_key: Ed25519PrivateKey, kafka_secure: securekafka.SecureKafka
) -> None:
    """The reference consumer, given checked_options(), applies a record read over OAUTHBEARER."""
    relay = await start_relay(**mode_settings(kafka_secure, "SASL_SSL OAUTHBEARER"))
    body = as_delivery({"type": "ContactCreate", "locationId": "loc-consumer"})
    status, answer = await post_signed(relay, ed25519_key, body)
    assert status == 200, answer
    store = EffectStore(":memory:")
    applied: list[bytes] = []
    async with checked_options(relay.settings) as options:
        consumer = AIOKafkaConsumer(
            answer["topic"], **options, group_id=unique_topic("group"),
            auto_offset_reset="earliest", enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                while not applied:
                    await consume_batch(consumer, store, lambda db, r: applied.append(r.value))
        finally:
            await consumer.stop()
    assert applied == [body]


# --- token refresh under load ---------------------------------------------------------------

#: the refresh run's length: ≥ 3 refreshes of 20 s tokens (each at 16 s) in make test, 90 s
#: in make chaos
REFRESH_RUN_S = pick(50, 90)
REFRESH_SENDERS = 4
REFRESH_RATE_PER_SENDER = 5.0


@pytest.mark.chaos
async def test_token_refresh_under_load_keeps_every_answer_2xx(
    kafka_secure: securekafka.SecureKafka,
    public_key_files: tuple[Path, ...],
    ed25519_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    """20 s tokens, steady load: every answer 2xx across ≥ 3 refreshes, no secret logged.

    ``relay serve`` runs as a process of its own; the broker ends each OAUTHBEARER session
    when its token expires (KIP-368), so the producer must come back with the next token.
    """
    settings = mode_settings(
        kafka_secure, "SASL_SSL OAUTHBEARER", kafka_oauth_client_id="relay-20s"
    )
    variables = {k.removeprefix("RELAY_").lower(): v for k, v in as_environment(settings).items()}
    bootstrap = variables.pop("kafka_bootstrap_servers")
    statuses: Counter[int | str] = Counter()
    stop = asyncio.Event()
    with relayproc.serve(bootstrap, public_key_files, tmp_path, unique_topic("refresh"),
                         **variables) as relay:  # fmt: skip

        async def sender(http: aiohttp.ClientSession, n: int) -> None:
            """Paced deliveries of one location, one at a time."""
            sent = 0
            while not stop.is_set() and sent < 10_000:  # bounded whatever the clock does
                began = time.monotonic()
                body = as_delivery({"type": "ContactCreate", "locationId": f"loc-{n}-{sent}"})
                headers = {"X-GHL-Signature": sign_ed25519(ed25519_key, body)}
                try:
                    async with http.post(relay.webhook_url, data=body, headers=headers) as answer:
                        statuses[answer.status] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1
                sent += 1
                pause = 1 / REFRESH_RATE_PER_SENDER - (time.monotonic() - began)
                await asyncio.sleep(max(0.0, pause))

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            async with asyncio.timeout(30):  # connected: readiness, before the load
                while (await _get_status(http, relay.webhook_url.replace(
                        "/webhooks/hoopai", "/readyz"))) != 200:  # fmt: skip
                    await asyncio.sleep(0.2)
            first = relay.metric(FETCHED_OK)
            senders = [asyncio.create_task(sender(http, n)) for n in range(REFRESH_SENDERS)]
            await asyncio.sleep(REFRESH_RUN_S)
            stop.set()
            await asyncio.gather(*senders)
        refreshes = relay.metric(FETCHED_OK) - first
        refused = relay.metric(FETCHED.format("refused"), 0) + relay.metric(
            FETCHED.format("error"), 0
        )
        log = relay.log.read_text()
    total = sum(statuses.values())
    # aiokafka logs each OAUTHBEARER login: more than the connections it started with means
    # the broker ended sessions at their token's expiry and the producer logged in again.
    logins = log.count("Authenticated via OAUTHBEARER")
    print(f"\ntoken refresh: {REFRESH_RUN_S:.0f} s, {total} requests, {dict(statuses)}, "
          f"{refreshes:.0f} refreshes of 20 s tokens, {logins} OAUTHBEARER logins")  # fmt: skip
    assert statuses == Counter({200: total}), statuses
    assert total >= REFRESH_RUN_S * REFRESH_SENDERS * REFRESH_RATE_PER_SENDER * 0.5
    assert refreshes >= 3
    assert logins >= 3  # the start's two (bootstrap, the leader), then one per expiry at least
    assert refused == 0
    assert_no_secret(log, kafka_secure)


FETCHED = 'relay_kafka_oauth_token_fetches_total{{outcome="{}"}}'
FETCHED_OK = FETCHED.format("ok")


async def _get_status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        return response.status


def assert_no_secret(text: str, kafka: securekafka.SecureKafka) -> None:
    """No password, client secret, token or private key of the secure broker in ``text``."""
    key_body = "".join(kafka.client_keyfile.read_text().splitlines()[1:-1])
    for name, secret in (
        ("the SASL password", kafka.sasl_password),
        ("the OAuth client secret", kafka.oauth_secret),
        ("a private key", key_body[:40]),
        ("a private key", "PRIVATE KEY"),
        ("a JWT (token)", "eyJ"),  # every JWT starts with a base64 '{"'
    ):
        assert secret not in text, f"{name} is in the output"
