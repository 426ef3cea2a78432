"""The ``relay`` command line, run as real processes (``python -m relay``)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import stat
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay import __version__, cli
from relay.ingress.catalogue import load_catalogue
from relay.ingress.signatures import load_public_keys, spki_sha256
from relay.tools.samples import sample, sample_names
from relay.tools.tail import format_record, topic_pattern
from tests.certs import self_signed
from tests.cliutil import TIMEOUT_S, answers, cli_env, relay_cli, relay_cli_async
from tests.kafkautil import consume
from tests.relayutil import ROOT, RunningRelay, StartRelay

CATALOGUE = load_catalogue()


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago: nothing listens on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def bootstrap_of(relay: RunningRelay) -> str:
    """The relay's bootstrap servers, comma-separated."""
    return ",".join(relay.settings.kafka_bootstrap_servers)


def headers_of(record: Any) -> dict[str, bytes]:
    """A record's headers as a dict (the relay writes each name once)."""
    return {name: bytes(value) for name, value in record.headers}


@pytest.fixture(scope="module")
def dev_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``relay keygen`` then ``keygen --rsa``: the key folder and what they printed."""
    cwd = tmp_path_factory.mktemp("keygen")
    printed = ""
    for extra in ([], ["--rsa"]):
        out = relay_cli("keygen", *extra, "--out", "keys", cwd=cwd)
        assert out.returncode == 0, out.stderr
        printed += out.stdout
    return cwd / "keys", printed


def test_version_from_python_m() -> None:
    """``python -m relay --version`` prints the package version."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"hoopai-relay {__version__}"


def test_help_lists_serve() -> None:
    """``--help`` exits 0 and names every command."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("serve", "check-config", "keygen", "send", "tail"):
        assert command in out.stdout


def test_bare_relay_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """``relay`` without a command is a usage error: the help on stderr, exit 2."""
    assert cli.main([]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("usage: relay")
    for command in ("serve", "check-config", "keygen", "send", "tail"):
        assert command in printed.err


@pytest.mark.parametrize("command", ["serve", "check-config", "keygen", "send", "tail"])
def test_each_command_help_says_what_it_does(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``relay COMMAND --help`` has a one-line description under its usage."""
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    description = capsys.readouterr().out.split("\n\n")[1]
    assert "\n" not in description.strip()
    assert len(description.split()) >= 4, description


def test_second_relay_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    """A port another process holds: one line naming the port and its setting, exit 2.

    Not a traceback; for the webhook port and for the metrics port.
    """
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        for setting, other in (("RELAY_HTTP_PORT", "RELAY_METRICS_PORT"),
                               ("RELAY_METRICS_PORT", "RELAY_HTTP_PORT")):  # fmt: skip
            env = cli_env(
                RELAY_HTTP_HOST="127.0.0.1",
                RELAY_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",  # not needed to fail
                RELAY_ROUTES_FILE=str(ROOT / "config" / "routes.toml"),
                **{setting: str(busy), other: "0"},
            )
            out = relay_cli("serve", cwd=tmp_path, env=env)
            assert out.returncode == 2, (out.stdout, out.stderr)
            assert len(out.stderr.splitlines()) == 1, out.stderr
            assert out.stderr.startswith(f"relay: configuration error: {setting}={busy}: ")
            assert f"127.0.0.1:{busy} is already in use" in out.stderr
            assert "Traceback" not in out.stdout + out.stderr


