"""``relay check-config``: what ``relay serve`` would run with, without running it."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from relay.app import WORKFLOW_PATH
from relay.ingress.routing import Routes, all_topics
from relay.ingress.signatures import KeySet, spki_sha256
from relay.kafka.options import ssl_context
from relay.settings import Settings
from relay.spool.store import check_dir
from relay.workflows import WorkflowSource, topic_of


def summary(settings: Settings, keys: KeySet, routes: Routes) -> list[str]:
    """A short, secret-free description of a loaded and validated configuration."""
    scheme = "https" if settings.tls_cert_file else "http"
    if settings.public_keys:
        source = "RELAY_PUBLIC_KEYS=" + ",".join(str(path) for path in settings.public_keys)
    else:
        source = "the published HighLevel keys (relay/ingress/keys)"
    legacy = "accepted" if settings.accept_legacy_rsa else "refused (RELAY_ACCEPT_LEGACY_RSA)"
    security = settings.kafka_security_protocol
    oauth = security.startswith("SASL") and settings.kafka_sasl_mechanism == "OAUTHBEARER"
    if oauth and settings.kafka_msk_iam_region is not None:
        security += (
            f" (OAUTHBEARER: Amazon MSK IAM, region {settings.kafka_msk_iam_region}, "
            "the process's AWS credentials)"
        )
    elif oauth:
        scope = f", scope {settings.kafka_oauth_scope}" if settings.kafka_oauth_scope else ""
        security += (
            f" (OAUTHBEARER: client {settings.kafka_oauth_client_id} at "
            f"{settings.kafka_oauth_token_endpoint}{scope})"
        )
    elif security.startswith("SASL"):
        security += f" ({settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username})"
    if settings.spool_dir is None:
        spool = "off: 2xx only after Kafka's ack"
    else:
        check_dir(settings.spool_dir)  # ConfigError, exit 2, when it cannot be written
        spool = (
            f"{settings.spool_dir} (writable), cap {settings.spool_max_bytes} bytes, "
            f"after {settings.spool_after_ms} ms without an ack"
        )
    lines = [
        "configuration OK",
        f"listen:          {scheme}://{settings.http_host}:{settings.http_port}, "
        f"metrics on port {settings.metrics_port}, {settings.workers} process(es)",
        f"kafka:           {','.join(settings.kafka_bootstrap_servers)}",
        f"spool:           {spool}",
        f"security:        {security}",
        *_kafka_tls(settings),
        f"topic prefix:    {settings.topic_prefix}",
        f"routes file:     {settings.routes_file} "
        f"({len(routes.families)} families, {len(routes.overrides)} exact types, "
        f"{len(all_topics(routes))} topics)",
        f"event catalogue: {len(routes.catalogue.events)} events in "
        f"{len(routes.catalogue.families)} families (docs {routes.catalogue.docs_repo} "
        f"at {routes.catalogue.docs_commit[:12]})",
        f"public keys:     {source}",
        f"ed25519 keys:    {len(keys.ed25519)}",
        *(f"  {spki_sha256(key)}" for key in keys.ed25519),
        f"rsa keys:        {len(keys.rsa)}, legacy X-WH-Signature {legacy}",
        *(f"  {spki_sha256(key)}" for key in keys.rsa),
        f"workflows:       {len(settings.workflows) or 'none'}",
        *(_workflow(source, settings.topic_prefix) for source in settings.workflows),
    ]
    return lines


def _kafka_tls(settings: Settings) -> list[str]:
    """The Kafka TLS lines: which CA, which client certificate, hostname verification."""
    if ssl_context(settings) is None:  # ConfigError (exit 2) when the files do not load
        return []
    if settings.kafka_ssl_cafile is None:
        ca = "the system CAs"
    else:
        cafile = settings.kafka_ssl_cafile
        ca = f"RELAY_KAFKA_SSL_CAFILE={cafile} ({_subjects(cafile)})"
    lines = [f"kafka tls:       brokers verified by {ca}"]
    if settings.kafka_ssl_certfile is not None:
        lines.append(
            f"  client certificate RELAY_KAFKA_SSL_CERTFILE={settings.kafka_ssl_certfile} "
            f"({_subjects(settings.kafka_ssl_certfile)}), key RELAY_KAFKA_SSL_KEYFILE="
            f"{settings.kafka_ssl_keyfile}"
        )
    else:
        lines.append("  no client certificate (no mutual TLS)")
    if settings.kafka_ssl_check_hostname:
        lines.append("  hostname verification on")
    else:
        lines.append("  hostname verification OFF (RELAY_KAFKA_SSL_CHECK_HOSTNAME): any "
                     "certificate the CA signed is taken for any broker")  # fmt: skip
    return lines


def _subjects(path: Path) -> str:
    """The subjects and expiry of the certificates in a PEM file, for the summary."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return "not readable as PEM certificates"
    return "; ".join(
        f"{cert.subject.rfc4514_string()}, until {cert.not_valid_after_utc:%Y-%m-%d}"
        for cert in certs
    )


def _workflow(source: WorkflowSource, prefix: str) -> str:
    """One source: its name, path, token count and where the tokens are; never a token."""
    key = ".".join(source.key) or "none"
    ids = source.idempotency.value
    if source.idempotency_field:
        ids += " " + ".".join(source.idempotency_field)
    return (
        f"  {source.name}: POST {WORKFLOW_PATH.format(name=source.name)}, "
        f"{len(source.tokens)} token(s) in {source.token_location()}, "
        f"topic {topic_of(source, prefix)}, key {key}, idempotency {ids}"
    )
