"""The scoring flow for one micro-batch, free of any transport: validate -> score -> build outputs.

Both lanes (the Faust agent and the confluent-kafka batch engine) hand raw messages to
``ScoringPipeline.process`` and publish what it returns, so the semantics cannot drift apart.
Bad input never raises: it becomes a dead letter carrying the reason and the original bytes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

import numpy as np

from models.scorer import Scorer
from schemas.codecs import InvalidEvent, SchemaResolver
from schemas.hot_path import DecodedRows, decode_rows
from schemas.validation import FeatureValidator
from streams import metrics
from streams.kafka.publisher import Outbound
from streams.scoring.records import InboundMessage, PredictionEncoder, RecordBuilder, now_ms
from streams.scoring.tracing import Tracing
from streams.settings import ScoringSettings

_topic, _value, _event_time = attrgetter("topic"), attrgetter("value"), attrgetter("event_time")


@dataclass
class BatchResult:
    outputs: list[Outbound] = field(default_factory=list)
    scored: int = 0
    dead_lettered: int = 0


class Router(Protocol):
    """What the pipeline needs of a routing table (``streams.routing.router.Router`` implements it)."""
    def route(self, records: RecordBuilder, good: list, X: np.ndarray, received_ms: int) -> list[Outbound]: ...


class ScoringPipeline:
    """Turns a batch of raw input messages into prediction and dead-letter messages.

    ``resolver``: registry schema ids for Avro input (streams/scoring/registry.py); ``encoder`` and
    ``tracing``: handed to the ``RecordBuilder`` (Avro predictions, trace context of the outputs).
    """
    def __init__(self, settings: ScoringSettings, scorer: Scorer, route: str = "single", *,
                 resolver: SchemaResolver | None = None, encoder: PredictionEncoder | None = None,
                 tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.scorer = scorer
        self.route = route
        self.resolver = resolver
        self.router: Router | None = None  # set by streams.routing.watcher when a model registry is configured
        # Called with each batch and its decoded rows after scoring, on the scoring thread (the drift window:
        # streams/drift/lane.py), so what runs beside scoring decodes nothing again. Keep them cheap, never raising.
        self.listeners: list[Callable[[Sequence[InboundMessage], DecodedRows], None]] = []
        self.records = RecordBuilder(settings.worker_name, settings.dead_letter_topic, encoder=encoder,
                                     tracing=tracing)
        # Validated in the model's input dtype: 1e39 is a finite float64 but inf as a float32 input.
        self.validator = FeatureValidator(scorer.feature_names, input_dtype=getattr(scorer, "input_dtype", "float32"))
        self._in = {t: metrics.EVENTS_IN.labels(t) for t in settings.input_topics}
        self._out = metrics.PREDICTIONS_OUT.labels(scorer.name, scorer.version)
        metrics.MODEL_INFO.labels(scorer.name, scorer.version, scorer.sha256).set(1)

    def process(self, messages: Sequence[InboundMessage], received_ms: int | None = None) -> BatchResult:
        started = time.perf_counter()
        received_ms = received_ms or now_ms()
        result = BatchResult()
        topics = self.settings.input_topics
        # Inputs per topic; one set for the usual single-topic batch instead of a Counter (0.03 us/event).
        seen = set(map(_topic, messages))
        counts = {seen.pop(): len(messages)} if len(seen) == 1 else Counter(map(_topic, messages))
        # One format for the batch when it comes from one topic (the common case), else one per message.
        formats = (topics.get(next(iter(counts)), "auto") if len(counts) == 1
                   else [topics.get(m.topic, "auto") for m in messages])
        decoded = decode_rows(list(map(_value, messages)), formats, self.validator, self.settings.max_payload_bytes,
                              self.resolver)
        for pos, exc in decoded.errors:
            result.outputs.append(self._dead_letter(messages[pos], exc))
        for topic, count in counts.items():
            self._in.setdefault(topic, metrics.EVENTS_IN.labels(topic)).inc(count)
        if decoded.index:
            # Most batches have no bad input: then the messages line up with the events as they are.
            scored = messages if len(decoded.index) == len(messages) else list(map(messages.__getitem__, decoded.index))
            X, events = decoded.X, decoded.events
            router = self.router
            event_times = np.fromiter(map(_event_time, events), dtype=np.int64, count=len(events))
            if router is None:
                result.outputs.extend(self.predictions(scored, events, X, received_ms))
                self._out.inc(len(events))
            else:  # registry routing: versions, A/B, canary, shadow, bandit (streams/routing/router.py)
                result.outputs.extend(router.route(self.records, list(zip(scored, events, strict=True)), X,
                                                   received_ms))
            metrics.observe_many(metrics.EVENT_LATENCY, np.maximum(0, now_ms() - event_times) / 1000)
            result.scored = len(events)
        result.dead_lettered = len(messages) - result.scored
        for listener in self.listeners:
            listener(messages, decoded)
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    def predictions(self, msgs: Sequence[InboundMessage], events: list, X: np.ndarray, received_ms: int
                    ) -> list[Outbound]:
        """Predictions of the pipeline's own scorer on its own route (no registry routing)."""
        batch = self.scorer.predict_many(X)
        return self.records.predictions_from_columns(msgs, events, X, batch, self.scorer, route=self.route,
                                                     topic=self.settings.prediction_topic, received_ms=received_ms)

    def _dead_letter(self, msg: InboundMessage, exc: InvalidEvent) -> Outbound:
        metrics.DEAD_LETTERS.labels(msg.topic, exc.code).inc()
        return self.records.dead_letter(msg, exc)