def test_bad_setting_exits_2_naming_it() -> None:
    """``relay serve`` with a bad setting exits 2 and names the variable and value."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        capture_output=True,
        text=True,
        env={"RELAY_HTTP_PORT": "abc", "PATH": ""},
        check=False,
    )
    assert out.returncode == 2
    assert "RELAY_HTTP_PORT='abc'" in out.stderr


def test_unreadable_key_file_exits_2(tmp_path: Path) -> None:
    """A key file that does not exist is a configuration error, exit 2."""
    missing = tmp_path / "nope.pem"
    out = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        capture_output=True,
        text=True,
        env={"RELAY_PUBLIC_KEYS": str(missing), "PATH": ""},
        check=False,
    )
    assert out.returncode == 2
    assert "RELAY_PUBLIC_KEYS" in out.stderr
    assert str(missing) in out.stderr


# --- keygen ---------------------------------------------------------------------------


def test_keygen_writes_pem_pairs_and_prints_fingerprints(dev_keys: tuple[Path, str]) -> None:
    """keygen: PKCS8 private keys (mode 600), SPKI public keys, their pins printed."""
    folder, printed = dev_keys
    for scheme in ("ed25519", "rsa"):
        private = folder / f"{scheme}.key"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert (folder / f"{scheme}.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
        assert str(private) in printed or f"keys/{scheme}.key" in printed
    keys = load_public_keys([folder / "ed25519.pem", folder / "rsa.pem"])
    (ed25519,), (rsa,) = keys.ed25519, keys.rsa
    assert rsa.key_size == 4096
    assert spki_sha256(ed25519) in printed
    assert spki_sha256(rsa) in printed
    assert "RELAY_PUBLIC_KEYS=keys/ed25519.pem,keys/rsa.pem" in printed


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    """A second keygen into the same folder exits 1 and keeps the keys; --force replaces them."""
    assert relay_cli("keygen", cwd=tmp_path).returncode == 0
    private = tmp_path / ".dev-keys" / "ed25519.key"
    before = private.read_bytes()
    again = relay_cli("keygen", cwd=tmp_path)
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert private.read_bytes() == before
    forced = relay_cli("keygen", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_keygen_rsa_adds_the_rsa_pair_and_leaves_ed25519_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keygen --rsa`` (even with ``--force``) writes the RSA pair only, never Ed25519.

    A demo relay trusting the Ed25519 key goes on accepting its deliveries; the command
    says to trust both public keys.
    """
    folder = tmp_path / "keys"
    assert cli.main(["keygen", "--out", str(folder)]) == 0
    ed25519 = {name: (folder / name).read_bytes() for name in ("ed25519.key", "ed25519.pem")}
    for extra in ([], ["--force"]):
        capsys.readouterr()
        assert cli.main(["keygen", "--rsa", *extra, "--out", str(folder)]) == 0
        printed = capsys.readouterr().out
        assert {name: (folder / name).read_bytes() for name in ed25519} == ed25519
        assert (folder / "rsa.key").is_file()
        assert (folder / "rsa.pem").is_file()
        assert "ed25519 private key" not in printed
        trust = f"RELAY_PUBLIC_KEYS={folder}/ed25519.pem,{folder}/rsa.pem"
        assert f"{trust} RELAY_ACCEPT_LEGACY_RSA=true" in printed


# --- send -----------------------------------------------------------------------------


async def test_keygen_keys_sign_what_the_relay_accepts(
    tmp_path: Path, dev_keys: tuple[Path, str], start_relay: StartRelay
) -> None:
    """``relay send`` with the generated key gets 200 and the record is in Kafka, as sent."""
    folder, _ = dev_keys
    relay = await start_relay(public_keys=(folder / "ed25519.pem",))
    out = await relay_cli_async(
        "send", "--type", "ContactCreate", "--key", str(folder / "ed25519.key"),
        "--url", relay.webhook_url, "--location", "loc-cli", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout, out.stderr)
    ((status, answer),) = answers(out.stdout)
    assert status == 200
    assert answer["topic"] == relay.topic("contacts")
    (record,) = await consume(bootstrap_of(relay), relay.topic("contacts"), 1)
    body = json.loads(record.value)
    assert (body["type"], body["locationId"], body["webhookId"]) == (
        "ContactCreate", "loc-cli", answer["id"],
    )  # fmt: skip
    assert record.key == b"loc-cli"
    assert headers_of(record)["hoopai_signature_scheme"] == b"ed25519"


async def test_send_legacy_rsa(
    tmp_path: Path, dev_keys: tuple[Path, str], start_relay: StartRelay
) -> None:
    """``send --rsa`` signs X-WH-Signature, which a relay with legacy RSA on accepts."""
    folder, _ = dev_keys
    relay = await start_relay(accept_legacy_rsa=True, public_keys=(folder / "rsa.pem",))
    out = await relay_cli_async(
        "send", "--rsa", "--key", str(folder / "rsa.key"), "--type", "TaskCreate",
        "--url", relay.webhook_url, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout, out.stderr)
    ((status, answer),) = answers(out.stdout)
    assert (status, answer["topic"]) == (200, relay.topic("tasks"))
    (record,) = await consume(bootstrap_of(relay), relay.topic("tasks"), 1)
    assert headers_of(record)["hoopai_signature_scheme"] == b"rsa-sha256"


