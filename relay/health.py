"""Readiness: is this process fit to take webhooks right now, and if not, why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from relay import appkeys

log = logging.getLogger(__name__)


class Health:
    """What readiness is made of; the probe loop and the shutdown sequence update it."""

    def __init__(self) -> None:
        self.kafka_reachable = False
        self.shutting_down = False

    def problems(self, *, producer_started: bool) -> list[str]:
        """Why the relay is not ready, in words; empty when it is."""
        found = []
        if self.shutting_down:
            found.append("shutting down")
        if not producer_started:
            found.append("kafka: producer not started")
        elif not self.kafka_reachable:
            found.append("kafka: cluster unreachable")
        return found

    def set_reachable(self, reachable: bool) -> None:
        """Record a probe's result, logging only the changes."""
        if reachable != self.kafka_reachable:
            log.log(
                logging.INFO if reachable else logging.WARNING,
                "kafka reachable" if reachable else "kafka unreachable",
                extra={"event": "kafka_reachability", "reachable": reachable},
            )
        self.kafka_reachable = reachable


async def probe_ctx(app: web.Application) -> AsyncIterator[None]:
    """Ask the cluster for metadata every ``ready_check_interval_s``, for readiness."""
    health, publisher = app[appkeys.HEALTH], app[appkeys.PUBLISHER]
    interval = app[appkeys.SETTINGS].ready_check_interval_s

    async def loop() -> None:
        await publisher.wait_connected()
        while True:
            health.set_reachable(await publisher.probe(timeout_s=interval))
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="kafka-probe")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when the producer runs and the cluster answers, else 503 with reasons.

    With the spool on, Kafka's problems do not make the pod unready while the spool accepts:
    the pod still answers 2xx for what it takes. It says 200 ``degraded`` with the problems
    and the spool's state, and 503 only once the spool is full (or cannot be written).
    """
    app = request.app
    health, spooler = app[appkeys.HEALTH], app.get(appkeys.SPOOLER)
    problems = health.problems(producer_started=app[appkeys.PUBLISHER].connected)
    if spooler is None:
        if problems:
            return web.json_response({"status": "unavailable", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})
    spool = spooler.status()
    if not spooler.spool.accepting:
        problems.append("spool: full or not writable")
    if health.shutting_down or not spooler.spool.accepting:
        body = {"status": "unavailable", "problems": problems, "spool": spool}
        return web.json_response(body, status=503)
    if problems or spooler.spooling:
        return web.json_response({"status": "degraded", "problems": problems, "spool": spool})
    return web.json_response({"status": "ready", "spool": spool})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"status": "ok"})
