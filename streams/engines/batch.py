"""The batch engine: a confluent-kafka consume loop for throughput beyond Faust's per-event overhead.

Measured on the 2-core reference machine, Faust's stream machinery tops out near 15k events/s even
for an agent that does nothing, while librdkafka hands over batches at >1M/s. This lane keeps the
same pipeline and the same at-least-once contract, hosted as a service of the same Faust worker:

    consume(N) -> pipeline.process -> produce (no wait) -> ... -> commit offsets whose outputs
    the broker has acknowledged, in order, every ``commit_interval``.

Several batches are in flight at once, so the broker round trip does not serialise the loop.

Faults it rides out by itself (tests/e2e/test_faults.py):

* a stalled or restarted broker: the publisher retries undelivered outputs for as long as it takes, the loop
  waits for them without a deadline (it used to raise after 60 s and the thread died), a commit refused after
  the group moved on is logged and the offsets go with the next commit, and partitions revoked or lost while
  their outputs are in flight are left to their next owner (it scores them again: duplicates, no loss);
* an output the broker refuses for good (MSG_SIZE_TOO_LARGE, INVALID_RECORD): that one input gets an
  ``output_rejected`` dead letter and is committed once the letter is delivered;
* anything else that escapes the loop: logged, and the consumer is built again (with a backoff) from the
  committed offsets, instead of a dead thread that never scores again.

Engine switch: the batch engine's group is ``<app_id>-batch`` and the Faust agent's is ``<app_id>`` (Faust's
own assignor protocol cannot share a group with librdkafka's). Before joining, each adopts the other's
committed offsets where those are further ahead (``adopt_offsets``), so switching ``--engine`` does not score
again what the other engine already committed. The two engines of one app must not run at the same time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams import metrics
from streams.engines.heap import freeze_startup_heap
from streams.kafka import clients
from streams.kafka.publisher import Delivery, Outbound, Publisher
from streams.scoring.pipeline import InboundMessage, ScoringPipeline
from streams.settings import KafkaSettings, ScoringSettings

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]
_timestamp_ms = itemgetter(1)  # of Message.timestamp(): (type, ms)


@dataclass(eq=False, slots=True)
class _Pending:
    delivery: Delivery
    offsets: Offsets


def batch_group_id(kafka: KafkaSettings) -> str:
    return f"{kafka.app_id}-batch"


def adopt_offsets(kafka: KafkaSettings, group: str, other_group: str, topics: Iterable[str],
                  timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """Commit to ``group`` the offsets ``other_group`` committed on ``topics`` where those are further ahead.

    Called before ``group`` joins: each offset the other group committed has all its outputs delivered, so
    starting there loses nothing, and starting behind it would score those events a second time (switching
    ``demo --engine batch`` after a Faust run published 14,601 duplicates). Returns what was adopted; a
    refusal (``group`` has live members, which own their offsets) is logged and changes nothing.
    """
    mine = clients.standalone_consumer(kafka, group)
    theirs = clients.standalone_consumer(kafka, other_group)
    try:
        metadata = mine.list_topics(timeout=timeout).topics
        partitions = [TopicPartition(t, p) for t in topics if t in metadata for p in sorted(metadata[t].partitions)]
        if not partitions:
            return {}
        own = {(tp.topic, tp.partition): tp.offset for tp in mine.committed(partitions, timeout=timeout)}
        ahead = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in theirs.committed(partitions, timeout)
                 if tp.offset >= 0 and tp.offset > own.get((tp.topic, tp.partition), -1)]
        if ahead:
            mine.commit(offsets=ahead, asynchronous=False)
            log.info("group %s starts where %s left off: %s", group, other_group,
                     {f"{tp.topic}[{tp.partition}]": tp.offset for tp in ahead})
        return {(tp.topic, tp.partition): tp.offset for tp in ahead}
    except KafkaException as exc:
        log.warning("offsets of %s not adopted by %s: %s", other_group, group, exc)
        return {}
    finally:
        mine.close()
        theirs.close()


class BatchEngine:
    max_in_flight = 32  # batches produced but not yet acknowledged
    revoke_wait_s = 10.0  # how long a rebalance waits for in-flight outputs before leaving them to the next owner
    stop_wait_s = 20.0  # how long stop() waits for in-flight outputs (Worker.stop gives the thread 30 s)
    max_restart_backoff_s = 30.0

    def __init__(self, kafka: KafkaSettings, scoring: ScoringSettings, pipeline: ScoringPipeline,
                 publisher: Publisher) -> None:
        self.kafka = kafka
        self.settings = scoring
        self.pipeline = pipeline
        self.publisher = publisher
        self.group_id = batch_group_id(kafka)
        self.stopping = threading.Event()
        self.assigned = threading.Event()
        self._in_flight: deque[_Pending] = deque()
        self._ready: Offsets = {}
        self._last_commit = time.monotonic()
        self._thread: threading.Thread | None = None
        self.restarts = 0  # consumers built again after the loop failed
        self.output_rejected = 0  # outputs refused for good, each replaced by a dead letter

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        freeze_startup_heap()  # full collections walked the whole start-up heap: 20 % of a worker's CPU (heap.py)
        self._thread = threading.Thread(target=self.run, name="batch-lane", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        s = self.settings
        if self.group_id == batch_group_id(self.kafka):  # the scoring lane, not a subclass in its own group
            adopt_offsets(self.kafka, self.group_id, self.kafka.app_id, s.input_topics)
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._consume_until_stopped()
            except Exception:
                self.restarts += 1
                log.exception("%s: consume loop failed; building its consumer again in %.0f s", self.group_id,
                              backoff)
                self.stopping.wait(backoff)
                backoff = min(self.max_restart_backoff_s, backoff * 2)

    def _consume_until_stopped(self) -> None:
        s = self.settings
        consumer = clients.consumer(self.kafka, self.group_id)
        try:
            consumer.subscribe(list(s.input_topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
            within = s.batch_within_ms / 1000
            serve = self.publisher.serve
            while not self.stopping.is_set():
                messages = clients.records(consumer, s.batch_size, within, where=self.group_id)
                if messages:
                    self._process(messages)
                serve()  # this thread serves its delivery reports: no GIL hand-off per message (publisher.py)
                self._commit_acknowledged(consumer)
        finally:
            self._drain(consumer, self.stop_wait_s)
            # What is still in flight is re-read from the committed offsets by whoever consumes next.
            self._in_flight.clear()
            self._ready.clear()
            consumer.close()

    # --- the loop ----------------------------------------------------------------------------
    def _process(self, messages: list) -> None:
        if not messages:
            return
        # Columns by C-level maps over the batch, no Python loop per message (1.0 -> 0.4 us per input).
        topics, partitions = list(map(Message.topic, messages)), list(map(Message.partition, messages))
        offsets_read = list(map(Message.offset, messages))
        batch = list(map(InboundMessage, topics, partitions, offsets_read, map(Message.key, messages),
                         map(Message.value, messages), map(_timestamp_ms, map(Message.timestamp, messages)),
                         map(Message.headers, messages)))
        # The next offset to read of each partition: its last message's + 1 (a batch is in offset order).
        offsets = dict(zip(zip(topics, partitions, strict=True), map((1).__add__, offsets_read), strict=True))
        result = self.pipeline.process(batch)
        self._in_flight.append(_Pending(self.publisher.send_batch(result.outputs), offsets))
        # No deadline: the publisher retries until the broker takes every output, however long it is away.
        while len(self._in_flight) >= self.max_in_flight and not self.stopping.is_set():
            self._wait_for_head(0.1)
            self._collect()

    def _wait_for_head(self, timeout: float) -> None:
        """Serve delivery reports here until the oldest batch in flight completes (or ``timeout``)."""
        done = self._in_flight[0].delivery.done
        if not done.is_set() and not self.publisher.serve(timeout):
            done.wait(timeout)  # the poll thread is serving them right now

    def _collect(self) -> None:
        """Move offsets of fully acknowledged batches (in consume order) to the commit set."""
        while self._in_flight and self._in_flight[0].delivery.done.is_set():
            head = self._in_flight[0]
            if head.delivery.rejected:  # never commit past an output that was not written: dead-letter it first
                head.delivery = self._send_rejected(head.delivery.rejected)
                continue
            self._in_flight.popleft()
            self._ready.update(head.offsets)

    def _send_rejected(self, rejected: list[tuple[Outbound, object]]) -> Delivery:
        records, letters = self.pipeline.records, []
        for out, err in rejected:
            if out.topic == records.dead_letter_topic:  # a letter about a letter would be refused again
                log.error("dead letter for %s refused by the broker (%s); input left in its topic",
                          _where(out), err)
                continue
            self.output_rejected += 1
            metrics.DEAD_LETTERS.labels(getattr(out.source, "topic", "?"), "output_rejected").inc()
            log.warning("output to %s for %s refused by the broker (%s): dead-lettered", out.topic, _where(out), err)
            letters.append(records.output_rejected(out, err))
        return self.publisher.send_batch(letters)

    def _commit_acknowledged(self, consumer: Consumer, force: bool = False) -> None:
        self._collect()
        due = force or time.monotonic() - self._last_commit >= self.settings.commit_interval_s
        if self._ready and due:
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._ready.items()]
            try:
                consumer.commit(offsets=offsets, asynchronous=not force)
            except KafkaException as exc:  # e.g. the group moved on during a broker stall: the next commit
                log.warning("%s: commit refused (%s); offsets kept for the next commit", self.group_id, exc)
                return
            self._ready.clear()
            self._last_commit = time.monotonic()

    def _drain(self, consumer: Consumer, timeout: float) -> None:
        """Wait up to ``timeout`` for in-flight outputs, then commit what is acknowledged."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            self._wait_for_head(min(0.1, max(0.0, deadline - time.monotonic())))
            self._collect()
        self._commit_acknowledged(consumer, force=True)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("batch engine assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish and commit what we can before another member takes these partitions over; what is still in
        # flight after revoke_wait_s is the next owner's to score again (a commit of it now could go backwards).
        try:
            self._drain(consumer, self.revoke_wait_s)
        except Exception:  # an exception here would leave librdkafka's rebalance half-done
            log.exception("batch engine: draining on revoke failed")
        revoked = {(p.topic, p.partition) for p in partitions}
        for pending in self._in_flight:
            for tp in revoked & pending.offsets.keys():
                del pending.offsets[tp]
        for tp in revoked & self._ready.keys():
            del self._ready[tp]
        log.info("batch engine revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])


def _where(out: Outbound) -> str:
    src = out.source
    if isinstance(src, InboundMessage):
        return f"{src.topic}[{src.partition}]@{src.offset}"
    return "an input"