async def test_send_count_and_raw_file(
    tmp_path: Path, dev_keys: tuple[Path, str], start_relay: StartRelay
) -> None:
    """--count sends distinct deliveries; a file that is not a JSON object is dead-lettered."""
    folder, _ = dev_keys
    relay = await start_relay(public_keys=(folder / "ed25519.pem",))
    key = ("--key", str(folder / "ed25519.key"), "--url", relay.webhook_url)
    out = await relay_cli_async("send", *key, "--type", "NoteCreate", "--count", "3", cwd=tmp_path)
    assert out.returncode == 0, (out.stdout, out.stderr)
    sent = answers(out.stdout)
    assert [status for status, _ in sent] == [200, 200, 200]
    assert len({answer["id"] for _, answer in sent}) == 3
    raw = tmp_path / "array.json"
    raw.write_bytes(b"[1, 2, 3]")
    out = await relay_cli_async("send", *key, "--file", str(raw), cwd=tmp_path)
    assert out.returncode == 0, (out.stdout, out.stderr)
    ((status, answer),) = answers(out.stdout)
    assert (status, answer["topic"]) == (200, relay.topic("deadletter"))
    assert "not a JSON object" in out.stderr
    (record,) = await consume(bootstrap_of(relay), relay.topic("deadletter"), 1)
    assert record.value == b"[1, 2, 3]"


async def test_send_to_a_relay_with_other_keys_exits_1(
    tmp_path: Path, dev_keys: tuple[Path, str], start_relay: StartRelay
) -> None:
    """A relay that does not know the key answers 401; send prints it and exits 1."""
    folder, _ = dev_keys
    relay = await start_relay()  # the test session's keys, not the generated ones
    out = await relay_cli_async(
        "send", "--key", str(folder / "ed25519.key"), "--url", relay.webhook_url, cwd=tmp_path
    )
    assert out.returncode == 1
    ((status, answer),) = answers(out.stdout)
    assert (status, answer["reason"]) == (401, "bad_signature")


async def test_send_says_which_key_to_trust_after_bad_signature(
    tmp_path: Path, dev_keys: tuple[Path, str], start_inprocess: StartRelay
) -> None:
    """After ``401 bad_signature``, send names the signing key's fingerprint and its .pem."""
    folder, _ = dev_keys
    relay = await start_inprocess()  # trusts the test session's keys, not these
    out = await relay_cli_async(
        "send", "--key", str(folder / "ed25519.key"), "--url", relay.webhook_url, cwd=tmp_path
    )
    assert out.returncode == 1
    (fingerprint,) = [spki_sha256(k) for k in load_public_keys([folder / "ed25519.pem"]).ed25519]
    assert out.stderr == (
        "relay send: bad_signature: the relay does not trust the key that signed "
        f"(SPKI SHA-256 {fingerprint}). Start it with that key's public half, as in "
        f'RELAY_PUBLIC_KEYS={folder / "ed25519.pem"}; its start-up line ("configuration") '
        "and `relay check-config` list the keys it trusts.\n"
    )


