"""The relay's own exceptions.

    RelayError
    ├── ConfigError          bad setting, key file or routes file: exit 2 at start-up
    └── PublishError         a record was not acknowledged: answer a retryable status
        ├── NotConnected     the producer has no connection to the cluster (yet)
        ├── Overloaded       the in-flight limit is reached: shed instead of queueing
        ├── AckTimeout       no acknowledgement within the request's deadline
        ├── ProduceFailed    the broker or client refused the record
        ├── SpoolFull        the spool (RELAY_SPOOL_DIR) is at its cap
        └── SpoolError       the spool could not be written (a full disk, an I/O error)

Each ``PublishError`` has a ``label``: a closed set, safe as a metric label value.
"""

from __future__ import annotations

from typing import ClassVar


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A setting, key file or routes file is invalid; the message names it."""


class PublishError(RelayError):
    """The record was not acknowledged by Kafka; the sender must retry."""

    label: ClassVar[str] = "publish_error"


class NotConnected(PublishError):
    """The producer is not connected to the cluster."""

    label = "not_connected"


class Overloaded(PublishError):
    """Too many requests are already waiting for Kafka."""

    label = "overloaded"


class AckTimeout(PublishError):
    """Kafka did not acknowledge within the deadline."""

    label = "ack_timeout"


class ProduceFailed(PublishError):
    """Kafka (or the client) refused the record."""

    label = "produce_failed"

    def __init__(self, message: str, *, kafka_error: str, retriable: bool = False) -> None:
        super().__init__(message)
        #: the aiokafka error class: a closed set defined by the library, safe as a label
        self.kafka_error = kafka_error
        #: whether the client deems the error transient (a later send may succeed)
        self.retriable = retriable


class SpoolFull(PublishError):
    """The spool holds ``spool_max_bytes`` already."""

    label = "spool_full"


class SpoolError(PublishError):
    """Writing the spool failed (no space left, an I/O error)."""

    label = "spool_io"
