"""The one seam between HTTP and Kafka: a :class:`Delivery` takes a record before a deadline.

Two implementations, chosen once by the application factory (``relay/app.py``):

- :class:`relay.kafka.direct.Direct`: a 2xx only after Kafka's ack;
- :class:`relay.spool.spooler.Spooler` (``RELAY_SPOOL_DIR``): Kafka's ack, or the record
  fsynced in the spool when Kafka cannot take it in time.

The handler and the readiness probe know this protocol only, never which one runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from relay.records import Record


@dataclass(frozen=True, slots=True)
class Acked:
    """Kafka acknowledged the record here."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Spooled:
    """The record is fsynced in the spool: durable on this pod's disk, in Kafka once drained."""


#: what :meth:`Delivery.deliver` returns: either way the record is durable
Receipt = Acked | Spooled


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the delivery can take records now, the problems in words, extra detail."""

    status: Literal["ready", "degraded", "unavailable"]
    problems: tuple[str, ...] = ()
    #: added to the ``/readyz`` answer as it is (the spool's state)
    detail: Mapping[str, object] = field(default_factory=dict)


class Delivery(Protocol):
    """Where the handler hands a verified record."""

    async def deliver(self, record: Record, deadline: float) -> Receipt:
        """Make ``record`` durable before ``deadline`` (event-loop time), or raise PublishError."""
        ...

    def readiness(self) -> Readiness:
        """Whether records can be taken now, for ``/readyz``."""
        ...
