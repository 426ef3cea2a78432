"""Admission: shed a flood before it costs a body read and a signature check."""

from __future__ import annotations

from prometheus_client import Gauge


class Admission:
    """The one in-flight count: requests in the handler now (reading, verifying, delivering).

    Past ``limit`` (``RELAY_MAX_IN_FLIGHT``) a new request is refused with the retryable
    status before its body is read or verified. Without that, a flood above capacity got each
    request read and verified only to be refused later, and the accepted ones waited behind
    all that work, past the deadline (docs/reliability.md, Overload). ``gauge``
    (``relay_in_flight_requests``) shows the same count.
    """

    __slots__ = ("_active", "_gauge", "_limit")

    def __init__(self, limit: int, gauge: Gauge) -> None:
        self._limit = limit
        self._gauge = gauge
        self._active = 0

    @property
    def active(self) -> int:
        """Requests in the handler now."""
        return self._active

    def enter(self) -> bool:
        """Count one more request, or refuse it (False) at the limit."""
        if self._active >= self._limit:
            return False
        self._active += 1
        self._gauge.inc()
        return True

    def leave(self) -> None:
        """A request that entered has been answered."""
        self._active -= 1
        self._gauge.dec()
