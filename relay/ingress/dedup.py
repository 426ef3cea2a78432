"""A bounded window of recently acknowledged idempotency keys, per process."""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """The last ``capacity`` ids Kafka acknowledged; a repeat can be answered without producing.

    An id enters only after its ack, so a hit always means the event is already durable.
    The window is an optimisation, not the dedup: consumers still dedup by ``ce_id``.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, ce_id: object) -> bool:
        return ce_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ce_id: str) -> None:
        """Remember ``ce_id``, forgetting the oldest id past capacity."""
        if self._capacity == 0:
            return
        self._ids[ce_id] = None
        self._ids.move_to_end(ce_id)
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
