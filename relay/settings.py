"""Settings: read once at start-up from ``config/relay.toml`` and ``RELAY_*`` variables.

Precedence: a ``RELAY_<NAME>`` variable beats the key ``<name>`` of the config file, which
beats the default. Nothing else in the relay reads the environment. A bad value fails
loudly, naming the setting and the value, so the relay exits 2 before it binds a port.
Secrets (the SASL password, the OAuth client secret) come from the environment or a file,
never the config file.

Each setting is declared once, as a field of :class:`Settings` made by :func:`_setting`:
its default, how its text is cast, the range it must be in, and its row of the README's
settings table (:func:`readme_rows`, checked by tests/test_settings.py). Only the rules
that tie two settings together are written apart, in :meth:`Settings.validate`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from relay.errors import ConfigError
from relay.workflows import TABLE as WORKFLOWS_TABLE
from relay.workflows import WorkflowSource, check_sources, load_tokens, parse_sources

T = TypeVar("T")

DEFAULT_CONFIG_FILE: Final = Path("config/relay.toml")
CONFIG_FILE_VARIABLE: Final = "RELAY_CONFIG_FILE"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_MAX_WORKERS = 64  # one per core; more only multiplies producers and broker connections
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
#: settings that may only come from the environment (or a file named in the config)
SECRET_SETTINGS = frozenset({"kafka_sasl_password", "kafka_oauth_client_secret"})
#: the secret settings that may come from a file instead, each named ``<secret>_file``
_SECRET_FILES = {name: f"{name}_file" for name in sorted(SECRET_SETTINGS)}
# Where a client secret may go over plain HTTP: only to this host itself.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: settings naming a file that must exist when set
_FILE_SETTINGS = (
    "tls_cert_file",
    "tls_key_file",
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "kafka_sasl_password_file",
    "kafka_oauth_client_secret_file",
)


# --- casts: the text of a variable (or a TOML value as text) to the field's type ------------


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


def _path(raw: str) -> Path:
    return Path(_text(raw))


def _upper(raw: str) -> str:
    return _text(raw).upper()


# --- one declaration per setting --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allowed:
    """A setting's range: the check, and the words that tell a user what passes it."""

    check: Callable[[Any], bool]
    #: e.g. "0 to 65535", "above 0", "429 or 503": said in the error for a value outside
    text: str


@dataclass(frozen=True, slots=True)
class Spec:
    """What a field of :class:`Settings` is, beyond its type and default."""

    cast: Callable[[str], object]
    #: the meaning column of the README's table
    doc: str
    #: the range; None: any value the cast accepts
    ok: Allowed | None = None
    #: the default column when the default itself is not what to show (None: "none")
    shown: str | None = None


def _setting(
    default: Any,
    cast: Callable[[str], object],
    doc: str,
    *,
    ok: Allowed | None = None,
    shown: str | None = None,
    secret: bool = False,
) -> Any:
    """A field of :class:`Settings`, with its :class:`Spec` in the field's metadata."""
    return dataclasses.field(
        default=default, repr=not secret, metadata={"spec": Spec(cast, doc, ok, shown)}
    )


def _between(low: int, high: int) -> Allowed:
    return Allowed(lambda value: low <= value <= high, f"{low} to {high}")


def _one_of(*values: object) -> Allowed:
    words = [str(v) for v in values]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" or {words[-1]}"
    return Allowed(values.__contains__, text)


