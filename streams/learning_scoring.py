"""Online scoring: feature events -> the served learner -> online predictions (same Prediction schema).

Runs in its own consumer group (``<app_id>-learner``) on a ``BatchLane``, so it has the scoring
path's at-least-once contract (offsets committed only once the predictions are acknowledged) and
shares nothing with the ONNX agent: with ``STREAMSCORE_LEARNER`` unset it does not exist.

Each prediction carries ``model_name`` = the learner name, ``model_version`` = the snapshot version
the served model descends from, ``model_sha256`` = that snapshot's artifact sha256 (the learning owner
keeps learning after a snapshot, so its model is "version N plus the labels learned since"), and
``route`` = ``online``. ``input_hash`` is computed exactly as on the ONNX path (float32 row in
signature order), so both predictions of one event can be matched by input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from online_learning.learner import Learner
from schemas.codecs import InvalidEvent, decode_feature_event, prediction_to_json_bytes
from schemas.validation import FeatureValidator, input_hash
from streams import learning_metrics as lm
from streams.batch_lane import BatchLane
from streams.pipeline import BatchResult, InboundMessage
from streams.publisher import Outbound, Publisher
from streams.settings import Settings

log = logging.getLogger(__name__)
ROUTE = "online"


@dataclass(frozen=True, slots=True)
class Serving:
    """What online scoring uses; replaced as a whole (one reference assignment) when a snapshot lands."""

    learner: Learner
    version: int  # 0 before the first snapshot
    sha256: str  # of the snapshot artifact; "" before the first snapshot


class ServingSlot:
    """Holds the current ``Serving``; the scoring lane reads ``current`` once per batch."""

    def __init__(self, serving: Serving) -> None:
        self.current = serving


class OnlinePipeline:
    """``process(messages) -> BatchResult`` like ``ScoringPipeline``, so a ``BatchLane`` can run it."""

    def __init__(self, settings: Settings, slot: ServingSlot, validator: FeatureValidator, learner_name: str) -> None:
        self.settings = settings
        self.slot = slot
        self.validator = validator
        self.name = learner_name
        self.worker = settings.worker_name
        self._columns = list(validator.feature_names)
        self._out = lm.PREDICTIONS.labels(learner_name)
        self._invalid = lm.SKIPPED_EVENTS.labels(learner_name, "invalid_input")
        self._non_finite = lm.SKIPPED_EVENTS.labels(learner_name, "non_finite_prediction")

    def process(self, messages: Sequence[InboundMessage], received_ms: int | None = None) -> BatchResult:
        received_ms = received_ms or time.time_ns() // 1_000_000
        result = BatchResult()
        formats, max_bytes = self.settings.input_topics, self.settings.max_payload_bytes
        good, rows = [], []
        for msg in messages:
            try:
                event = decode_feature_event(msg.value, formats.get(msg.topic, "auto"), max_bytes)
                rows.append(self.validator.row(event))
            except InvalidEvent:  # the ONNX path dead-letters it; a second dead letter would be noise
                self._invalid.inc()
                continue
            good.append((msg, event))
        if not rows:
            return result
        serving = self.slot.current
        X = np.asarray(rows, dtype=np.float64)
        batch = serving.learner.predict_many(pd.DataFrame(X, columns=self._columns))
        hashes = np.asarray(X, dtype="<f4")
        scored_at = time.time_ns() // 1_000_000
        latency_ms = float(scored_at - received_ms)
        classes, version = serving.learner.classes, str(serving.version)
        scores, labels = batch.scores.tolist(), batch.labels.tolist()
        probabilities = batch.probabilities.tolist()
        for i, (msg, event) in enumerate(good):
            record = {
                "event_id": event.event_id, "entity_id": event.entity_id, "event_time": event.event_time,
                "model_name": self.name, "model_version": version, "model_sha256": serving.sha256,
                "score": scores[i], "label": str(labels[i]),
                "probabilities": dict(zip(classes, probabilities[i], strict=True)),
                "input_hash": input_hash(hashes[i].tobytes()), "scored_at": scored_at, "latency_ms": latency_ms,
                "route": ROUTE, "worker": self.worker, "source_topic": msg.topic,
                "source_partition": msg.partition, "source_offset": msg.offset,
                "schema_version": event.schema_version,
            }
            try:
                value = prediction_to_json_bytes(record)
            except ValueError:  # a diverged model; publishing NaN would break every consumer
                self._non_finite.inc()
                continue
            key = msg.key if msg.key is not None else event.event_id.encode()
            headers = [("event_id", event.event_id.encode()), ("model_version", version.encode()),
                       ("route", ROUTE.encode())]
            result.outputs.append(Outbound(self.settings.online_prediction_topic, key, value, headers))
        result.scored = len(result.outputs)
        self._out.inc(result.scored)
        return result


class OnlineScoringLane(BatchLane):
    """A ``BatchLane`` in the learner's own consumer group, publishing online predictions."""

    def __init__(self, settings: Settings, pipeline: OnlinePipeline, publisher: Publisher) -> None:
        super().__init__(settings, pipeline, publisher)  # type: ignore[arg-type]
        self.group_id = f"{settings.app_id}-learner"

    def _process(self, messages: list) -> None:
        super()._process(messages)
        # Yield the GIL to the OS scheduler once per batch. A busy thread that only releases the GIL briefly
        # (numpy, librdkafka calls) can starve a CPU-bound thread waiting for it: measured, 4000 Hoeffding-tree
        # learns on a background thread took 44-62 s instead of 0.3 s next to a scoring loop, 0.1 s with this.
        time.sleep(0)
