"""Running the applications on real sockets: ``relay serve``, and the tests.

Shutdown, on SIGTERM or SIGINT, within ``shutdown_grace_s`` (default 25 s, under the
30 s Kubernetes waits before SIGKILL):

1. readiness answers 503, so the load balancer stops sending new requests;
2. requests are still served for ``drain_delay_s`` while it notices;
3. the listener closes and in-flight requests finish (each within its ack deadline);
4. the producer flushes what it holds, and the process exits 0.

A second SIGTERM or SIGINT (Ctrl-C pressed again) stops the process at once, exit 130:
nothing it answered 2xx for is lost (Kafka or the spool's fsync had it before the answer);
requests still waiting get no answer, and their senders retry.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Coroutine

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay import appkeys
from relay.app import create_app, create_metrics_app
from relay.delivery import Delivery
from relay.errors import ConfigError
from relay.ingress import limits
from relay.ingress.routing import all_topics
from relay.ingress.signatures import Scheme, sourced_keys, spki_sha256
from relay.settings import Settings

log = logging.getLogger(__name__)

#: exit status after a second signal, as a shell reports an interrupted command
EXIT_INTERRUPTED = 130


def run_event_loop(main: Coroutine[object, object, None]) -> None:
    """Run ``main`` to its end on uvloop where it is installed, else on asyncio's own loop.

    uvloop's transports and loop are in C: on the dev box they cut the relay's CPU per
    request by about a fifth (docs/benchmarks.md). The code is the same on either loop,
    and the tests run it on asyncio's.
    """
    try:
        import uvloop  # not built for every platform
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context for the webhook port, or None for plain HTTP."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"RELAY_TLS_CERT_FILE={settings.tls_cert_file}, "
            f"RELAY_TLS_KEY_FILE={settings.tls_key_file}: {exc}"
        ) from None
    return context


async def start(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 60.0,
    reuse_port: bool = False,
) -> web.AppRunner:
    """Serve ``app`` on host:port (0 picks a free port; see ``runner.addresses``)."""
    # auto_decompress=False: the body must be the bytes on the wire, which the signature
    # covers; encoded bodies are refused with 415 before they are read.
    # limits.runner_options: idle timeout, header limits, answers counted by status.
    runner = web.AppRunner(
        app, auto_decompress=False, shutdown_timeout=shutdown_timeout, **limits.runner_options(app)
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        host,
        port,
        ssl_context=ssl_context,
        shutdown_timeout=shutdown_timeout,
        reuse_port=reuse_port or None,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()  # the app's contexts started: stop them, leave nothing running
        raise
    return runner


async def _start_on(
    setting: str,
    host: str,
    port: int,
    start_it: Callable[[], Coroutine[object, object, web.AppRunner]],
) -> web.AppRunner:
    """``start_it()``; a port another process holds is a ConfigError naming ``setting``."""
    try:
        return await start_it()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigError(
            f"{setting}={port}: {host}:{port} is already in use by another process "
            f"(another relay?): stop it or choose another port with {setting}"
        ) from None


def startup_fields(settings: Settings, app: web.Application) -> dict[str, object]:
    """What the relay runs with, for its one start-up line: no secret, only what to check.

    The keys it trusts (where each came from, its SPKI SHA-256), the schemes it verifies,
    where Kafka is and how it is reached, and the topics it writes.
    """
    keys = []
    for source, key in sourced_keys(settings.public_keys):
        scheme = Scheme.ED25519 if isinstance(key, Ed25519PublicKey) else Scheme.RSA_SHA256
        keys.append({"source": source, "scheme": scheme.value, "spki_sha256": spki_sha256(key)})
    schemes = [Scheme.ED25519.value] if app[appkeys.KEYS].ed25519 else []
    if settings.accept_legacy_rsa and app[appkeys.KEYS].rsa:
        schemes.append(Scheme.RSA_SHA256.value)
    kafka: dict[str, object] = {
        "bootstrap": ",".join(settings.kafka_bootstrap_servers),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        kafka["sasl_mechanism"] = settings.kafka_sasl_mechanism
    return {
        "keys": keys,
        "schemes": schemes,
        "kafka": kafka,
        "topics": sorted(all_topics(app[appkeys.ROUTES])),
        "spool": str(settings.spool_dir) if settings.spool_dir is not None else "off",
    }


def _on_signal(stop: asyncio.Event) -> None:
    """The first SIGTERM/SIGINT starts the shutdown; a second one ends the process at once."""
    if not stop.is_set():
        stop.set()
        return
    log.warning("shutdown: second signal, stopping at once", extra={"event": "shutdown"})
    logging.shutdown()  # flush the handlers: os._exit skips it
    os._exit(EXIT_INTERRUPTED)


async def serve(
    settings: Settings,
    *,
    worker: bool = False,
    otel: bool = False,
    delivery: Delivery | None = None,
) -> None:
    """Run the relay until SIGTERM or SIGINT, then shut down as the module says.

    A ``worker`` (of ``relay serve --workers N``, see :mod:`relay.workers`) shares the
    webhook port with its siblings through SO_REUSEPORT and leaves ``/metrics`` to the
    supervisor, which adds up every worker's figures. ``otel``: export spans
    (:func:`relay.tracing.check_otel`).

    ``delivery`` replaces Kafka and the spool (see :func:`relay.app.create_app`); no
    setting selects one: only the benchmark's "relay without Kafka" (bench/nokafka.py).
    """
    app = create_app(settings, delivery, otel=otel)
    context = tls_context(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop)
    # What is left of the grace after the drain delay, minus a margin for the flush.
    in_flight_timeout = max(settings.shutdown_grace_s - settings.drain_delay_s - 2.0, 1.0)
    host = settings.http_host
    runner = await _start_on(
        "RELAY_HTTP_PORT",
        host,
        settings.http_port,
        lambda: start(
            app,
            host,
            settings.http_port,
            ssl_context=context,
            shutdown_timeout=in_flight_timeout,
            reuse_port=worker,
        ),
    )
    metrics_runner = None
    if not worker:
        metrics_app = create_metrics_app(app[appkeys.METRICS].registry)
        try:
            metrics_runner = await _start_on(
                "RELAY_METRICS_PORT",
                host,
                settings.metrics_port,
                lambda: start(metrics_app, host, settings.metrics_port),
            )
        except BaseException:
            await runner.cleanup()
            raise
    log.info("configuration", extra={"event": "startup", **startup_fields(settings, app)})
    log.info(
        "listening",
        extra={
            "event": "startup",
            "http": runner.addresses[0][:2],
            "tls": context is not None,
            "metrics": metrics_runner.addresses[0][:2] if metrics_runner else "supervisor",
        },
    )
    await stop.wait()
    began = time.monotonic()
    app[appkeys.SHUTTING_DOWN].set()
    log.info(
        "shutdown: draining",
        extra={
            "event": "shutdown",
            "drain_delay_s": settings.drain_delay_s,
            "hint": "a second Ctrl-C (SIGINT or SIGTERM) stops at once",
        },
    )
    await asyncio.sleep(settings.drain_delay_s)
    log.info(
        "shutdown: closing the listener, finishing in-flight requests", extra={"event": "shutdown"}
    )
    try:
        async with asyncio.timeout(settings.shutdown_grace_s - settings.drain_delay_s):
            await runner.cleanup()  # then the cleanup contexts: the producer flushes
    except TimeoutError:
        log.error("shutdown: grace exceeded", extra={"event": "shutdown"})
        raise
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
    log.info(
        "shutdown: done",
        extra={"event": "shutdown", "seconds": round(time.monotonic() - began, 3)},
    )
