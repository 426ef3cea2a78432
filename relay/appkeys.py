"""Typed keys of everything the application holds, in one place."""

from __future__ import annotations

from aiohttp import web

from relay.admission import Admission
from relay.dedup import RecentIds
from relay.drain import Spooler
from relay.health import Health
from relay.metrics import Metrics
from relay.publisher import Publisher
from relay.routing import Routes
from relay.settings import Settings
from relay.signatures import KeySet

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", KeySet)
ROUTES = web.AppKey("routes", Routes)
METRICS = web.AppKey("metrics", Metrics)
RECENT_IDS = web.AppKey("recent_ids", RecentIds)
PUBLISHER = web.AppKey("publisher", Publisher)
HEALTH = web.AppKey("health", Health)
SPOOLER = web.AppKey("spooler", Spooler)
ADMISSION = web.AppKey("admission", Admission)
