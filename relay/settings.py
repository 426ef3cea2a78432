"""Settings: read once at start-up from ``config/relay.toml`` and ``RELAY_*`` variables.

Precedence: a ``RELAY_<NAME>`` variable beats the key ``<name>`` of the config file, which
beats the default. Nothing else in the relay reads the environment. A bad value fails
loudly, naming the setting and the value, so the relay exits 2 before it binds a port.
Secrets (the SASL password) come from the environment or a file, never the config file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from relay.errors import ConfigError

T = TypeVar("T")

DEFAULT_CONFIG_FILE: Final = Path("config/relay.toml")
CONFIG_FILE_VARIABLE: Final = "RELAY_CONFIG_FILE"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_MAX_WORKERS = 64  # one per core; more only multiplies producers and broker connections
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: settings that may only come from the environment (or a file named in the config)
SECRET_SETTINGS = frozenset({"kafka_sasl_password"})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the relay is configured with; see the README's settings table."""

    http_host: str = "0.0.0.0"  # noqa: S104 -- a container service listens on all interfaces
    http_port: int = 8080
    metrics_port: int = 9090
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    max_body_bytes: int = 1024 * 1024
    #: closes a connection that sends no complete request head for this long (idle, slowloris)
    http_idle_timeout_s: float = 75.0
    http_max_headers: int = 32
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
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_sasl_password_file: Path | None = None
    kafka_linger_ms: int = 0
    ack_timeout_ms: int = 4000
    max_in_flight: int = 1000
    unavailable_status: int = 429
    retry_after_s: int = 5
    dedup_window: int = 100_000
    ce_source: str = "hoopai-relay"
    ready_check_interval_s: float = 2.0
    drain_delay_s: float = 5.0
    shutdown_grace_s: float = 25.0
    log_level: str = "INFO"
    #: relay processes sharing the port (``relay serve --workers``); see relay/workers.py
    workers: int = 1
    #: None: no spool, a 2xx only after Kafka's ack (see the README, "What a 2xx means").
    spool_dir: Path | None = None
    spool_max_bytes: int = 1024 * 1024 * 1024
    spool_segment_bytes: int = 16 * 1024 * 1024
    spool_after_ms: int = 2000

    @classmethod
    def load(cls, environ: Mapping[str, str], *, use_file: bool = True) -> Settings:
        """Defaults, then the config file (``RELAY_CONFIG_FILE``), then ``RELAY_*``; validated.

        Without ``RELAY_CONFIG_FILE``, ``config/relay.toml`` is read if it exists.
        """
        values: dict[str, object] = {}
        if use_file:
            explicit = environ.get(CONFIG_FILE_VARIABLE)
            path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
            values = _read_file(path, required=bool(explicit))
        for name in _CASTS:
            variable = f"RELAY_{name.upper()}"
            if variable in environ:
                values[name] = _cast(variable, environ[variable].strip(), _CASTS[name])
        password_file = values.get("kafka_sasl_password_file")
        if isinstance(password_file, Path) and values.get("kafka_sasl_password") is None:
            values["kafka_sasl_password"] = _read_secret(password_file)
        settings = cls(**values)  # type: ignore[arg-type]  # each value was cast for its field
        settings.validate()
        return settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Defaults and ``RELAY_*`` only, ignoring any config file (for tests and tools)."""
        return cls.load(environ, use_file=False)

    def validate(self) -> None:
        """Check ranges and combinations; raise ConfigError naming the setting."""
        for name, ok in (
            ("http_port", 0 <= self.http_port <= 65535),
            ("metrics_port", 0 <= self.metrics_port <= 65535),
            ("max_body_bytes", self.max_body_bytes > 0),
            ("http_idle_timeout_s", self.http_idle_timeout_s > 0),
            ("http_max_headers", self.http_max_headers > 0),
            ("ack_timeout_ms", 0 < self.ack_timeout_ms <= 60_000),
            ("max_in_flight", self.max_in_flight > 0),
            ("kafka_linger_ms", self.kafka_linger_ms >= 0),
            ("retry_after_s", self.retry_after_s >= 0),
            ("dedup_window", self.dedup_window >= 0),
            ("unavailable_status", self.unavailable_status in (429, 503)),
            ("kafka_bootstrap_servers", bool(self.kafka_bootstrap_servers)),
            ("topic_partitions", self.topic_partitions is None or self.topic_partitions > 0),
            (
                "topic_replication_factor",
                self.topic_replication_factor is None or self.topic_replication_factor > 0,
            ),
            ("kafka_security_protocol", self.kafka_security_protocol in _SECURITY_PROTOCOLS),
            ("kafka_sasl_mechanism", self.kafka_sasl_mechanism in _SASL_MECHANISMS),
            ("log_level", self.log_level in _LOG_LEVELS),
            ("workers", 1 <= self.workers <= _MAX_WORKERS),
            ("ready_check_interval_s", self.ready_check_interval_s > 0),
            ("drain_delay_s", self.drain_delay_s >= 0),
            ("shutdown_grace_s", self.shutdown_grace_s > self.drain_delay_s),
            ("spool_max_bytes", self.spool_max_bytes > 0),
            ("spool_segment_bytes", 0 < self.spool_segment_bytes <= self.spool_max_bytes),
            (
                "spool_after_ms",
                self.spool_dir is None or 0 < self.spool_after_ms <= self.ack_timeout_ms,
            ),
        ):
            if not ok:
                raise ConfigError(f"{_describe(self, name)}: out of range or not allowed")
        if self.workers > 1 and self.http_port == 0:
            # Each worker would bind a port of its own choosing instead of sharing one.
            raise ConfigError("RELAY_WORKERS above 1 needs a fixed RELAY_HTTP_PORT, not 0")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("RELAY_TLS_CERT_FILE and RELAY_TLS_KEY_FILE go together")
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ConfigError(
                f"RELAY_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "RELAY_KAFKA_SASL_USERNAME and RELAY_KAFKA_SASL_PASSWORD(_FILE)"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ConfigError("RELAY_KAFKA_SSL_CERTFILE and RELAY_KAFKA_SSL_KEYFILE go together")
        for name in ("tls_cert_file", "tls_key_file", "kafka_ssl_cafile", "kafka_ssl_certfile",
                     "kafka_ssl_keyfile", "kafka_sasl_password_file"):  # fmt: skip
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{_describe(self, name)}: no such file")


def _describe(settings: Settings, name: str) -> str:
    """``RELAY_NAME=value``, the way a user would have written the setting."""
    value = getattr(settings, name)
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    return f"RELAY_{name.upper()}={value}"


def _read_file(path: Path, *, required: bool) -> dict[str, object]:
    """The config file's keys, cast like the environment; {} if absent and not required."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{CONFIG_FILE_VARIABLE}={path}: no such file") from None
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    values: dict[str, object] = {}
    for name, raw in data.items():
        if name in SECRET_SETTINGS:
            raise ConfigError(
                f"{path}: {name} is a secret: set RELAY_{name.upper()} or {name}_file instead"
            )
        if name not in _CASTS:
            raise ConfigError(f"{path}: unknown setting {name!r}")
        values[name] = _cast(f"{path}: {name}", _as_text(raw), _CASTS[name])
    return values


