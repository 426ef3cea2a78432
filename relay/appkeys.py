"""Typed keys of everything the application holds, in one place.

Only ``relay/app.py`` (the factory) sets them. This module imports the types it names and
nothing that imports it back: handlers import it, it never imports a handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web

from relay.delivery import Delivery
from relay.ingress.admission import Admission
from relay.ingress.dedup import RecentIds
from relay.ingress.quarantine import Quarantine
from relay.ingress.routing import Routes
from relay.ingress.signatures import KeySet
from relay.kafka.publisher import Publisher
from relay.metrics import Metrics
from relay.settings import Settings
from relay.tracing import Tracer
from relay.workflows import WorkflowSource

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", KeySet)
ROUTES = web.AppKey("routes", Routes)
METRICS = web.AppKey("metrics", Metrics)
RECENT_IDS = web.AppKey("recent_ids", RecentIds)
ADMISSION = web.AppKey("admission", Admission)
#: set by the shutdown sequence (relay/server.py): readiness answers 503 from then on
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
#: the Kafka producer; only the factory's cleanup contexts and the tests use it directly
PUBLISHER = web.AppKey("publisher", Publisher)
#: the one seam between HTTP and Kafka, direct or through the spool
DELIVERY: web.AppKey[Delivery] = web.AppKey("delivery")
#: the configured workflow sources, by name (relay/ingress/handler.py, receive_workflow)
WORKFLOWS: web.AppKey[Mapping[str, WorkflowSource]] = web.AppKey("workflows")
#: per request, a trace: the W3C context passed on, or OpenTelemetry spans (relay/tracing.py)
TRACER: web.AppKey[Tracer] = web.AppKey("tracer")
#: set only with RELAY_QUARANTINE on: where the 401 path hands refused deliveries
QUARANTINE = web.AppKey("quarantine", Quarantine)
