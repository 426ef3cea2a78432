"""Settings: read once at start-up from ``RELAY_*`` variables, cast, frozen.

Nothing else in the relay reads the environment. A bad value fails loudly, naming the
variable and the value, so ``relay serve`` can exit 2 before it binds a port.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from relay.errors import ConfigError

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the relay is configured with; see the README's settings table."""

    http_host: str = "0.0.0.0"  # noqa: S104 -- a container service listens on all interfaces
    http_port: int = 8080
    metrics_port: int = 9090
    max_body_bytes: int = 1024 * 1024
    accept_legacy_rsa: bool = False
    #: PEM files replacing the published HighLevel keys; empty means those keys.
    public_keys: tuple[Path, ...] = ()
    routes_file: Path = Path("config/routes.toml")
    topic_prefix: str = "hoopai"
    create_topics: bool = False
    #: None: the broker's own default.
    topic_partitions: int | None = None
    topic_replication_factor: int | None = None
    kafka_bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    kafka_linger_ms: int = 0
    ack_timeout_ms: int = 4000
    max_in_flight: int = 1000
    unavailable_status: int = 429
    retry_after_s: int = 5
    dedup_window: int = 100_000
    ce_source: str = "hoopai-relay"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``RELAY_<FIELD>`` variables; unset ones keep their defaults."""
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            name = f"RELAY_{field.name.upper()}"
            raw = environ.get(name)
            if raw is not None:
                values[field.name] = _cast(name, raw.strip(), _CASTS[field.name])
        settings = cls(**values)  # type: ignore[arg-type]  # values are cast per field above
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check ranges and combinations; raise ConfigError naming the setting."""
        _check("RELAY_HTTP_PORT", self.http_port, 0 <= self.http_port <= 65535)
        _check("RELAY_METRICS_PORT", self.metrics_port, 0 <= self.metrics_port <= 65535)
        _check("RELAY_MAX_BODY_BYTES", self.max_body_bytes, self.max_body_bytes > 0)
        _check("RELAY_ACK_TIMEOUT_MS", self.ack_timeout_ms, 0 < self.ack_timeout_ms <= 60_000)
        _check("RELAY_MAX_IN_FLIGHT", self.max_in_flight, self.max_in_flight > 0)
        _check("RELAY_KAFKA_LINGER_MS", self.kafka_linger_ms, self.kafka_linger_ms >= 0)
        _check("RELAY_RETRY_AFTER_S", self.retry_after_s, self.retry_after_s >= 0)
        _check("RELAY_DEDUP_WINDOW", self.dedup_window, self.dedup_window >= 0)
        _check(
            "RELAY_UNAVAILABLE_STATUS",
            self.unavailable_status,
            self.unavailable_status in (429, 503),
        )
        _check(
            "RELAY_KAFKA_BOOTSTRAP_SERVERS",
            ",".join(self.kafka_bootstrap_servers),
            bool(self.kafka_bootstrap_servers),
        )
        for name, value in (
            ("RELAY_TOPIC_PARTITIONS", self.topic_partitions),
            ("RELAY_TOPIC_REPLICATION_FACTOR", self.topic_replication_factor),
        ):
            _check(name, value, value is None or value > 0)


def _check(name: str, value: object, ok: bool) -> None:
    if not ok:
        raise ConfigError(f"{name}={value}: out of range")


def _cast(name: str, raw: str, cast: Callable[[str], T]) -> T:
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None


def _bool(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError("expected true or false")


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def _optional_int(raw: str) -> int | None:
    return None if raw == "" else _int(raw)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(item) for item in _list(raw))


def _text(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


_CASTS: dict[str, Callable[[str], object]] = {
    "http_host": _text,
    "http_port": _int,
    "metrics_port": _int,
    "max_body_bytes": _int,
    "accept_legacy_rsa": _bool,
    "public_keys": _paths,
    "routes_file": lambda raw: Path(_text(raw)),
    "topic_prefix": _text,
    "create_topics": _bool,
    "topic_partitions": _optional_int,
    "topic_replication_factor": _optional_int,
    "kafka_bootstrap_servers": _list,
    "kafka_linger_ms": _int,
    "ack_timeout_ms": _int,
    "max_in_flight": _int,
    "unavailable_status": _int,
    "retry_after_s": _int,
    "dedup_window": _int,
    "ce_source": _text,
}