def _read_secret(path: Path) -> str:
    """A secret kept in a file (a mounted Kubernetes Secret), read once at start-up."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"RELAY_KAFKA_SASL_PASSWORD_FILE={path}: {exc}") from None


def _as_text(raw: object) -> str:
    """A TOML value as the text an environment variable would hold."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, list):
        return ",".join(str(item) for item in raw)
    return str(raw)


def _cast(where: str, raw: str, cast: Callable[[str], T]) -> T:
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}={raw!r}: {exc}") from None


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


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


def _optional_int(raw: str) -> int | None:
    return None if raw == "" else _int(raw)


def _optional_path(raw: str) -> Path | None:
    return None if raw == "" else Path(raw)


def _optional_text(raw: str) -> str | None:
    return raw or None


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(item) for item in _list(raw))


def _text(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _upper(raw: str) -> str:
    return _text(raw).upper()


_CASTS: dict[str, Callable[[str], object]] = {
    "http_host": _text,
    "http_port": _int,
    "workers": _int,
    "metrics_port": _int,
    "tls_cert_file": _optional_path,
    "tls_key_file": _optional_path,
    "max_body_bytes": _int,
    "http_idle_timeout_s": _float,
    "http_max_headers": _int,
    "accept_legacy_rsa": _bool,
    "public_keys": _paths,
    "routes_file": lambda raw: Path(_text(raw)),
    "topic_prefix": _text,
    "create_topics": _bool,
    "topic_partitions": _optional_int,
    "topic_replication_factor": _optional_int,
    "kafka_bootstrap_servers": _list,
    "kafka_security_protocol": _upper,
    "kafka_ssl_cafile": _optional_path,
    "kafka_ssl_certfile": _optional_path,
    "kafka_ssl_keyfile": _optional_path,
    "kafka_sasl_mechanism": _upper,
    "kafka_sasl_username": _optional_text,
    "kafka_sasl_password": _optional_text,
    "kafka_sasl_password_file": _optional_path,
    "kafka_linger_ms": _int,
    "ack_timeout_ms": _int,
    "max_in_flight": _int,
    "unavailable_status": _int,
    "retry_after_s": _int,
    "dedup_window": _int,
    "ce_source": _text,
    "ready_check_interval_s": _float,
    "drain_delay_s": _float,
    "shutdown_grace_s": _float,
    "log_level": _upper,
    "spool_dir": _optional_path,
    "spool_max_bytes": _int,
    "spool_segment_bytes": _int,
    "spool_after_ms": _int,
}
