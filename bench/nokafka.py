"""``python -m bench.nokafka``: ``relay serve`` with a delivery that does nothing.

The benchmark's "relay without Kafka" target (issue 21): the same settings, app, handler,
metrics and server as ``relay serve``, with :class:`Discard` in the place of Kafka, so that
the relay's own work between the verify and the produce is a line of its own, apart from
the Kafka client's. Bench-only: no ``RELAY_*`` setting reaches this module, and every
answer it gives is a 200 for a record that went nowhere.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

from relay import logs
from relay.delivery import Acked, Readiness, Receipt
from relay.records import Record
from relay.server import run_event_loop, serve
from relay.settings import Settings


class Discard:
    """A :class:`relay.delivery.Delivery` that drops each record and "acks" it at once."""

    def __init__(self) -> None:
        self._offsets = itertools.count()

    async def deliver(self, record: Record, deadline: float) -> Receipt:
        """Drop ``record``; an ack at the next offset of partition 0 of its topic."""
        return Acked(record.topic, 0, next(self._offsets))

    def readiness(self) -> Readiness:
        """Always ready: there is nothing to wait for."""
        return Readiness("ready")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve with the ``RELAY_*`` settings of the environment, records discarded."""
    settings = Settings.load(os.environ)
    logs.configure(settings.log_level)
    run_event_loop(serve(settings, delivery=Discard()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
