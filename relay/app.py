"""The application factory: settings in, a ready-to-run aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from relay import appkeys, drain, health, ingress, limits
from relay.admission import Admission
from relay.dedup import RecentIds
from relay.errors import ConfigError
from relay.health import Health
from relay.metrics import Metrics
from relay.publisher import Publisher
from relay.routing import Routes, RoutesError, all_topics, load_routes
from relay.settings import Settings
from relay.signatures import KeyFileError, KeySet, default_keys, load_public_keys

WEBHOOK_PATH = "/webhooks/hoopai"


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


async def _publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    publisher = Publisher(app[appkeys.SETTINGS], all_topics(app[appkeys.ROUTES]))
    app[appkeys.PUBLISHER] = publisher
    # Connect in the background: the listener comes up at once and answers the retryable
    # status until Kafka is reached, rather than the pod crash-looping on a Kafka outage.
    connecting = asyncio.create_task(publisher.connect(), name="kafka-connect")
    yield
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await connecting
    await publisher.close()


def create_app(settings: Settings) -> web.Application:
    """Build the relay's application; raise ConfigError for bad keys or routes."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[appkeys.SETTINGS] = settings
    app[appkeys.KEYS] = load_keys(settings)
    app[appkeys.ROUTES] = load_routing(settings)
    app[appkeys.METRICS] = Metrics()
    app[appkeys.RECENT_IDS] = RecentIds(settings.dedup_window)
    app[appkeys.HEALTH] = Health()
    app[appkeys.ADMISSION] = Admission()
    app.cleanup_ctx.append(_publisher_ctx)
    if settings.spool_dir is not None:
        # After the publisher: the drainer uses it, and stops before it closes.
        app.cleanup_ctx.append(drain.spool_ctx)
    app.cleanup_ctx.append(health.probe_ctx)
    # limits.expect_continue: aiohttp's default answers 500 to a non-UTF-8 Expect value.
    app.router.add_post(WEBHOOK_PATH, ingress.receive, expect_handler=limits.expect_continue)
    app.router.add_get("/healthz", health.healthz, expect_handler=limits.expect_continue)
    app.router.add_get("/readyz", health.readyz, expect_handler=limits.expect_continue)
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
