"""The Kafka side: one idempotent ``acks=all`` producer, its connection, its reachability.

The relay answers 2xx only for a record :meth:`Publisher.publish` returned from, that is,
one the brokers acknowledged. The in-flight limit is the handler's (relay/ingress/admission.py),
counted once for the whole request. Every other way out is a :class:`~relay.errors.PublishError`
that the handler turns into a retryable status. A record whose wait was abandoned (the
deadline passed) may still be delivered later: the sender retries it with the same
``ce_id``, and consumers dedup, so that is a duplicate, never a loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import RecordMetadata

from relay import logs
from relay.delivery import Acked
from relay.errors import AckTimeout, NotConnected, ProduceFailed
from relay.kafka.check import KafkaLoginError
from relay.kafka.deadlines import Deadlines
from relay.kafka.oauth import TokenError
from relay.kafka.options import client_options, preflight, token_provider
from relay.kafka.partitioner import KeyHashPartitioner
from relay.kafka.producer import Producer
from relay.kafka.topics import ensure_topics
from relay.records import Record
from relay.settings import Settings

log = logging.getLogger(__name__)

# Room for the CloudEvents headers and the record framing on top of the largest body.
_RECORD_OVERHEAD = 64 * 1024
_RECONNECT_MAX_S = 10.0
# After these, the producer's id can never write again, so every later record would fail
# too. Seen after all brokers came back from a kill: aiokafka numbers an expired batch of a
# leaderless partition, then drops it, and the brokers wait for that sequence number
# forever. Only a new producer (a new id, sequences from 0) writes again.
_PRODUCER_BROKEN = (OutOfOrderSequenceNumber, UnknownProducerId, ProducerFenced)


class Publisher:
    """Owns the producer; connects in the background so the HTTP side starts at once."""

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str] = (),
        *,
        on_token_fetch: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self._settings = settings
        #: created at start-up when ``create_topics`` is set
        self._topics = topics
        #: OAUTHBEARER's tokens, shared by every producer and admin client of this process
        self._tokens = token_provider(settings, on_token_fetch)
        self._producer: AIOKafkaProducer | None = None
        self._started = asyncio.Event()
        #: the last probe's answer (see :meth:`probe`)
        self.reachable = False
        #: when the cluster was found unreachable after being reached (monotonic)
        self._unreachable_since: float | None = None
        self._replacing: asyncio.Task[None] | None = None
        self._deadlines = Deadlines()
        #: shared by every producer this publisher starts, so that no key is hashed twice
        self._partitioner = KeyHashPartitioner()

    @property
    def connected(self) -> bool:
        """Whether the producer has started (reached the cluster at least once)."""
        return self._producer is not None

    async def wait_connected(self) -> None:
        """Return once the producer has started."""
        await self._started.wait()

    def problems(self) -> tuple[str, ...]:
        """Why Kafka cannot take records now, in words (``/readyz``); empty when it can."""
        if not self.connected:
            return ("kafka: producer not started",)
        if not self.reachable:
            return ("kafka: cluster unreachable",)
        return ()

    def _new_producer(self) -> AIOKafkaProducer:
        s = self._settings
        return Producer(
            **client_options(s, self._tokens),
            client_id="hoopai-relay",
            acks="all",
            enable_idempotence=True,
            linger_ms=s.kafka_linger_ms,
            partitioner=self._partitioner,
            max_request_size=s.max_body_bytes + _RECORD_OVERHEAD,
            request_timeout_ms=max(s.ack_timeout_ms, 5000),
        )

    async def connect(self) -> None:
        """Start the producer, retrying with backoff until the cluster answers.

        The first failure is a warning; the retries are DEBUG lines, and the start says
        after how many attempts and seconds: one line per change, not one per retry.
        """
        s, delay = self._settings, 0.5
        began, attempts = time.monotonic(), 0
        while True:
            attempts += 1
            producer = self._new_producer()
            try:
                # aiokafka says little about TLS refusals and takes a refused OAuth token
                # for a login (relay/kafka/check.py): find out first, and say why.
                await preflight(s, client_options(s, self._tokens))
                await producer.start()
                if s.create_topics:
                    await ensure_topics(
                        client_options(s, self._tokens),
                        self._topics,
                        s.topic_partitions,
                        s.topic_replication_factor,
                    )
            except asyncio.CancelledError:
                await producer.stop()  # shut down while still connecting: leave no client behind
                raise
            except Exception as exc:
                # Anything, not only KafkaError: this task must never end silently, or the
                # relay would answer 429 forever with nothing in the log to say why.
                await producer.stop()
                # Ours name the broker and the cause in words; aiokafka's need their class.
                why = str(exc) if isinstance(exc, KafkaLoginError | TokenError) else repr(exc)
                log.log(
                    logging.WARNING if attempts == 1 else logging.DEBUG,
                    "kafka not ready (%s); retrying, every %.0f s at most",
                    why,
                    _RECONNECT_MAX_S,
                    extra={"event": "producer", "attempt": attempts, "cause": type(exc).__name__},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)
                continue
            self._producer = producer
            self._started.set()
            log.info(
                "kafka producer started",
                extra={
                    "event": "producer",
                    "attempts": attempts,
                    "seconds": round(time.monotonic() - began, 1),
                },
            )
            return

    async def probe(self, timeout_s: float) -> None:
        """Ask the brokers for metadata; record in :attr:`reachable` whether one answered."""
        reachable = await self._ask_brokers(timeout_s)
        if reachable != self.reachable:
            self._log_reachability(reachable)
        self.reachable = reachable

    def _log_reachability(self, reachable: bool) -> None:
        """Log a change of reachability, once.

        Unreachable; reachable again, with the outage's length and how many of the client
        library's repeated errors it did not log (relay/logs.py).
        """
        counted = logs.library_repeats()
        repeats = counted.take() if counted is not None else 0
        now = time.monotonic()
        if not reachable:
            self._unreachable_since = now
            log.warning(
                "kafka unreachable", extra={"event": "kafka_reachability", "reachable": False}
            )
        elif self._unreachable_since is None:
            log.info("kafka reachable", extra={"event": "kafka_reachability", "reachable": True})
        else:
            outage_s = round(now - self._unreachable_since, 1)
            self._unreachable_since = None
            log.info(
                f"kafka reachable again after {outage_s} s",
                extra={
                    "event": "kafka_reachability",
                    "reachable": True,
                    "outage_s": outage_s,
                    "client_errors_not_logged": repeats,
                },
            )

    async def _ask_brokers(self, timeout_s: float) -> bool:
        """Whether some broker answers a metadata request within ``timeout_s``.

        Every broker is asked at once, and the first answer wins. Asked one after the
        other, a broker that is slow or a black hole (its connection open, nothing coming
        back) used up the whole timeout before the next was asked: the relay took a
        cluster with two healthy brokers for down, and with ``known_down`` answered every
        request 429 ``not_connected`` (tests/test_netfault.py found it with 300 ms of
        latency to one broker).
        """
        producer = self._producer
        if producer is None:
            return False
        client = producer.client
        # No topics: the brokers only. Every topic's metadata (aiokafka's fetch_all_metadata)
        # was a visible share of the CPU on a cluster of thousands of topics, and asking for
        # the relay's own would create them on a broker that auto-creates topics.
        request = MetadataRequest([], allow_auto_topic_creation=False)
        asks = [
            asyncio.ensure_future(client.send(broker.nodeId, request))
            for broker in client.cluster.brokers()
        ]
        try:
            for answer in asyncio.as_completed(asks, timeout=timeout_s):
                try:
                    await answer
                except KafkaError:
                    continue  # that one is down: wait for the others
                return True
        except TimeoutError:
            pass
        finally:
            for ask in asks:
                ask.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
        return False

    def _watch(self, producer: AIOKafkaProducer, delivery: asyncio.Future[RecordMetadata]) -> None:
        """Replace ``producer`` if this record fails in a way that breaks it for good.

        A callback, for a record nobody waits for any more (the drainer's, or a request's
        past its deadline): that failure often comes after the wait ended. A record waited
        for is checked where its wait ends, in :meth:`publish`.
        """

        def check(done: asyncio.Future[RecordMetadata]) -> None:
            if not done.cancelled():
                self._check(producer, done.exception())

        delivery.add_done_callback(check)

    def _check(self, producer: AIOKafkaProducer, error: BaseException | None) -> None:
        """Replace ``producer`` if ``error``, a record's failure, breaks it for good."""
        if isinstance(error, _PRODUCER_BROKEN):
            self._replace(producer)

    def _replace(self, broken: AIOKafkaProducer) -> None:
        """Start a new producer in the background, once for all the records that saw it break."""
        if self._producer is not broken:
            return  # already being replaced
        log.warning("kafka producer broken; starting a new one", extra={"event": "producer"})
        self._producer = None  # until the new one starts: the retryable status, not_connected
        self._started.clear()
        self._replacing = asyncio.create_task(self._reconnect(broken), name="kafka-reconnect")

    async def _reconnect(self, broken: AIOKafkaProducer) -> None:
        """Connect a new producer, then stop the broken one (its records all fail)."""
        await self.connect()
        await broken.stop()

    async def close(self) -> None:
        """Flush what the producer holds and stop it."""
        if self._replacing is not None:
            self._replacing.cancel()
            await asyncio.gather(self._replacing, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._tokens is not None:
            await self._tokens.close()

    @property
    def known_down(self) -> bool:
        """Whether the readiness probe found the cluster unreachable (after having reached it)."""
        return self._unreachable_since is not None

    async def publish(self, record: Record, deadline: float) -> Acked:
        """Send ``record`` and wait for its ack until ``deadline`` (event-loop time).

        While the probe says the cluster is unreachable, NotConnected at once: waiting out
        the deadline would only hold the sender 4 s for the same retryable answer (and,
        with the spool, delay the append that makes the record durable).
        """
        producer = self._producer
        if producer is None:
            raise NotConnected("the producer has not reached the cluster yet")
        if self.known_down:
            raise NotConnected("kafka unreachable (readiness probe)")
        # One timer per 10 ms of deadlines, not one per request (relay/kafka/deadlines.py).
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 -- publish runs in the handler's task
        bucket = self._deadlines.enter(task, deadline)
        delivery: asyncio.Future[RecordMetadata] | None = None
        try:
            delivery = await producer.send(
                record.topic, record.value, key=record.key, headers=list(record.headers)
            )
            metadata: RecordMetadata = await delivery
            return Acked(metadata.topic, metadata.partition, metadata.offset)
        except asyncio.CancelledError:
            if delivery is not None:
                # No longer waited for, the record can still fail and break the producer.
                self._watch(producer, delivery)
            if self._deadlines.lapsed(task):
                raise AckTimeout("no ack before the deadline") from None
            raise
        except KafkaTimeoutError:
            raise AckTimeout("no ack before the deadline") from None
        except KafkaError as exc:
            # Checked here, not by a callback on every record: one less loop turn per ack.
            self._check(producer, exc)
            raise ProduceFailed(
                str(exc), kafka_error=type(exc).__name__, retriable=exc.retriable
            ) from exc
        finally:
            self._deadlines.leave(task, bucket)

    async def send(self, record: Record) -> asyncio.Future[RecordMetadata]:
        """Hand ``record`` to the producer; the future resolves with its ack (the drainer).

        No deadline: the drainer pipelines a bounded batch and waits
        for every ack of it; the producer's request timeout bounds each wait.
        """
        producer = self._producer
        if producer is None:
            raise NotConnected("the producer has not reached the cluster yet")
        delivery: asyncio.Future[RecordMetadata] = await producer.send(
            record.topic, record.value, key=record.key, headers=list(record.headers)
        )
        self._watch(producer, delivery)
        return delivery
