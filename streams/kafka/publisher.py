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

Delivery callbacks are where the worker's time went (py-spy of a batch-engine worker under a backlog, 2-core
box): confluent-kafka takes the GIL back for every delivery report, so a poll thread serving them while the
scoring thread runs waits for the GIL once per message, the 32-batch window fills and the scoring thread
stalls until it drains. Two changes: the first attempt of every message of a batch shares one callback (no
closure per message; a failed message is found by its topic, key and value, on the error path only), and the
thread that sends can serve the reports itself (``serve``) while it is running, so they are served without a
GIL hand-off; the poll thread serves them only when no one else has for ``FOREGROUND_GRACE_S``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
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
# The poll thread leaves delivery reports to a thread that called ``serve`` within this long: the batch engine
# serves every 5 ms (its consume wait), the Faust engine after every batch it scores.
FOREGROUND_GRACE_S = 0.02


class Outbound(msgspec.Struct, gc=False):
    """One output record (a msgspec struct: built in C, one per output; no reference cycles, so ``gc=False``)."""

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
        self.pending -= 1  # reports are served by one thread at a time (Publisher._serving), so no lock is needed
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
        # Held by whoever serves delivery reports: one thread at a time, so Delivery needs no lock of its own.
        self._serving = threading.RLock()
        self._foreground_at = float("-inf")  # when a sending thread last served reports itself (``serve``)
        self._poller = threading.Thread(target=self._poll_loop, name="publisher-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._foreground_at < FOREGROUND_GRACE_S:
                self._stop.wait(FOREGROUND_GRACE_S)  # a sending thread serves them, without a GIL hand-off
            elif not self._serve(FOREGROUND_GRACE_S):
                self._stop.wait(0.001)
            if self._retries:
                self._retry_due()

    def _serve(self, timeout: float) -> bool:
        if not self._serving.acquire(blocking=False):
            return False  # another thread is serving them right now
        try:
            self._producer.poll(timeout)
        finally:
            self._serving.release()
        return True

    def serve(self, timeout: float = 0.0) -> bool:
        """Serve delivery reports on the calling thread, for up to ``timeout`` s (returns at the first one).

        A thread that sends batches calls this while it runs (after each batch, and instead of waiting on a
        ``Delivery``); the poll thread then stays out of the way. False: another thread was serving them.
        """
        self._foreground_at = time.monotonic()
        return self._serve(timeout)

    # --- per-record outcomes ---------------------------------------------------------------------
    def _produce(self, m: Outbound, delivery: Delivery, attempt: int = 0,
                 on_delivery: Callable[[KafkaError | None, object], None] | None = None) -> None:
        if on_delivery is None:  # a retry: its own callback, which knows the attempt
            def on_delivery(err: KafkaError | None, _msg: object) -> None:
                self._outcome(m, delivery, attempt, err)

        while True:
            try:
                if m.partition is None:
                    self._producer.produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery)
                else:
                    self._producer.produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery,
                                           partition=m.partition)
                return
            except BufferError:  # local queue full: serve reports to drain it (or let the thread serving do so)
                if not self._serve(0.05):
                    time.sleep(0.005)
            except KafkaException as exc:  # refused before sending (e.g. over message.max.bytes)
                with self._serving:  # outcomes are counted by one thread at a time
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
        unmatched: dict[tuple, list[Outbound]] = {}

        def on_delivery(err: KafkaError | None, msg: Any) -> None:  # one per batch: no closure per message
            if err is None:
                delivery._settle()
                return
            # The error path only: which of the batch's outputs this report is about. Built on the first error;
            # equal (topic, key, value) outputs are interchangeable, each is matched once.
            if not unmatched:
                for out in reversed(messages):
                    unmatched.setdefault((out.topic, out.key, out.value), []).append(out)
            outs = unmatched.get((msg.topic(), msg.key(), msg.value()))
            if not outs:  # cannot happen: librdkafka reports each message it was given once
                log.error("a delivery report matches none of its batch's outputs (%s): the batch cannot complete",
                          err)
                return
            self._outcome(outs.pop(), delivery, 0, err)

        # The common case inline (one Python frame less per message: ~0.2 us); the first refusal or full queue
        # hands the rest of the batch to ``_produce``, which waits or reports the outcome.
        produce, sent = self._producer.produce, 0
        try:
            for m in messages:
                if m.partition is None:
                    produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery)
                else:
                    produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery, partition=m.partition)
                sent += 1
        except (BufferError, KafkaException):
            for m in messages[sent:]:
                self._produce(m, delivery, 0, on_delivery)
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
