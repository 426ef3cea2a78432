"""The application factory: settings in, a ready-to-run aiohttp application out.

Everything the application holds is set here, under the keys of ``relay/appkeys.py``, and
every ``cleanup_ctx`` is here: the modules below take what they need as arguments, so none
imports the keys module back (the shape of aiohttp's own ``web_app.py`` and its demos).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from relay import appkeys
from relay.delivery import Delivery
from relay.errors import ConfigError
from relay.ingress import handler, limits, probes, quarantine
from relay.ingress.admission import Admission
from relay.ingress.dedup import RecentIds
from relay.ingress.routing import Routes, RoutesError, all_topics, load_routes
from relay.ingress.signatures import KeyFileError, KeySet, default_keys, load_public_keys
from relay.kafka import options as kafka_options
from relay.kafka.direct import Direct
from relay.kafka.publisher import Publisher
from relay.metrics import Metrics, in_files
from relay.settings import Settings
from relay.spool.spooler import Spooler, bind_metrics, write_gauges
from relay.spool.store import Spool
from relay.tracing import Propagator
from relay.workflows import topic_of

WEBHOOK_PATH = "/webhooks/hoopai"
#: one path per ``[workflows.<name>]`` source (relay/ingress/handler.py, receive_workflow)
WORKFLOW_PATH = WEBHOOK_PATH + "/workflows/{name}"


def load_keys(settings: Settings) -> KeySet:
    """The configured public keys, or the published HighLevel ones."""
    try:
        return load_public_keys(settings.public_keys) if settings.public_keys else default_keys()
    except KeyFileError as exc:
        raise ConfigError(f"RELAY_PUBLIC_KEYS: {exc}") from None


def load_routing(settings: Settings) -> Routes:
    """The routes file, read once."""
    try:
        return load_routes(settings.routes_file, settings.topic_prefix)
    except (RoutesError, OSError) as exc:
        raise ConfigError(f"RELAY_ROUTES_FILE={settings.routes_file}: {exc}") from None


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait for it to end."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    """The producer, connected in the background; the direct delivery unless a spool follows."""
    settings, routes = app[appkeys.SETTINGS], app[appkeys.ROUTES]
    tokens = app[appkeys.METRICS].oauth_token_fetches
    topics = [topic_of(source, routes.prefix) for source in settings.workflows]
    if settings.quarantine:
        topics.append(quarantine.topic(settings.topic_prefix))
    publisher = Publisher(
        settings,
        [*all_topics(routes), *topics],
        on_token_fetch=lambda outcome: tokens.labels(outcome=outcome).inc(),
    )
    app[appkeys.PUBLISHER] = publisher
    app[appkeys.DELIVERY] = Direct(publisher)
    # Connect in the background: the listener comes up at once and answers the retryable
    # status until Kafka is reached, rather than the pod crash-looping on a Kafka outage.
    connecting = asyncio.create_task(publisher.connect(), name="kafka-connect")
    yield
    await _stop(connecting)
    await publisher.close()


async def _quarantine_ctx(app: web.Application) -> AsyncIterator[None]:
    """The quarantine of refused deliveries, written with the relay's producer."""
    settings, metrics = app[appkeys.SETTINGS], app[appkeys.METRICS]
    window = quarantine.Window(
        settings.quarantine_max_records, settings.quarantine_max_bytes, settings.quarantine_window_s
    )
    kept = quarantine.Quarantine(
        settings.topic_prefix,
        window,
        app[appkeys.PUBLISHER].send,
        lambda outcome: metrics.quarantine_writes.labels(result=outcome).inc(),
    )
    app[appkeys.QUARANTINE] = kept
    yield
    await kept.close()


