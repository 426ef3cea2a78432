"""The delivery without a spool: a record is durable once Kafka acknowledged it."""

from __future__ import annotations

from relay.delivery import Acked, Readiness
from relay.kafka.publisher import Publisher
from relay.records import Record


class Direct:
    """A :class:`~relay.delivery.Delivery` straight to the publisher."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def deliver(self, record: Record, deadline: float) -> Acked:
        """Kafka's ack, or a PublishError (see :meth:`Publisher.publish`)."""
        return await self.publisher.publish(record, deadline)

    def readiness(self) -> Readiness:
        """Ready when the producer runs and the cluster answers; unavailable otherwise."""
        problems = self.publisher.problems()
        return Readiness("unavailable" if problems else "ready", problems)
