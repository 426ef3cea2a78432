"""Kafka's default partitioner, each key's hash computed once.

The record's partition is Java's murmur2 of its key, as aiokafka's ``DefaultPartitioner``
(and every Kafka client) computes it, so that a location's events land where any other
producer's would. aiokafka computes murmur2 in pure Python on every send; a relay sees the
same few thousand locations again and again, so the hash is kept, per key, up to
:data:`MAX_KEYS` keys (then forgotten all at once and kept again: no order to maintain).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from aiokafka.partitioner import murmur2

#: keys whose hash is kept; about 100 bytes each, so a few MiB at most
MAX_KEYS: Final = 65536


class KeyHashPartitioner:
    """``DefaultPartitioner``'s choice, with a key's hash kept after its first record."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._hashes: dict[bytes, int] = {}
        self._max_keys = max_keys

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        """The partition of ``key``; a random available one for a record without a key."""
        if key is None:
            # The relay always keys its records; this is aiokafka's rule, for completeness.
            return random.choice(available or all_partitions)  # noqa: S311 -- not a secret
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]