async def _spool_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the spool (replaying what is there) and run its drainer; on exit stop both."""
    settings = app[appkeys.SETTINGS]
    assert settings.spool_dir is not None  # noqa: S101 -- only added when it is set
    spool = Spool(settings.spool_dir, settings.spool_max_bytes, settings.spool_segment_bytes)
    metrics = app[appkeys.METRICS]
    bind_metrics(spool, metrics)
    await spool.open()
    spooler = Spooler(app[appkeys.PUBLISHER], spool, settings)
    app[appkeys.DELIVERY] = spooler
    tasks = [asyncio.create_task(spooler.drain(), name="spool-drain")]
    if in_files():
        tasks.append(asyncio.create_task(write_gauges(spool, metrics), name="spool-gauges"))
    yield
    for task in tasks:
        await _stop(task)
    await spool.close()


async def _otel_ctx(app: web.Application) -> AsyncIterator[None]:
    """OpenTelemetry's tracer (the ``otel`` extra), started here, flushed and stopped on exit."""
    from relay import otel

    tracer = otel.from_environ(os.environ)
    app[appkeys.TRACER] = tracer
    yield
    # Blocking (the export of the last batch): not on the event loop.
    await asyncio.to_thread(tracer.shutdown)


async def _probe_ctx(app: web.Application) -> AsyncIterator[None]:
    """Ask the cluster for metadata every ``ready_check_interval_s``, for readiness."""
    publisher = app[appkeys.PUBLISHER]
    interval = app[appkeys.SETTINGS].ready_check_interval_s
    # relay_kafka_reachable: an outage shows with no traffic, and with the spool on, when
    # every answer is still a 2xx.
    gauge = app[appkeys.METRICS].kafka_reachable

    async def loop() -> None:
        await publisher.wait_connected()
        while True:
            await publisher.probe(timeout_s=interval)
            gauge.set(1 if publisher.reachable else 0)
            await asyncio.sleep(interval)

    probing = asyncio.create_task(loop(), name="kafka-probe")
    yield
    await _stop(probing)


def create_app(
    settings: Settings, delivery: Delivery | None = None, *, otel: bool = False
) -> web.Application:
    """Build the relay's application; raise ConfigError for bad keys or routes.

    ``delivery`` stands in for Kafka and the spool altogether (no producer is made): the
    in-process tests pass one that records what it was given. ``otel``: spans exported as
    the OTEL_* variables say (:func:`relay.tracing.check_otel` decides), else the trace
    context is only passed on.
    """
    app = web.Application(client_max_size=settings.max_body_bytes)
    metrics = Metrics()
    app[appkeys.SETTINGS] = settings
    app[appkeys.KEYS] = load_keys(settings)
    app[appkeys.ROUTES] = load_routing(settings)
    kafka_options.check_at_start(settings)  # bad Kafka TLS files, say, stop the start here (exit 2)
    app[appkeys.METRICS] = metrics
    app[appkeys.RECENT_IDS] = RecentIds(settings.dedup_window)
    app[appkeys.ADMISSION] = Admission(
        settings.max_in_flight, metrics.in_flight, at_scrape=not in_files()
    )
    app[appkeys.SHUTTING_DOWN] = asyncio.Event()
    app[appkeys.WORKFLOWS] = {source.name: source for source in settings.workflows}
    app[appkeys.TRACER] = Propagator()
    if otel:
        app.cleanup_ctx.append(_otel_ctx)
    if delivery is not None:
        app[appkeys.DELIVERY] = delivery
    else:
        app.cleanup_ctx.append(_publisher_ctx)
        if settings.quarantine:
            app.cleanup_ctx.append(_quarantine_ctx)
        if settings.spool_dir is not None:
            # After the publisher: the drainer uses it, and stops before it closes.
            app.cleanup_ctx.append(_spool_ctx)
        app.cleanup_ctx.append(_probe_ctx)
    # limits.expect_continue: aiohttp's default answers 500 to a non-UTF-8 Expect value.
    app.router.add_post(WEBHOOK_PATH, handler.receive, expect_handler=limits.expect_continue)
    app.router.add_post(
        WORKFLOW_PATH, handler.receive_workflow, expect_handler=limits.expect_continue
    )
    app.router.add_get("/healthz", probes.healthz, expect_handler=limits.expect_continue)
    app.router.add_get("/readyz", probes.readyz, expect_handler=limits.expect_continue)
    return app


def create_metrics_app(registry: CollectorRegistry) -> web.Application:
    """A separate application for ``/metrics``, served on its own port."""

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
