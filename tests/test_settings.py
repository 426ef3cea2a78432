import dataclasses
import re
from pathlib import Path

import pytest

from relay import cli
from relay.errors import ConfigError
from relay.settings import SECRET_SETTINGS, Settings, readme_rows
from relay.workflows import TABLE as WORKFLOWS_TABLE


def test_defaults_without_environment() -> None:
    """No RELAY_* variables: the documented defaults."""
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.http_port, settings.max_body_bytes, settings.ack_timeout_ms) == (
        8080,
        1024 * 1024,
        4000,
    )
    assert settings.accept_legacy_rsa is False
    assert settings.topic_prefix == "hoopai"


def test_values_are_cast() -> None:
    """Each variable is cast to its field's type; lists split on commas."""
    settings = Settings.from_env(
        {
            "RELAY_HTTP_PORT": "9000",
            "RELAY_ACCEPT_LEGACY_RSA": "true",
            "RELAY_PUBLIC_KEYS": "a.pem, b.pem",
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "RELAY_TOPIC_PARTITIONS": "6",
            "RELAY_TOPIC_REPLICATION_FACTOR": "",
            "UNRELATED": "x",
        }
    )
    assert settings.http_port == 9000
    assert settings.accept_legacy_rsa is True
    assert settings.public_keys == (Path("a.pem"), Path("b.pem"))
    assert settings.kafka_bootstrap_servers == ("k1:9092", "k2:9092")
    assert (settings.topic_partitions, settings.topic_replication_factor) == (6, None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_HTTP_PORT", "abc"),
        ("RELAY_HTTP_PORT", "70000"),
        ("RELAY_ACCEPT_LEGACY_RSA", "maybe"),
        ("RELAY_KAFKA_BOOTSTRAP_SERVERS", " , "),
        ("RELAY_UNAVAILABLE_STATUS", "500"),
        ("RELAY_ACK_TIMEOUT_MS", "0"),
        ("RELAY_TOPIC_PREFIX", ""),
        ("RELAY_TOPIC_PARTITIONS", "0"),
    ],
)
def test_bad_value_names_the_setting(name: str, value: str) -> None:
    """A bad value raises ConfigError whose message names the variable."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_shipped_config_file_is_valid_and_all_defaults() -> None:
    """config/relay.toml loads, and (all commented) changes no default."""
    path = Path(__file__).resolve().parent.parent / "config" / "relay.toml"
    assert Settings.load({"RELAY_CONFIG_FILE": str(path)}) == Settings()


def test_every_setting_is_in_the_shipped_config_file_and_the_readme() -> None:
    """Each field appears in config/relay.toml, and its declared row in the README's table."""
    root = Path(__file__).resolve().parent.parent
    config = (root / "config" / "relay.toml").read_text()
    readme = (root / "README.md").read_text().splitlines()
    for field in dataclasses.fields(Settings):
        if field.name == WORKFLOWS_TABLE:  # tables of the file only, not a RELAY_* variable
            assert f"# [{WORKFLOWS_TABLE}." in config
            assert "## Workflow webhooks" in readme
            assert not [row for row in readme_rows() if WORKFLOWS_TABLE.upper() in row]
            continue
        if field.name not in SECRET_SETTINGS:  # secrets may not be in the file at all
            assert f"# {field.name} = " in config, field.name
    for row in readme_rows():
        assert row in readme


def test_environment_beats_the_file_which_beats_defaults(tmp_path: Path) -> None:
    """RELAY_* overrides the config file; the file overrides defaults; typed TOML values work."""
    path = tmp_path / "relay.toml"
    path.write_text(
        'http_port = 9000\nmetrics_port = 9100\nkafka_bootstrap_servers = ["a:1", "b:2"]\n'
        "accept_legacy_rsa = true\n"
    )
    settings = Settings.load({"RELAY_CONFIG_FILE": str(path), "RELAY_HTTP_PORT": "9001"})
    assert settings.http_port == 9001
    assert settings.metrics_port == 9100
    assert settings.kafka_bootstrap_servers == ("a:1", "b:2")
    assert settings.accept_legacy_rsa is True


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("htp_port = 1\n", "unknown setting 'htp_port'; did you mean http_port?"),
        ('kafka_sasl_password = "x"\n', "kafka_sasl_password is a secret"),
        ('http_port = "abc"\n', "http_port='abc'"),
        ("not toml [", "relay.toml"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path: Path, content: str, message: str) -> None:
    """A config file with a typo, a secret, a bad value or bad syntax is refused, named."""
    path = tmp_path / "relay.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.load({"RELAY_CONFIG_FILE": str(path)})


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    """RELAY_CONFIG_FILE naming a missing file fails; the default path may be absent."""
    with pytest.raises(ConfigError, match="RELAY_CONFIG_FILE"):
        Settings.load({"RELAY_CONFIG_FILE": str(tmp_path / "nope.toml")})


def test_password_from_a_file_and_hidden_from_repr(tmp_path: Path) -> None:
    """The SASL password is read once from its file and never shown by repr()."""
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")
    settings = Settings.from_env(
        {
            "RELAY_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
            "RELAY_KAFKA_SASL_MECHANISM": "scram-sha-512",
            "RELAY_KAFKA_SASL_USERNAME": "relay",
            "RELAY_KAFKA_SASL_PASSWORD_FILE": str(secret),
        }
    )
    assert settings.kafka_sasl_password == "s3cret-from-file"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert "s3cret" not in repr(settings)


