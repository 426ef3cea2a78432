"""Admission: shed a flood before it costs a body read and a signature check."""

from __future__ import annotations

from prometheus_client import Gauge


class Admission:
    """The one in-flight count: requests in the handler now (reading, verifying, delivering).

    Past ``limit`` (``RELAY_MAX_IN_FLIGHT``) a new request is refused with the retryable
    status before its body is read or verified. Without that, a flood above capacity got each
    request read and verified only to be refused later, and the accepted ones waited behind
    all that work, past the deadline (docs/reliability.md, Overload). ``gauge``
    (``relay_in_flight_requests``) shows the same count: read at scrape time, or, where the
    values go to files for ``--workers`` (which never calls a gauge's function), kept up to
    date on every request. prometheus_client's ``inc`` and ``dec`` take a lock each, about
    11,000 instructions apiece (issue 21).
    """

    __slots__ = ("_active", "_gauge", "_limit")

    def __init__(self, limit: int, gauge: Gauge, *, at_scrape: bool) -> None:
        self._limit = limit
        self._active = 0
        self._gauge: Gauge | None = None
        if at_scrape:
            gauge.set_function(lambda: self._active)
        else:
            self._gauge = gauge

    @property
    def active(self) -> int:
        """Requests in the handler now."""
        return self._active

    def enter(self) -> bool:
        """Count one more request, or refuse it (False) at the limit."""
        if self._active >= self._limit:
            return False
        self._active += 1
        if self._gauge is not None:
            self._gauge.inc()
        return True

    def leave(self) -> None:
        """A request that entered has been answered."""
        self._active -= 1
        if self._gauge is not None:
            self._gauge.dec()
