"""Publishing outputs with confirmed delivery, per record.

The scoring flow acks an input only after every output derived from it is *delivered* (acknowledged
by the broker), which is what makes the flow at-least-once. ``Publisher.send_batch`` returns a
``Delivery`` handle that completes when every message of the batch has an outcome:

* delivered;
* retried until delivered: librdkafka retries transient errors itself for ``message.timeout.ms``; a message
  that still fails with a transient error (a broker stalled longer than that, a leader election, an ACL being
  fixed) is produced again by us with a capped backoff, for as long as it takes. A missing topic (deleted, or
  a broker restarted without its data) is created again first (``ensure_topics``) and the message retried;
* rejected for good (``PERMANENT_ERRORS``: the broker will never take *this* record, e.g. MSG_SIZE_TOO_LARGE,
  INVALID_RECORD): listed in ``Delivery.rejected`` with the error, so the engine can dead-letter that one
  input and ack it, instead of a whole lane dying on one record (before, one such message raised
  DeliveryError and killed the batch engine's thread or crashed the Faust agent).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException

from streams.kafka import clients
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# The producer's message.max.bytes (librdkafka's and Kafka's default, 1 MB), set explicitly on every publisher
# so the dead-letter builder can size letters to it (streams.scoring.records.RecordBuilder).
MAX_MESSAGE_BYTES = 1_000_000

# Errors about one record that no retry can fix: the record is handed back as rejected.
PERMANENT_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,  # also what produce() raises locally over message.max.bytes
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG,  # CORRUPT_MESSAGE
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_TIMESTAMP,
    KafkaError.POLICY_VIOLATION,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    KafkaError._INVALID_ARG,
    KafkaError._BAD_MSG,
})
MISSING_TOPIC_ERRORS = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                                  KafkaError._UNKNOWN_PARTITION})
RETRY_BACKOFF_S = (0.2, 10.0)  # first and longest wait before we produce a failed message again


@dataclass(slots=True)
class Outbound:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None = None
    partition: int | None = None
    source: object | None = None  # the input it was built from (an InboundMessage), to dead-letter it if rejected


class DeliveryError(RuntimeError):
    pass


@dataclass(eq=False)
class Delivery:
    """Completion of one batch: counts down as each message is delivered or rejected for good."""
    pending: int
    rejected: list[tuple[Outbound, KafkaError]] = field(default_factory=list)
    retries: int = 0  # times we produced one of its messages again (each may add a duplicate)
    done: threading.Event = field(default_factory=threading.Event)
    _future: asyncio.Future | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def errors(self) -> list[KafkaError]:
        return [err for _, err in self.rejected]

    def _settle(self) -> None:
        self.pending -= 1  # callbacks run on the single poll thread, so no lock is needed
        if self.pending == 0:
            self._finish()

    def _finish(self) -> None:
        self.done.set()
        if self._future is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def raise_for_errors(self) -> None:
        if self.rejected:
            out, err = self.rejected[0]
            raise DeliveryError(f"{len(self.rejected)} message(s) rejected, first to {out.topic}: {err}")

    def wait(self, timeout: float | None = None) -> None:
        if not self.done.wait(timeout):
            raise DeliveryError(f"{self.pending} message(s) still undelivered after {timeout}s")
        self.raise_for_errors()

    async def wait_done(self) -> None:
        """Until every message has an outcome; never raises for rejected ones (read ``rejected``)."""
        if not self.done.is_set():
            await asyncio.shield(self._future)  # type: ignore[arg-type]

    async def wait_async(self) -> None:
        await self.wait_done()
        self.raise_for_errors()


class Publisher:
    """A confluent-kafka producer with a background poll thread serving delivery callbacks and our retries."""
    def __init__(self, kafka: KafkaSettings, recreate_topics: bool = True, **overrides: str | int) -> None:
        self.kafka = kafka
        self.recreate_topics = recreate_topics
        self.max_message_bytes = int(overrides.pop("message.max.bytes", MAX_MESSAGE_BYTES))
        conf: dict[str, str | int | bool] = {"message.max.bytes": self.max_message_bytes}
        if recreate_topics:
            # We create missing topics ourselves, with the flow's partition count: a broker's auto-creation
            # would use its own default (1 on Kafka) and break "an output lands in its input's partition".
            # A message for an unknown topic fails after 5 s instead of librdkafka's 30 (measured after a
            # restart of the embedded broker: 32 s to the first retry at the default).
            conf.update({"allow.auto.create.topics": False, "topic.metadata.propagation.max.ms": 5000})
        self._producer = clients.producer(kafka, **{**conf, **overrides})
        self._retry_lock = threading.Lock()
        self._retries: list[tuple[float, int, Outbound, Delivery, int]] = []  # heap by due time
        self._seq = itertools.count()
        self._missing_topics: set[str] = set()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="publisher-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            if self._retries:
                self._retry_due()

    # --- per-record outcomes ---------------------------------------------------------------------
    def _produce(self, m: Outbound, delivery: Delivery, attempt: int = 0) -> None:
        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            self._outcome(m, delivery, attempt, err)

        kwargs = {} if m.partition is None else {"partition": m.partition}
        while True:
            try:
                self._producer.produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery, **kwargs)
                return
            except BufferError:  # local queue full: the poll thread drains it
                if threading.current_thread() is self._poller:
                    self._producer.poll(0.05)
                else:
                    time.sleep(0.005)
            except KafkaException as exc:  # refused before sending (e.g. over message.max.bytes)
                self._outcome(m, delivery, attempt, exc.args[0])
                return

    def _outcome(self, m: Outbound, delivery: Delivery, attempt: int, err: KafkaError | None) -> None:
        if err is None:
            delivery._settle()
            return
        code = err.code()
        if code in PERMANENT_ERRORS:
            delivery.rejected.append((m, err))
            delivery._settle()
            return
        if code in MISSING_TOPIC_ERRORS and self.recreate_topics:
            self._missing_topics.add(m.topic)
        low, high = RETRY_BACKOFF_S
        wait = min(high, low * 2 ** min(attempt, 10))
        if attempt == 0 or attempt % 10 == 0:
            log.warning("output to %s not delivered (%s); producing it again in %.1fs (attempt %d)", m.topic, err,
                        wait, attempt + 1)
        with self._retry_lock:
            heapq.heappush(self._retries, (time.monotonic() + wait, next(self._seq), m, delivery, attempt + 1))

    def _retry_due(self) -> None:
        now = time.monotonic()
        due = []
        with self._retry_lock:
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries))
        if not due:
            return
        if self._missing_topics:
            self._ensure_topics()
        for _, _, m, delivery, attempt in due:
            delivery.retries += 1
            self._produce(m, delivery, attempt)

    def _ensure_topics(self) -> None:
        from streams.kafka.topics import ensure_topics  # topics imports this module's siblings only; no cycle

        names = sorted(self._missing_topics)
        try:
            created = ensure_topics(self.kafka, names, timeout=10.0)
        except Exception as exc:  # broker still away: the next retry tries again
            log.warning("could not recreate output topics %s: %s", names, exc)
            return
        self._missing_topics.clear()
        if created:
            log.warning("output topics %s were missing (deleted, or the broker lost its data): created again",
                        created)

    # --- API ------------------------------------------------------------------------------------
    def send_batch(self, messages: Sequence[Outbound], loop: asyncio.AbstractEventLoop | None = None) -> Delivery:
        delivery = Delivery(pending=len(messages))
        if loop is not None:
            delivery._loop, delivery._future = loop, loop.create_future()
        if not messages:
            delivery._finish()
            return delivery
        for m in messages:
            self._produce(m, delivery)
        return delivery

    @property
    def retrying(self) -> int:
        """Messages waiting for us to produce them again."""
        return len(self._retries)

    def connect(self, topic: str, timeout: float = 10.0) -> None:
        """Fetch the topic's metadata (and so open the connections) before the first send."""
        self._producer.list_topics(topic, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._poller.join(timeout=1)
        remaining = self._producer.flush(timeout)  # serves the last callbacks on this thread
        if remaining or self._retries:
            raise DeliveryError(f"{remaining + len(self._retries)} message(s) undelivered at close")
