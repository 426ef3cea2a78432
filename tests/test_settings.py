from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.settings import Settings


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
