"""Fills the learner's join window from Kafka: every partition of the feature topics and of the
online-prediction topic, read outside any consumer group.

The window is a function of the topics, not of the process: a reader that starts (a worker that
becomes the learning owner, a restart, a rollback) begins each partition at the first record younger
than the TTL (``offsets_for_times``), but no more than ``join_max_size`` records before the end,
and so rebuilds the same window a long-running reader holds. Until it has caught up with the ends it
saw when it started, the owner keeps the labels partition paused.

``catch_up`` is the barrier for a label that finds nothing: it reads until every partition reaches the
end the broker reports *now*, so a label produced after its features were acknowledged always finds
them. (Tansu reports the end as the last record batch's base offset + 1; a batch is fetched whole, so
reaching that offset and draining the local queue still reads the whole batch.)
"""

from __future__ import annotations

import logging
import time

import orjson
from confluent_kafka import TopicPartition

from online_learning.join import JoinStore
from schemas.codecs import InvalidEvent, decode_feature_event
from schemas.validation import FeatureValidator
from streams.kafka import clients
from streams.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, int]


class JoinReader:
    def __init__(self, settings: Settings, store: JoinStore, validator: FeatureValidator, learner: str) -> None:
        self.settings = settings
        self.store = store
        self.validator = validator
        self.learner = learner
        self._formats = dict(settings.input_topics)
        self._consumer = clients.standalone_consumer(settings.kafka, f"{settings.app_id}-learner-join", **{
            "enable.auto.offset.store": False, "enable.partition.eof": False})
        self._positions: dict[Key, int] = {}
        self.invalid = 0

    # --- start ------------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> dict[Key, int]:
        """Assign every partition at the start of the window; return the ends to catch up with."""
        topics = [*self._formats, self.settings.online_prediction_topic]
        meta = self._consumer.list_topics(timeout=timeout).topics
        keys = [(t, p) for t in topics if t in meta for p in sorted(meta[t].partitions)]
        since_ms = int((time.time() - self.settings.join_ttl_s) * 1000)
        by_time = self._consumer.offsets_for_times([TopicPartition(t, p, since_ms) for t, p in keys], timeout=timeout)
        starts: dict[Key, int] = {}
        for tp in by_time:
            key = (tp.topic, tp.partition)
            low, high = self._consumer.get_watermark_offsets(TopicPartition(*key), timeout=timeout)
            first = tp.offset if tp.offset >= 0 else high  # -1: nothing that young, start at the end
            # The store keeps the newest join_max_size events anyway; reading more would be wasted work.
            starts[key] = max(first, low, high - self.settings.join_max_size)
        self._consumer.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in keys])
        self._positions = dict(starts)
        log.info("join reader starts at %s (window %ss)", starts, self.settings.join_ttl_s)
        return self.ends(timeout)

    def ends(self, timeout: float = 15.0) -> dict[Key, int]:
        ends = {}
        for key in self._positions or self._all_keys(timeout):
            _, high = self._consumer.get_watermark_offsets(TopicPartition(*key), timeout=timeout, cached=False)
            ends[key] = high
        return ends

    def _all_keys(self, timeout: float) -> list[Key]:
        topics = [*self._formats, self.settings.online_prediction_topic]
        meta = self._consumer.list_topics(timeout=timeout).topics
        return [(t, p) for t in topics if t in meta for p in meta[t].partitions]

    # --- reading ----------------------------------------------------------------------------------
    def drain(self, budget: int = 50_000, timeout: float = 0.0) -> int:
        """Read what has arrived (up to ``budget`` records) into the store; return how many were read."""
        read = 0
        while read < budget:
            messages = clients.records(self._consumer, min(5000, budget - read), timeout, where="join reader")
            if not messages:
                break
            for msg in messages:
                self._add(msg)
            read += len(messages)
            timeout = 0.0
        return read

    def reached(self, ends: dict[Key, int]) -> bool:
        return all(self._positions.get(key, end) >= end for key, end in ends.items())

    def catch_up(self, timeout: float) -> bool:
        """Read until every partition reaches the end the broker reports now (False if ``timeout`` passes)."""
        ends = self.ends()
        deadline = time.monotonic() + timeout
        while not self.reached(ends):
            if time.monotonic() >= deadline:
                return False
            self.drain(timeout=0.05)
        self.drain()  # the rest of the last fetched batch
        return True

    def _add(self, msg) -> None:
        topic = msg.topic()
        self._positions[(topic, msg.partition())] = msg.offset() + 1
        ts_type, ts = msg.timestamp()
        ts_ms = ts if ts_type and ts > 0 else None
        fmt = self._formats.get(topic)
        if fmt is not None:
            try:
                event = decode_feature_event(msg.value(), fmt, self.settings.max_payload_bytes)
                row = self.validator.row(event)
            except InvalidEvent:  # dead-lettered by the scoring path; nothing to learn from
                self.invalid += 1
                return
            self.store.add_features(event.event_id, row, ts_ms)
            return
        try:
            pred = orjson.loads(msg.value())
            if pred["model_name"] == self.learner:  # the topic may hold another learner's history
                self.store.add_prediction(pred["event_id"], pred["model_version"], float(pred["score"]),
                                          pred["label"], ts_ms)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.invalid += 1

    def close(self) -> None:
        self._consumer.close()

