"""The ack deadline of every waiting request, kept by one timer per 10 ms, not one each.

``asyncio.timeout_at`` arms a timer for each request and cancels it when the ack comes,
which is nearly always: on the dev box that was about 31,000 instructions a request, 1.7%
of the relay's whole cost with Kafka (``python -m bench.glue --kafka``, docs/benchmarks.md).
Here the requests whose deadlines fall in the same 10 ms share a bucket and its one timer;
a request enters its bucket before the send and leaves it once answered (a set's add and
discard). When a bucket's timer fires, every task still in it is cancelled, and
:meth:`Deadlines.lapsed` tells that cancellation from any other, as ``asyncio.Timeout``
does, so the caller raises its timeout instead.

A deadline is rounded down to its bucket: the retryable answer comes at most 10 ms early,
never late (the sender gives up after 5 s).
"""

from __future__ import annotations

import asyncio
from typing import Final

#: buckets per second: a deadline is kept to 1/RESOLUTION s, rounded down
RESOLUTION: Final = 100


class Deadlines:
    """Cancels the tasks whose deadline (event-loop time) has passed; one timer per bucket."""

    def __init__(self) -> None:
        self._buckets: dict[int, set[asyncio.Task[object]]] = {}
        #: tasks cancelled by a deadline, until :meth:`lapsed` has seen them
        self._cancelled: set[asyncio.Task[object]] = set()

    def enter(self, task: asyncio.Task[object], deadline: float) -> int:
        """Keep ``task`` until :meth:`leave`; cancel it at ``deadline``. Its bucket's key."""
        key = int(deadline * RESOLUTION)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            task.get_loop().call_at(key / RESOLUTION, self._expire, key)
        bucket.add(task)
        return key

    def leave(self, task: asyncio.Task[object], key: int) -> None:
        """Forget ``task``, answered (or cancelled) before or at its deadline."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(task)

    def lapsed(self, task: asyncio.Task[object]) -> bool:
        """Whether the CancelledError ``task`` caught is its deadline's, and only that.

        Takes the deadline's cancellation back (``uncancel``), so that only a cancellation
        from elsewhere (the shutdown) is left to propagate.
        """
        if task not in self._cancelled:
            return False
        self._cancelled.discard(task)
        return task.uncancel() == 0

    def _expire(self, key: int) -> None:
        for task in self._buckets.pop(key, ()):
            if not task.done():
                task.cancel()
                self._cancelled.add(task)

    def __len__(self) -> int:
        """How many tasks are waiting on a deadline (for the tests)."""
        return sum(map(len, self._buckets.values()))
