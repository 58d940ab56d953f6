"""The scoring flow for one micro-batch, free of any transport: validate -> score -> build outputs.

Both lanes (the Faust agent and the confluent-kafka batch lane) hand raw messages to
``ScoringPipeline.process`` and publish what it returns, so the semantics cannot drift apart.
Bad input never raises: it becomes a dead letter carrying the reason and the original bytes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models.onnx_scorer import OnnxScorer, ScoreBatch
from schemas.codecs import InvalidEvent, decode_feature_event, encode_dead_letter, prediction_to_json_bytes
from schemas.records import DeadLetter
from schemas.validation import FeatureValidator, input_hash
from streams import metrics
from streams.publisher import Headers, Outbound
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.routing import Router


@dataclass(slots=True)
class InboundMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: Headers | None = None


@dataclass
class BatchResult:
    outputs: list[Outbound] = field(default_factory=list)
    scored: int = 0
    dead_lettered: int = 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _passthrough_headers(headers: Headers | None) -> Headers:
    """Keep the caller's trace context on the outputs (W3C traceparent and our request id)."""
    if not headers:
        return []
    return [(k, v) for k, v in headers if k in ("traceparent", "tracestate", "request_id")]


class ScoringPipeline:
    """Turns a batch of raw input messages into prediction and dead-letter messages."""

    def __init__(self, settings: Settings, scorer: OnnxScorer, route: str = "single") -> None:
        self.settings = settings
        self.scorer = scorer
        self.route = route
        self.router: Router | None = None  # set by streams.registry_watch when a model registry is configured
        self.validator = FeatureValidator(scorer.feature_names)
        self.worker = settings.worker_name
        self._in = {t: metrics.EVENTS_IN.labels(t) for t in settings.input_topics}
        self._out = metrics.PREDICTIONS_OUT.labels(scorer.name, scorer.version)
        metrics.MODEL_INFO.labels(scorer.name, scorer.version, scorer.sha256).set(1)

    def process(self, messages: Sequence[InboundMessage], received_ms: int | None = None) -> BatchResult:
        started = time.perf_counter()
        received_ms = received_ms or _now_ms()
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
            if router is None:
                result.outputs.extend(self._predictions(good, X, received_ms))
                self._out.inc(len(rows))
            else:  # registry routing: versions, A/B, canary, shadow, bandit (streams/routing.py)
                result.outputs.extend(router.route(self, good, X, received_ms))
            result.scored = len(rows)
        result.dead_lettered = len(messages) - result.scored
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    def _predictions(self, good: list, X: np.ndarray, received_ms: int, scorer: OnnxScorer | None = None,
                     route: str | None = None, topic: str | None = None, batch: ScoreBatch | None = None,
                     ) -> list[Outbound]:
        """Prediction messages for ``good``; the router passes its own scorer, route name, topic and scores."""
        scorer = scorer or self.scorer
        route = route or self.route
        batch = batch if batch is not None else scorer.predict_many(X)
        out_topic = topic or self.settings.prediction_topic
        scored_at = _now_ms()
        latency_ms = float(scored_at - received_ms)
        classes = [str(c) for c in scorer.classes]
        probabilities = batch.probabilities.tolist()
        scores = batch.scores.tolist()
        labels = [str(label) for label in batch.labels]
        version_header = scorer.version.encode()
        event_times = np.fromiter((event.event_time for _, event in good), dtype=np.int64, count=len(good))
        metrics.observe_many(metrics.EVENT_LATENCY, np.maximum(0, scored_at - event_times) / 1000)
        outputs = []
        for i, (msg, event) in enumerate(good):
            record = {
                "event_id": event.event_id,
                "entity_id": event.entity_id,
                "event_time": event.event_time,
                "model_name": scorer.name,
                "model_version": scorer.version,
                "model_sha256": scorer.sha256,
                "score": scores[i],
                "label": labels[i],
                "probabilities": dict(zip(classes, probabilities[i], strict=True)),
                "input_hash": input_hash(X[i].tobytes()),
                "scored_at": scored_at,
                "latency_ms": latency_ms,
                "route": route,
                "worker": self.worker,
                "source_topic": msg.topic,
                "source_partition": msg.partition,
                "source_offset": msg.offset,
                "schema_version": event.schema_version,
            }
            headers = [
                ("event_id", event.event_id.encode()),
                ("model_version", version_header),
                ("route", route.encode()),
                *_passthrough_headers(msg.headers),
            ]
            key = msg.key if msg.key is not None else event.event_id.encode()
            outputs.append(Outbound(out_topic, key, prediction_to_json_bytes(record), headers))
        return outputs

    def _dead_letter(self, msg: InboundMessage, exc: InvalidEvent) -> Outbound:
        metrics.DEAD_LETTERS.labels(msg.topic, exc.code).inc()
        letter = DeadLetter(
            event_id=exc.event_id,
            reason_code=exc.code,
            reason=exc.reason,
            source_topic=msg.topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
            original_key=msg.key,
            original_value=msg.value or b"",
            failed_at=_now_ms(),
            worker=self.worker,
        )
        headers = [("reason_code", exc.code.encode()), *_passthrough_headers(msg.headers)]
        return Outbound(self.settings.dead_letter_topic, msg.key, encode_dead_letter(letter), headers)