def test_send_type_list_exits_0_and_unknown_type_exits_2(tmp_path: Path) -> None:
    """``--type list`` prints every sample (exit 0); an unknown type prints them too (exit 2)."""
    listed = relay_cli("send", "--type", "list", cwd=tmp_path)
    assert listed.returncode == 0
    assert listed.stdout.split() == sample_names()
    events = {name.split(".")[0] for name in listed.stdout.split()}
    assert events == {event.name for event in load_catalogue().events}
    unknown = relay_cli("send", "--type", "ContactExplode", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "ContactExplode" in unknown.stderr
    assert "InboundMessage.Call" in unknown.stderr


def test_send_without_key_or_relay(tmp_path: Path, dev_keys: tuple[Path, str]) -> None:
    """No key file exits 2 and says keygen; a relay that is not there exits 1 with an error."""
    no_key = relay_cli("send", cwd=tmp_path)
    assert no_key.returncode == 2
    assert "relay keygen" in no_key.stderr
    port = free_port()
    folder, _ = dev_keys
    url = f"http://127.0.0.1:{port}/webhooks/hoopai"
    nobody = relay_cli("send", "--key", str(folder / "ed25519.key"), "--url", url, cwd=tmp_path)
    assert nobody.returncode == 1
    assert nobody.stdout.startswith("error ")


async def test_send_over_https(
    tmp_path: Path, dev_keys: tuple[Path, str], start_relay: StartRelay
) -> None:
    """Over https: verified with --cafile, refused without it, accepted blindly with --insecure."""
    folder, _ = dev_keys
    cert, cert_key = self_signed(tmp_path)
    relay = await start_relay(
        public_keys=(folder / "ed25519.pem",), tls_cert_file=cert, tls_key_file=cert_key
    )
    assert relay.webhook_url.startswith("https://")
    key = ("--key", str(folder / "ed25519.key"), "--url", relay.webhook_url)
    trusted = await relay_cli_async("send", *key, "--cafile", str(cert), cwd=tmp_path)
    assert trusted.returncode == 0, (trusted.stdout, trusted.stderr)
    untrusted = await relay_cli_async("send", *key, cwd=tmp_path)
    assert untrusted.returncode == 1
    assert untrusted.stdout.startswith("error ")
    assert "certificate" in untrusted.stdout.lower()
    insecure = await relay_cli_async("send", *key, "--insecure", cwd=tmp_path)
    assert insecure.returncode == 0, (insecure.stdout, insecure.stderr)


# --- tail -----------------------------------------------------------------------------


def _tail_env(relay: RunningRelay) -> dict[str, str]:
    """The environment that points ``relay tail`` at this relay's broker and topics."""
    return cli_env(
        RELAY_KAFKA_BOOTSTRAP_SERVERS=bootstrap_of(relay),
        RELAY_TOPIC_PREFIX=relay.settings.topic_prefix,
    )


async def test_tail_prints_what_was_sent(
    tmp_path: Path, dev_keys: tuple[Path, str], start_relay: StartRelay
) -> None:
    """``tail --from-beginning`` prints both records, of two topics, with their ids and types."""
    folder, _ = dev_keys
    relay = await start_relay(public_keys=(folder / "ed25519.pem",))
    key = ("--key", str(folder / "ed25519.key"), "--url", relay.webhook_url)
    ids: dict[str, tuple[str, str]] = {}
    for event_type in ("ContactCreate", "NoteCreate"):
        out = await relay_cli_async("send", *key, "--type", event_type, cwd=tmp_path)
        assert out.returncode == 0, (out.stdout, out.stderr)
        ((_, answer),) = answers(out.stdout)
        ids[answer["id"]] = (event_type, answer["topic"])
    out = await relay_cli_async(
        "tail", "--from-beginning", "--max", "2", "--timeout", "20",
        cwd=tmp_path, env=_tail_env(relay),
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout, out.stderr)
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        topic, partition, offset, record_key, ce_type, ce_id, body = line.split(" ", 6)
        event_type, expected_topic = ids.pop(ce_id)
        assert (topic, ce_type) == (expected_topic, f"com.hoopai.{event_type}")
        assert int(partition) >= 0
        assert int(offset) >= 0
        assert json.loads(body)["webhookId"] == ce_id
        assert record_key == json.loads(body)["locationId"]
    assert not ids


async def test_tail_from_now_sees_new_records_and_new_topics(
    tmp_path: Path, dev_keys: tuple[Path, str], start_relay: StartRelay
) -> None:
    """Without --from-beginning, tail skips old records and prints later ones, new topics too."""
    folder, _ = dev_keys
    relay = await start_relay(public_keys=(folder / "ed25519.pem",))
    key = ("--key", str(folder / "ed25519.key"), "--url", relay.webhook_url)
    old = await relay_cli_async("send", *key, "--type", "ContactCreate", cwd=tmp_path)
    assert old.returncode == 0, (old.stdout, old.stderr)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "tail", "--max", "2", "--timeout", "30",
        cwd=tmp_path, env=_tail_env(relay),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        async with asyncio.timeout(TIMEOUT_S):
            # tail notes each assignment on stderr; after the first, "now" is fixed
            while not (line := await process.stderr.readline()).startswith(b"relay tail: "):
                assert line, "tail exited before reading"
        new_ids = []
        for event_type in ("ContactUpdate", "TaskCreate"):  # TaskCreate: a topic not there yet
            out = await relay_cli_async("send", *key, "--type", event_type, cwd=tmp_path)
            assert out.returncode == 0, (out.stdout, out.stderr)
            new_ids.append(answers(out.stdout)[0][1]["id"])
        async with asyncio.timeout(TIMEOUT_S):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr
    printed = [line.split(" ", 6)[5] for line in stdout.decode().splitlines()]
    assert sorted(printed) == sorted(new_ids)


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default action."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_tail_stops_on_ctrl_c(tmp_path: Path, start_relay: StartRelay) -> None:
    """Ctrl-C (SIGINT) stops tail quietly with the shell's status for it, 130."""
    relay = await start_relay()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "tail",
        cwd=tmp_path, env=_tail_env(relay),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # As from a terminal: a test run started in the background (`cmd &`) inherits an
        # ignored SIGINT, and so would tail, which would then never see the Ctrl-C.
        preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        waiting = (
            f"relay tail: waiting for a topic matching {topic_pattern(relay.settings.topic_prefix)}"
        )
        async with asyncio.timeout(TIMEOUT_S):
            # On a fresh broker aiokafka may first log that the group coordinator is not
            # available yet; what matters is that tail reaches its waiting state.
            while (line := await process.stderr.readline()).decode().strip() != waiting:
                assert line, "tail exited before it was waiting for topics"
            process.send_signal(signal.SIGINT)
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130
    assert b"Traceback" not in stderr


def test_tail_without_kafka_exits_1(tmp_path: Path) -> None:
    """A broker that cannot be reached: tail says where it looked and exits 1, no traceback."""
    bootstrap = f"127.0.0.1:{free_port()}"
    env = cli_env(RELAY_KAFKA_BOOTSTRAP_SERVERS=bootstrap)
    out = relay_cli("tail", "--timeout", "5", cwd=tmp_path, env=env)
    assert out.returncode == 1
    assert f"relay tail: Kafka at {bootstrap}: " in out.stderr
    assert "Traceback" not in out.stderr
    assert "Unclosed" not in out.stderr


def test_tail_pattern_and_line_format() -> None:
    """The pattern matches only ``<prefix>.*``; a record prints on one line, JSON kept as is."""
    pattern = re.compile(topic_pattern("hoo.pai"))
    assert pattern.match("hoo.pai.contacts")
    assert not pattern.match("hooXpai.contacts")
    assert not pattern.match("hoo.pai")
    record = types.SimpleNamespace(
        topic="hoo.pai.deadletter",
        partition=0,
        offset=7,
        key=None,
        headers=[("ce_id", b"sha256:ab"), ("ce_type", b"com.hoopai.unknown")],
        value=b'{\n  "a": "x\\ny"\r\n}\xff\x1b[31m\xe2\x80\xa8',
    )
    assert format_record(record, CATALOGUE) == (
        'hoo.pai.deadletter 0 7 - com.hoopai.unknown sha256:ab {\\n  "a": "x\\ny"\\r\\n}'
        "\ufffd\\x1b[31m\\u2028"
    )
    compact = b'{"type":"NoteCreate","body":"Zo\xc3\xab \\"quoted\\"\\nnext\\\\"}'
    record.value, record.key = compact, b"loc-1"
    line = format_record(record, CATALOGUE)
    assert line.split(" ", 6)[3] == "loc-1"
    assert json.loads(line.split(" ", 6)[6]) == json.loads(compact)


def test_tail_masks_the_voice_ai_bearer_token() -> None:
    """``tail`` prints a VoiceAiCallEnd with authenticationValue masked, all else as sent."""
    body = json.dumps(json.loads(sample("VoiceAiCallEnd")), ensure_ascii=False).encode()
    record = types.SimpleNamespace(
        topic="p.voice-ai", partition=0, offset=0, key=b"LOC_1234567890",
        headers=[("ce_type", b"com.hoopai.VoiceAiCallEnd")], value=body,
    )  # fmt: skip
    shown = json.loads(format_record(record, CATALOGUE).split(" ", 6)[6])
    sent = json.loads(body)
    assert b"Bearer sk_live_xxx" in body
    assert b"sk_live" not in format_record(record, CATALOGUE).encode()
    details = shown["executedCallActions"][1]["actionParameters"]["apiDetails"]
    assert details["authenticationValue"] == "***"
    details["authenticationValue"] = "Bearer sk_live_xxx"
    assert shown == sent
    assert record.value is body  # the record is left as it came


# --- check-config ---------------------------------------------------------------------


def test_check_config_summarises_a_valid_configuration(
    tmp_path: Path, dev_keys: tuple[Path, str]
) -> None:
    """check-config exits 0 and shows the address, Kafka, prefix, key pins and routes file."""
    folder, _ = dev_keys
    routes = ROOT / "config" / "routes.toml"
    cert, cert_key = self_signed(tmp_path)
    env = cli_env(
        RELAY_TLS_CERT_FILE=str(cert),
        RELAY_TLS_KEY_FILE=str(cert_key),
        RELAY_ROUTES_FILE=str(routes),
        RELAY_PUBLIC_KEYS=f"{folder / 'ed25519.pem'},{folder / 'rsa.pem'}",
        RELAY_KAFKA_BOOTSTRAP_SERVERS="kafka-1:9092,kafka-2:9092",
        RELAY_TOPIC_PREFIX="acme",
        RELAY_HTTP_PORT="8443",
    )
    out = relay_cli("check-config", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    keys = load_public_keys([folder / "ed25519.pem", folder / "rsa.pem"])
    for expected in (
        "https://0.0.0.0:8443",
        "kafka-1:9092,kafka-2:9092",
        "PLAINTEXT",
        "acme",
        str(routes),
        "ed25519 keys:    1",
        "rsa keys:        1",
        "event catalogue: 63 events in 17 families",
        spki_sha256(keys.ed25519[0]),
        spki_sha256(keys.rsa[0]),
    ):
        assert expected in out.stdout


def test_check_config_default_keys_are_the_published_ones(tmp_path: Path) -> None:
    """Without RELAY_PUBLIC_KEYS, check-config shows the pins of the shipped HighLevel keys."""
    env = cli_env(RELAY_ROUTES_FILE=str(ROOT / "config" / "routes.toml"))
    out = relay_cli("check-config", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    shipped = load_public_keys(sorted((ROOT / "relay" / "ingress" / "keys").glob("*.pem")))
    pins = [spki_sha256(key) for key in shipped.ed25519] + [spki_sha256(k) for k in shipped.rsa]
    assert len(pins) == 2
    for pin in pins:
        assert pin in out.stdout


def _ec_key(folder: Path) -> Path:
    """A PEM public key of a type the relay does not verify with (EC P-256)."""
    path = folder / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def _file(folder: Path, name: str, text: str) -> Path:
    """A small text file (a config file, a broken certificate) for one test."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


CONFIG_ERRORS = [
    pytest.param(lambda _: {"RELAY_HTTP_PORT": "abc"}, r"RELAY_HTTP_PORT='abc'", id="port"),
    pytest.param(
        lambda tmp: {"RELAY_PUBLIC_KEYS": str(tmp / "nope.pem")},
        r"RELAY_PUBLIC_KEYS: .*nope\.pem: unreadable",
        id="missing-key-file",
    ),
    pytest.param(
        lambda tmp: {"RELAY_PUBLIC_KEYS": str(_ec_key(tmp))},
        r"RELAY_PUBLIC_KEYS: .*ec\.pem: unsupported key type \(EC key",
        id="ec-key",
    ),
    pytest.param(
        lambda tmp: {
            "RELAY_TLS_CERT_FILE": str(_file(tmp, "cert.pem", "not a certificate\n")),
            "RELAY_TLS_KEY_FILE": str(_file(tmp, "key.pem", "not a key\n")),
        },
        r"RELAY_TLS_CERT_FILE=.*cert\.pem, RELAY_TLS_KEY_FILE=.*key\.pem",
        id="bad-tls-cert",
    ),
    pytest.param(
        lambda _: {"RELAY_KAFKA_BOOTSTRAP_SERVERS": ","},
        r"RELAY_KAFKA_BOOTSTRAP_SERVERS=",
        id="no-bootstrap",
    ),
    pytest.param(
        lambda tmp: {"RELAY_CONFIG_FILE": str(_file(tmp, "relay.toml", 'colour = "blue"\n'))},
        r"relay\.toml: unknown setting 'colour'",
        id="unknown-file-key",
    ),
    pytest.param(
        lambda tmp: {
            "RELAY_CONFIG_FILE": str(_file(tmp, "relay.toml", 'kafka_sasl_password = "hunter2"\n'))
        },
        r"relay\.toml: kafka_sasl_password is a secret",
        id="secret-in-file",
    ),
]


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(("variables", "message"), CONFIG_ERRORS)
def test_configuration_errors_exit_2_naming_the_setting(
    tmp_path: Path, command: str, variables: Callable[[Path], dict[str, str]], message: str
) -> None:
    """check-config and serve refuse the same bad configurations alike: exit 2, the setting."""
    # Free ports, so that a serve that wrongly started would not clash with anything.
    base = {"RELAY_HTTP_PORT": "0", "RELAY_METRICS_PORT": "0"}
    env = cli_env(RELAY_ROUTES_FILE=str(ROOT / "config" / "routes.toml"))
    env.update(base | variables(tmp_path))
    out = relay_cli(command, cwd=tmp_path, env=env, timeout=30)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("relay: configuration error: ")
    assert re.search(message, out.stderr), out.stderr
    assert "hunter2" not in out.stderr
    assert out.stdout == ""
