"""The scoring flow for one micro-batch, free of any transport: validate -> score -> build outputs.

Both lanes (the Faust agent and the confluent-kafka batch engine) hand raw messages to
``ScoringPipeline.process`` and publish what it returns, so the semantics cannot drift apart.
Bad input never raises: it becomes a dead letter carrying the reason and the original bytes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.scorer import Scorer
from schemas.codecs import InvalidEvent, decode_feature_event
from schemas.validation import FeatureValidator
from streams import metrics
from streams.kafka.publisher import Outbound
from streams.scoring.records import InboundMessage, RecordBuilder, now_ms
from streams.settings import ScoringSettings


@dataclass
class BatchResult:
    outputs: list[Outbound] = field(default_factory=list)
    scored: int = 0
    dead_lettered: int = 0


class Router(Protocol):
    """What the pipeline needs of a routing table (``streams.routing.router.Router`` implements it)."""

    def route(self, records: RecordBuilder, good: list, X: np.ndarray, received_ms: int) -> list[Outbound]: ...


class ScoringPipeline:
    """Turns a batch of raw input messages into prediction and dead-letter messages."""

    def __init__(self, settings: ScoringSettings, scorer: Scorer, route: str = "single") -> None:
        self.settings = settings
        self.scorer = scorer
        self.route = route
        self.router: Router | None = None  # set by streams.routing.watcher when a model registry is configured
        self.records = RecordBuilder(settings.worker_name, settings.dead_letter_topic)
        self.validator = FeatureValidator(scorer.feature_names)
        self._in = {t: metrics.EVENTS_IN.labels(t) for t in settings.input_topics}
        self._out = metrics.PREDICTIONS_OUT.labels(scorer.name, scorer.version)
        metrics.MODEL_INFO.labels(scorer.name, scorer.version, scorer.sha256).set(1)

    def process(self, messages: Sequence[InboundMessage], received_ms: int | None = None) -> BatchResult:
        started = time.perf_counter()
        received_ms = received_ms or now_ms()
        result = BatchResult()
        formats, max_bytes, to_row = self.settings.input_topics, self.settings.max_payload_bytes, self.validator.row
        good: list[tuple[InboundMessage, object]] = []
        rows: list[list[float]] = []
        for msg in messages:
            try:
                event = decode_feature_event(msg.value, formats.get(msg.topic, "auto"), max_bytes)
                rows.append(to_row(event))
            except InvalidEvent as exc:
                result.outputs.append(self._dead_letter(msg, exc))
                continue
            good.append((msg, event))
        for topic, count in Counter(m.topic for m in messages).items():
            self._in.setdefault(topic, metrics.EVENTS_IN.labels(topic)).inc(count)
        if rows:
            X = np.asarray(rows, dtype=np.float32)
            router = self.router
            event_times = np.fromiter((event.event_time for _, event in good), dtype=np.int64, count=len(good))
            if router is None:
                result.outputs.extend(self.predictions(good, X, received_ms))
                self._out.inc(len(rows))
            else:  # registry routing: versions, A/B, canary, shadow, bandit (streams/routing/router.py)
                result.outputs.extend(router.route(self.records, good, X, received_ms))
            metrics.observe_many(metrics.EVENT_LATENCY, np.maximum(0, now_ms() - event_times) / 1000)
            result.scored = len(rows)
        result.dead_lettered = len(messages) - result.scored
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    def predictions(self, good: list, X: np.ndarray, received_ms: int) -> list[Outbound]:
        """Predictions of the pipeline's own scorer on its own route (no registry routing)."""
        batch = self.scorer.predict_many(X)
        return self.records.predictions(good, X, batch, self.scorer, route=self.route,
                                        topic=self.settings.prediction_topic, received_ms=received_ms)

    def _dead_letter(self, msg: InboundMessage, exc: InvalidEvent) -> Outbound:
        metrics.DEAD_LETTERS.labels(msg.topic, exc.code).inc()
        return self.records.dead_letter(msg, exc)
