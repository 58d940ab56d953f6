"""Consumer lag of the worker's group, per partition, measured on a timer off the hot path.

A confluent-kafka ``Consumer`` configured with the worker's ``group.id`` that never subscribes (so it
never joins the group and never causes a rebalance) asks the group coordinator for the committed
offsets and the partition leaders for the high watermarks, every ``Settings.lag_interval_s``, on its
own thread:

    lag(topic, partition) = high watermark - committed offset
                            (high - low, the whole retained log, while the group has committed nothing)

Every worker reports every partition of its group's input topics, including partitions owned by
other workers or by nobody, so dashboards and alerts aggregate with ``max by (topic, partition)``.

The same round trips tell whether the broker answers: ``broker_reachable`` is the age of the last
answered metadata request compared with a staleness bound, which /readyz reports without doing any
I/O of its own.

>>> from streams.settings import Settings
>>> monitor = LagMonitor(Settings(), group_id="streamscore", topics=["features"])
>>> monitor.broker_reachable  # nothing measured yet
False
>>> lag_of(high=120, committed=100, low=0), lag_of(high=120, committed=None, low=20)
(20, 100)
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition
from faust.types import AppT
from mode import Service
from prometheus_client import Gauge

from streams import metrics
from streams.background import BackgroundThread
from streams.kafka import clients
from streams.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, int]


def lag_of(high: int, committed: int | None, low: int) -> int:
    """Records the group has yet to consume from one partition.

    A committed offset beyond the high watermark (a topic recreated under the group) means nothing
    is waiting, not negative work, hence the floor at 0.
    """
    return max(0, high - (low if committed is None else committed))


class LagMonitor(BackgroundThread):
    """Measures the lag of ``group_id`` on ``topics`` every ``interval_s`` on a daemon thread."""

    thread_name = "lag-monitor"

    def __init__(self, settings: Settings, group_id: str, topics: list[str], interval_s: float | None = None,
                 timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topics = topics
        self.interval_s = settings.lag_interval_s if interval_s is None else interval_s
        self.timeout_s = timeout_s
        # Reachable = answered within a few intervals, so one slow round on a busy machine is not an outage.
        self.stale_after_s = max(3 * self.interval_s, 10.0)
        self.lags: dict[Key, int] = {}
        self._last_answer: float | None = None
        super().__init__()
        self._consumer: Consumer | None = None
        self._gauges: dict[Key, Gauge] = {}

    # --- what /readyz and tests read ------------------------------------------------------------
    @property
    def broker_reachable(self) -> bool:
        return self._last_answer is not None and time.monotonic() - self._last_answer <= self.stale_after_s

    @property
    def last_answer_age_s(self) -> float | None:
        return None if self._last_answer is None else round(time.monotonic() - self._last_answer, 1)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        metrics.BROKER_REACHABLE.set_function(lambda: float(self.broker_reachable))  # evaluated per scrape
        super().start()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.beat()
                started = time.monotonic()
                try:
                    self.measure()
                except (KafkaException, TimeoutError) as exc:  # broker down or slow: /readyz will say so
                    log.warning("consumer lag of group %s not measured: %s", self.group_id, exc)
                except Exception:  # a monitor must not die of a bug and leave stale gauges behind silently
                    log.exception("consumer lag of group %s not measured", self.group_id)
                self.stopping.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        finally:
            self.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # --- one measurement --------------------------------------------------------------------------
    def consumer(self) -> Consumer:
        if self._consumer is None:
            # group.id only names the group in OffsetFetch: never joined, never committed (its offsets belong to
            # the workers); partition EOFs end the fetched-watermark path below.
            self._consumer = clients.standalone_consumer(self.settings.kafka, self.group_id)
        return self._consumer

    def measure(self) -> dict[Key, int]:
        """Measure every partition once, publish the gauges, and return ``{(topic, partition): lag}``."""
        consumer = self.consumer()
        partitions = self._partitions(consumer)
        self._last_answer = time.monotonic()
        marks = {key: consumer.get_watermark_offsets(TopicPartition(*key), timeout=self.timeout_s, cached=False)
                 for key in partitions}
        if any(m is None for m in marks.values()):
            raise TimeoutError("no watermarks within the timeout")
        highs = {key: high for key, (_, high) in marks.items()}
        if self.settings.is_embedded:
            highs = self._fetched_high_watermarks(consumer, highs)
        committed = consumer.committed([TopicPartition(*key) for key in partitions], timeout=self.timeout_s)
        offsets = {(tp.topic, tp.partition): (None if tp.offset == OFFSET_INVALID else tp.offset) for tp in committed}
        self._last_answer = time.monotonic()
        lags = {key: lag_of(highs[key], offsets.get(key), marks[key][0]) for key in partitions}
        for key, lag in lags.items():
            self._gauge(key).set(lag)
        self.lags = lags
        return lags

    def _partitions(self, consumer: Consumer) -> list[Key]:
        meta = consumer.list_topics(timeout=self.timeout_s).topics
        keys = []
        for topic in self.topics:
            if topic in meta and meta[topic].error is None:
                keys.extend((topic, p) for p in sorted(meta[topic].partitions))
        return keys

    def _gauge(self, key: Key) -> Gauge:
        if key not in self._gauges:
            self._gauges[key] = metrics.CONSUMER_LAG.labels(key[0], str(key[1]))
        return self._gauges[key]

    def _fetched_high_watermarks(self, consumer: Consumer, listed: dict[Key, int]) -> dict[Key, int]:
        """High watermarks from a fetch of each partition's last record batch.

        Tansu 0.6 (the embedded broker) answers ListOffsets(latest) with the base offset of a
        partition's last record batch + 1 rather than its end (measured: 3 batches of 10 records ->
        21, not 30), so lag from it would be short by up to a whole batch. Its fetch responses carry the
        right high watermark; fetching from that base offset reads at most one batch per partition.
        """
        consumer.assign([TopicPartition(t, p, max(0, high - 1)) for (t, p), high in listed.items()])
        try:
            pending, highs, ends = set(listed), dict(listed), []
            deadline = time.monotonic() + self.timeout_s
            while pending and time.monotonic() < deadline:
                clients.records(consumer, 10_000, 0.1, on_eof=ends.append, on_error=_raise)  # only the ends matter
                for msg in ends:
                    key = (msg.topic(), msg.partition())
                    highs[key] = max(highs[key], msg.offset())  # an EOF event's offset is the end offset
                    pending.discard(key)
                ends.clear()
            if pending:
                raise TimeoutError(f"no end of partition for {sorted(pending)} within {self.timeout_s}s")
            return highs
        finally:
            consumer.unassign()


class _LagService(Service):
    """Runs the monitor's thread for as long as the worker runs."""

    def __init__(self, monitor: LagMonitor, **kwargs: object) -> None:
        self.monitor = monitor
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self.monitor.start()

    async def on_stop(self) -> None:
        await self.loop.run_in_executor(None, self.monitor.stop)


def _raise(err: KafkaError) -> None:
    raise KafkaException(err)


def register_lag_monitor(app: AppT, settings: Settings, group: str) -> LagMonitor:
    """Measure the lag of ``group`` (the one the worker's engine consumes with) while the app runs."""
    monitor = LagMonitor(settings, group, list(settings.input_topics))
    app.service(_LagService(monitor))
    return monitor