_port = _between(0, 65535)
_positive = Allowed(lambda value: value > 0, "above 0")
_not_negative = Allowed(lambda value: value >= 0, "0 or more")
_positive_or_none = Allowed(
    lambda value: value is None or value > 0, "above 0, or empty for the broker's default"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the relay is configured with; see the README's settings table."""

    # A container service listens on all interfaces.
    http_host: str = _setting("0.0.0.0", _text, "address to listen on")  # noqa: S104
    http_port: int = _setting(8080, _int, "webhook port (also `/healthz`, `/readyz`)", ok=_port)
    metrics_port: int = _setting(9090, _int, "Prometheus `/metrics` port", ok=_port)
    tls_cert_file: Path | None = _setting(
        None,
        _optional_path,
        "PEM certificate (chain): with the key, the webhook port serves HTTPS only",
    )
    tls_key_file: Path | None = _setting(
        None, _optional_path, "PEM private key of that certificate"
    )
    max_body_bytes: int = _setting(
        1024 * 1024, _int, "largest body accepted; larger is 413", ok=_positive
    )
    http_idle_timeout_s: float = _setting(
        75.0,
        _float,
        "closes a connection that sends no complete request head for this long: idle "
        "keep-alive and slowloris; keep it above the idle timeout of the proxy in front "
        "(60 s for nginx and AWS load balancers)",
        ok=_positive,
    )
    http_max_headers: int = _setting(
        32,
        _int,
        "headers per request; more is 400. Each header (name and value) is capped at 8190 "
        "bytes, so one slow request head holds at most ~0.5 MiB",
        ok=_positive,
    )
    accept_legacy_rsa: bool = _setting(
        False, _bool, "verify `X-WH-Signature` when `X-GHL-Signature` is absent"
    )
    public_keys: tuple[Path, ...] = _setting(
        (),
        _paths,
        "comma-separated PEM files (Ed25519 and/or RSA)",
        shown="the published HighLevel keys",
    )
    routes_file: Path = _setting(
        Path("config/routes.toml"),
        _path,
        "the event-type → topic table (relative to the working directory)",
    )
    topic_prefix: str = _setting("hoopai", _text, "first part of every topic name")
    create_topics: bool = _setting(False, _bool, "create the missing topics at start-up")
    topic_partitions: int | None = _setting(
        None,
        _optional_int,
        "partitions of the topics it creates",
        ok=_positive_or_none,
        shown="the broker's `num.partitions`",
    )
    topic_replication_factor: int | None = _setting(
        None,
        _optional_int,
        "replication factor of the topics it creates",
        ok=_positive_or_none,
        shown="the broker's `default.replication.factor`",
    )
    kafka_bootstrap_servers: tuple[str, ...] = _setting(
        ("127.0.0.1:9092",), _list, "comma-separated `host:port` list",
        ok=Allowed(bool, "at least one host:port"),
    )  # fmt: skip
    kafka_security_protocol: str = _setting(
        "PLAINTEXT",
        _upper,
        "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`",
        ok=_one_of(*_SECURITY_PROTOCOLS),
    )
    kafka_ssl_cafile: Path | None = _setting(
        None, _optional_path, "CA bundle to verify the brokers", shown="system CAs"
    )
    kafka_ssl_certfile: Path | None = _setting(
        None, _optional_path, "client certificate (mutual TLS), with the key below"
    )
    kafka_ssl_keyfile: Path | None = _setting(None, _optional_path, "client private key")
    kafka_sasl_mechanism: str = _setting(
        "PLAIN",
        _upper,
        "`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`",
        ok=_one_of(*_SASL_MECHANISMS),
    )
    kafka_sasl_username: str | None = _setting(None, _optional_text, "SASL user (PLAIN, SCRAM)")
    kafka_sasl_password: str | None = _setting(
        None,
        _optional_text,
        "SASL password: environment only, never in the config file",
        secret=True,
    )
    kafka_sasl_password_file: Path | None = _setting(
        None, _optional_path, "file holding the SASL password (a mounted Secret), read once"
    )
    kafka_ssl_check_hostname: bool = _setting(
        True,
        _bool,
        "verify that a broker's certificate is for the host name connected to (SSL, SASL_SSL)",
    )
    kafka_oauth_token_endpoint: str | None = _setting(
        None,
        _optional_text,
        "OAUTHBEARER: the OAuth 2.0 token endpoint (client-credentials grant), `https://` "
        "(`http://` only to 127.0.0.1 or localhost)",
    )
    kafka_oauth_client_id: str | None = _setting(None, _optional_text, "OAUTHBEARER: the client id")
    kafka_oauth_client_secret: str | None = _setting(
        None,
        _optional_text,
        "OAUTHBEARER: the client secret: environment only, never in the config file",
        secret=True,
    )
    kafka_oauth_client_secret_file: Path | None = _setting(
        None,
        _optional_path,
        "file holding the OAuth client secret (a mounted Secret), read once",
    )
    kafka_oauth_scope: str | None = _setting(
        None, _optional_text, "OAUTHBEARER: the scope asked for"
    )
    kafka_msk_iam_region: str | None = _setting(
        None,
        _optional_text,
        "OAUTHBEARER with Amazon MSK IAM: the cluster's AWS region; tokens are signed with "
        "the process's AWS credentials instead of coming from a token endpoint "
        "(needs the `msk` extra)",
    )
    kafka_linger_ms: int = _setting(0, _int, "producer linger", ok=_not_negative)
    ack_timeout_ms: int = _setting(
        4000,
        _int,
        "a request's deadline for the Kafka ack",
        ok=_between(1, 60_000),
    )
    max_in_flight: int = _setting(
        1000,
        _int,
        "requests in progress at once (read, verified, waiting for an ack), per process; "
        "past it, the retryable status at once, before the body is read",
        ok=_positive,
    )
    unavailable_status: int = _setting(
        429, _int, "`429` or `503`, sent with `Retry-After`", ok=_one_of(429, 503)
    )
    retry_after_s: int = _setting(5, _int, "the `Retry-After` value", ok=_not_negative)
    dedup_window: int = _setting(
        100_000, _int, "acknowledged ids remembered per process (0: off)", ok=_not_negative
    )
    ce_source: str = _setting("hoopai-relay", _text, "the `ce_source` header")
    ready_check_interval_s: float = _setting(
        2.0, _float, "how often readiness asks the cluster for metadata", ok=_positive
    )
    drain_delay_s: float = _setting(
        5.0,
        _float,
        "after SIGTERM, how long requests are still served with readiness at 503",
        ok=_not_negative,
    )
    shutdown_grace_s: float = _setting(
        25.0,
        _float,
        "the whole shutdown, drain included; keep it under the pod's "
        "`terminationGracePeriodSeconds`",
    )
    log_level: str = _setting(
        "INFO",
        _upper,
        "`DEBUG` (adds one line per request), `INFO`, `WARNING` or `ERROR`",
        ok=_one_of(*_LOG_LEVELS),
    )
    workers: int = _setting(
        1,
        _int,
        "processes sharing the webhook port (1 to 64); `relay serve --workers` overrides it",
        ok=_between(1, _MAX_WORKERS),
    )
    spool_dir: Path | None = _setting(
        None,
        _optional_path,
        'directory of the spool (see "What a 2xx means"); created if missing; '
        "`relay check-config` checks it is writable",
        shown="none (off)",
    )
    spool_max_bytes: int = _setting(
        1024 * 1024 * 1024,
        _int,
        "the spool's cap on disk; past it, the retryable status",
        ok=_positive,
    )
    spool_segment_bytes: int = _setting(
        16 * 1024 * 1024,
        _int,
        "size at which a new segment file is started",
        ok=_positive,
    )
    spool_after_ms: int = _setting(
        2000,
        _int,
        "with the spool on, how long a record waits for Kafka's ack before it is spooled "
        "(at most `RELAY_ACK_TIMEOUT_MS`)",
    )
    #: the settings file's ``[workflows.<name>]`` tables (relay/workflows.py): tables, with
    #: no ``RELAY_*`` variable nor row in the settings table (README, "Workflow webhooks")
    workflows: tuple[WorkflowSource, ...] = dataclasses.field(default=())

    quarantine: bool = _setting(
        False,
        _bool,
        "also write each delivery refused for its signature (still answered 401) to "
        "`<prefix>.quarantine`, for `relay redrive` after a key change (see Quarantine)",
    )
    quarantine_max_records: int = _setting(
        1000,
        _int,
        "quarantined records per window, per process; past it they are dropped (counted)",
        ok=_positive,
    )
    quarantine_max_bytes: int = _setting(
        16 * 1024 * 1024,
        _int,
        "quarantined body bytes per window, per process; past it they are dropped (counted)",
        ok=_positive,
    )
    quarantine_window_s: float = _setting(
        60.0, _float, "the window of the two quarantine caps", ok=_positive
    )

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
        sources = values.get(WORKFLOWS_TABLE)
        token_variables = (
            {variable for source in sources for variable in source.token_env}
            if isinstance(sources, tuple)
            else set()
        )
        check_variables(environ, token_variables)
        for name, spec in specs():
            variable = f"RELAY_{name.upper()}"
            if variable in environ and not is_service_link(variable, environ[variable]):
                values[name] = _cast(variable, environ[variable].strip(), spec.cast)
        for secret, file_setting in _SECRET_FILES.items():
            secret_file = values.get(file_setting)
            if isinstance(secret_file, Path) and values.get(secret) is None:
                values[secret] = _read_secret(file_setting, secret_file)
        if isinstance(sources, tuple):
            values[WORKFLOWS_TABLE] = load_tokens(sources, environ)
        settings = cls(**values)  # type: ignore[arg-type]  # each value was cast for its field
        settings.validate()
        return settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Defaults and ``RELAY_*`` only, ignoring any config file (for tests and tools)."""
        return cls.load(environ, use_file=False)

    def validate(self) -> None:
        """Check ranges and combinations; raise ConfigError naming the setting and its range."""
        for name, spec in specs():
            if spec.ok is not None and not spec.ok.check(getattr(self, name)):
                raise ConfigError(f"{_describe(self, name)}: out of range; allowed: {spec.ok.text}")
        # The rules that tie one setting to another.
        for name, ok, allowed in (
            (
                "shutdown_grace_s",
                self.shutdown_grace_s > self.drain_delay_s,
                f"above RELAY_DRAIN_DELAY_S ({self.drain_delay_s})",
            ),
            (
                "spool_segment_bytes",
                self.spool_segment_bytes <= self.spool_max_bytes,
                f"at most RELAY_SPOOL_MAX_BYTES ({self.spool_max_bytes})",
            ),
            (
                "spool_after_ms",
                self.spool_dir is None or 0 < self.spool_after_ms <= self.ack_timeout_ms,
                f"1 to RELAY_ACK_TIMEOUT_MS ({self.ack_timeout_ms})",
            ),
        ):
            if not ok:
                raise ConfigError(f"{_describe(self, name)}: out of range; allowed: {allowed}")
        if self.workers > 1 and self.http_port == 0:
            # Each worker would bind a port of its own choosing instead of sharing one.
            raise ConfigError("RELAY_WORKERS above 1 needs a fixed RELAY_HTTP_PORT, not 0")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("RELAY_TLS_CERT_FILE and RELAY_TLS_KEY_FILE go together")
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and self.kafka_sasl_mechanism == "OAUTHBEARER":
            self._validate_oauth()
        elif sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ConfigError(
                f"RELAY_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "RELAY_KAFKA_SASL_USERNAME and RELAY_KAFKA_SASL_PASSWORD(_FILE)"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ConfigError("RELAY_KAFKA_SSL_CERTFILE and RELAY_KAFKA_SSL_KEYFILE go together")
        for name in _FILE_SETTINGS:
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{_describe(self, name)}: no such file")
        check_sources(self.workflows, self.topic_prefix)

    def _validate_oauth(self) -> None:
        """OAUTHBEARER: an endpoint reached safely, a client id and its secret (or MSK IAM)."""
        if self.kafka_msk_iam_region is not None:
            return  # AWS's credentials, found by botocore, sign the tokens
        endpoint = self.kafka_oauth_token_endpoint
        if not (endpoint and self.kafka_oauth_client_id and self.kafka_oauth_client_secret):
            raise ConfigError(
                "RELAY_KAFKA_SASL_MECHANISM=OAUTHBEARER needs RELAY_KAFKA_OAUTH_TOKEN_ENDPOINT, "
                "RELAY_KAFKA_OAUTH_CLIENT_ID and RELAY_KAFKA_OAUTH_CLIENT_SECRET(_FILE), "
                "or RELAY_KAFKA_MSK_IAM_REGION"
            )
        url = urlsplit(endpoint)
        # The client secret goes to this URL: in the clear only to this very host.
        if not url.hostname or not (
            url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK_HOSTS)
        ):
            raise ConfigError(
                f"RELAY_KAFKA_OAUTH_TOKEN_ENDPOINT={endpoint}: must be an https:// URL "
                "(http:// only to 127.0.0.1 or localhost)"
            )


#: The variables Kubernetes puts in every pod for every Service of the namespace (unless the
#: pod says ``enableServiceLinks: false``, as the chart's does): a Service named ``relay``
#: gives ``RELAY_SERVICE_HOST=10.0.0.7``, ``RELAY_PORT=tcp://10.0.0.7:8080``,
#: ``RELAY_PORT_8080_TCP_ADDR=10.0.0.7`` and so on, and one named ``relay-metrics`` gives
#: ``RELAY_METRICS_PORT=tcp://...``, the name of a setting. Recognised by name and value.
_SERVICE_LINK_NAME: Final = re.compile(
    r"(?:_SERVICE_HOST|_SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|_PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)$"
)
_SERVICE_LINK_URL: Final = re.compile(r"(tcp|udp|sctp)://[^\s/]+:[0-9]+")


def is_service_link(variable: str, value: str) -> bool:
    """Whether ``variable=value`` has the shape of a Kubernetes service-link variable."""
    match = _SERVICE_LINK_NAME.search(variable)
    if match is None:
        return False
    suffix = match.group(0)
    if suffix.endswith(("_TCP_PROTO", "_UDP_PROTO", "_SCTP_PROTO")):
        return value in ("tcp", "udp", "sctp")
    if suffix.endswith("_PORT") and not suffix.startswith("_SERVICE"):
        if re.fullmatch(r"_PORT_[0-9]+_(TCP|UDP|SCTP)_PORT", suffix):
            return value.isdigit()
        return _SERVICE_LINK_URL.fullmatch(value) is not None  # RELAY_PORT, RELAY_X_PORT
    if suffix.startswith("_SERVICE_PORT"):
        return value.isdigit()
    if suffix.endswith(("_TCP", "_UDP", "_SCTP")):
        return _SERVICE_LINK_URL.fullmatch(value) is not None
    return bool(value) and " " not in value  # _SERVICE_HOST, _ADDR: an address


def known_variables() -> list[str]:
    """Every ``RELAY_*`` variable the relay reads."""
    return [CONFIG_FILE_VARIABLE, *(f"RELAY_{name.upper()}" for name, _ in specs())]


def check_variables(environ: Mapping[str, str], token_variables: Collection[str] = ()) -> None:
    """Refuse a ``RELAY_*`` variable that is no setting, naming the nearest one.

    ``RELAY_PUBLIC_KEY`` (singular) or ``RELAY_HTTP_PROT`` would otherwise be ignored, and
    the relay would start, and answer 401 to every delivery. Kubernetes' service-link
    variables (:func:`is_service_link`) are not settings and pass, and so do the variables
    a workflow source's ``token_env`` names (``token_variables``).
    """
    known = known_variables()
    for variable in sorted(environ):
        if not variable.startswith("RELAY_") or variable in known or variable in token_variables:
            continue
        if is_service_link(variable, environ[variable].strip()):
            continue
        nearest = difflib.get_close_matches(variable, known, n=1, cutoff=0.6)
        hint = (
            f"did you mean {nearest[0]}?" if nearest else "the README's Settings table lists them"
        )
        raise ConfigError(f"{variable}: no such setting; {hint}")


def specs() -> Iterator[tuple[str, Spec]]:
    """Each setting's name and :class:`Spec`, in declaration order (not the tables)."""
    for each in dataclasses.fields(Settings):
        if "spec" in each.metadata:
            yield each.name, each.metadata["spec"]


def readme_rows() -> list[str]:
    """The rows of the README's settings table, one per setting, as the README has them."""
    rows = []
    for each in dataclasses.fields(Settings):
        if "spec" not in each.metadata:
            continue  # a table of the file, documented with its own section
        spec: Spec = each.metadata["spec"]
        if spec.shown is not None:
            shown = spec.shown
        elif each.default is None:
            shown = "none"
        else:
            shown = f"`{_as_text(each.default)}`"
        rows.append(f"| `RELAY_{each.name.upper()}` | {shown} | {spec.doc} |")
    return rows


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
    known = dict(specs())
    values: dict[str, object] = {}
    for name, raw in data.items():
        if name == WORKFLOWS_TABLE:  # tables, not a setting of RELAY_* form
            values[name] = parse_sources(raw, str(path))
            continue
        if name in SECRET_SETTINGS:
            raise ConfigError(
                f"{path}: {name} is a secret: set RELAY_{name.upper()} or {name}_file instead"
            )
        if name not in known:
            nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {nearest[0]}?" if nearest else ""
            raise ConfigError(f"{path}: unknown setting {name!r}{hint}")
        values[name] = _cast(f"{path}: {name}", _as_text(raw), known[name].cast)
    return values


def _read_secret(setting: str, path: Path) -> str:
    """A secret kept in a file (a mounted Kubernetes Secret), read once at start-up."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"RELAY_{setting.upper()}={path}: {exc}") from None


def _as_text(raw: object) -> str:
    """A TOML value (or a default) as the text an environment variable would hold."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, list | tuple):
        return ",".join(str(item) for item in raw)
    return str(raw)


def _cast(where: str, raw: str, cast: Callable[[str], T]) -> T:
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}={raw!r}: {exc}") from None
