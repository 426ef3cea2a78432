"""``/readyz`` and ``/healthz``: is this process fit to take webhooks right now, and if not, why."""

from __future__ import annotations

from aiohttp import web

from relay import appkeys


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 ``ready`` or ``degraded``, else 503 ``unavailable``, with the problems.

    The delivery says how it stands (see :meth:`relay.delivery.Delivery.readiness`); shutting
    down makes the pod unavailable whatever it says, so the load balancer stops sending.
    """
    app = request.app
    state = app[appkeys.DELIVERY].readiness()
    status, problems = state.status, list(state.problems)
    if app[appkeys.SHUTTING_DOWN].is_set():
        status, problems = "unavailable", ["shutting down", *problems]
    body: dict[str, object] = {"status": status}
    if status != "ready":
        body["problems"] = problems
    body.update(state.detail)
    return web.json_response(body, status=503 if status == "unavailable" else 200)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"status": "ok"})
