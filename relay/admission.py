"""Admission: shed a flood before it costs a body read and a signature check."""

from __future__ import annotations


class Admission:
    """How many requests are in the handler now: reading, verifying, waiting for Kafka.

    Past ``max_in_flight`` a new request is refused with the retryable status before its
    body is read or verified. Without that, a flood above capacity got each request read
    and verified only to be refused by the producer's limit, and the accepted ones waited
    behind all that work, past the deadline (docs/reliability.md, Overload).
    """

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0