def test_sasl_without_credentials_is_refused() -> None:
    """SASL without a username and password fails at start-up, naming the settings."""
    with pytest.raises(ConfigError, match="RELAY_KAFKA_SASL_USERNAME"):
        Settings.from_env({"RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})


def test_workers_need_a_fixed_port() -> None:
    """Several workers share one port, so port 0 (each its own) is refused; one may use 0."""
    with pytest.raises(ConfigError, match="RELAY_WORKERS above 1 needs a fixed RELAY_HTTP_PORT"):
        Settings.from_env({"RELAY_WORKERS": "2", "RELAY_HTTP_PORT": "0"})
    assert Settings.from_env({"RELAY_WORKERS": "2", "RELAY_HTTP_PORT": "8081"}).workers == 2
    assert Settings.from_env({"RELAY_HTTP_PORT": "0"}).http_port == 0


def test_tls_files_go_together(tmp_path: Path) -> None:
    """A certificate without its key (or a missing file) is refused at start-up."""
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        Settings.from_env({"RELAY_TLS_CERT_FILE": str(cert)})
    with pytest.raises(ConfigError, match=r"RELAY_TLS_KEY_FILE=.*no such file"):
        Settings.from_env(
            {"RELAY_TLS_CERT_FILE": str(cert), "RELAY_TLS_KEY_FILE": str(tmp_path / "k")}
        )


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [
        ("RELAY_PUBLIC_KEY", "RELAY_PUBLIC_KEYS"),
        ("RELAY_HTTP_PROT", "RELAY_HTTP_PORT"),
        ("RELAY_KAFKA_BOOTSTRAP_SERVER", "RELAY_KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_a_misspelt_variable_is_an_error_naming_the_nearest_setting(
    variable: str, nearest: str
) -> None:
    """A ``RELAY_*`` variable that is no setting stops the relay: "did you mean ...?"."""
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: "8081"})
    assert str(refused.value) == f"{variable}: no such setting; did you mean {nearest}?"


def test_a_misspelt_variable_exits_2_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``relay check-config`` with ``RELAY_PUBLIC_KEY`` (singular): exit 2, the suggestion."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY_PUBLIC_KEY", "dev.pem")
    assert cli.main(["check-config"]) == 2
    assert capsys.readouterr().err == (
        "relay: configuration error: RELAY_PUBLIC_KEY: no such setting; "
        "did you mean RELAY_PUBLIC_KEYS?\n"
    )


def test_kubernetes_service_link_variables_are_accepted() -> None:
    """Kubernetes' service-link variables are recognised by their shape and accepted.

    Those of Services named ``relay``, ``relay-metrics`` and ``relay-hoopai-relay``: no
    error, no setting changed.
    """
    injected = {
        "RELAY_SERVICE_HOST": "10.96.0.7",
        "RELAY_SERVICE_PORT": "8080",
        "RELAY_SERVICE_PORT_HTTP": "8080",
        "RELAY_PORT": "tcp://10.96.0.7:8080",
        "RELAY_PORT_8080_TCP": "tcp://10.96.0.7:8080",
        "RELAY_PORT_8080_TCP_PROTO": "tcp",
        "RELAY_PORT_8080_TCP_PORT": "8080",
        "RELAY_PORT_8080_TCP_ADDR": "10.96.0.7",
        "RELAY_METRICS_SERVICE_HOST": "10.96.0.8",
        "RELAY_METRICS_PORT": "tcp://10.96.0.8:9090",  # the name of a setting
        "RELAY_HOOPAI_RELAY_SERVICE_PORT_METRICS": "9090",
        "RELAY_HOOPAI_RELAY_PORT_9090_TCP_ADDR": "10.96.0.9",
    }
    assert Settings.from_env(injected) == Settings()
    assert Settings.from_env({**injected, "RELAY_METRICS_PORT": "9191"}).metrics_port == 9191
    with pytest.raises(ConfigError, match="RELAY_PORT: no such setting"):
        Settings.from_env({"RELAY_PORT": "8080"})  # not the shape Kubernetes gives it


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"RELAY_HTTP_PORT": "70000"}, "RELAY_HTTP_PORT=70000: out of range; allowed: 0 to 65535"),
        (
            {"RELAY_UNAVAILABLE_STATUS": "500"},
            "RELAY_UNAVAILABLE_STATUS=500: out of range; allowed: 429 or 503",
        ),
        (
            {"RELAY_LOG_LEVEL": "loud"},
            "RELAY_LOG_LEVEL=LOUD: out of range; allowed: DEBUG, INFO, WARNING or ERROR",
        ),
        ({"RELAY_WORKERS": "0"}, "RELAY_WORKERS=0: out of range; allowed: 1 to 64"),
        ({"RELAY_MAX_BODY_BYTES": "0"}, "RELAY_MAX_BODY_BYTES=0: out of range; allowed: above 0"),
        (
            {"RELAY_DRAIN_DELAY_S": "30"},
            "RELAY_SHUTDOWN_GRACE_S=25.0: out of range; allowed: above RELAY_DRAIN_DELAY_S (30.0)",
        ),
    ],
)
def test_out_of_range_errors_say_what_is_allowed(variables: dict[str, str], message: str) -> None:
    """A value out of range is refused with the allowed values or the range."""
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(variables)
    assert str(refused.value) == message
