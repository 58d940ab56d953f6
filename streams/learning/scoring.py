"""Online scoring: feature events -> the served learner -> online predictions (same Prediction schema).

Runs in its own consumer group (``<app_id>-learner``) on a ``BatchEngine``, so it has the scoring
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.scorer import ScoreBatch
from online_learning.learner import Learner
from schemas.hot_path import decode_rows
from schemas.validation import FLOAT32_OVERFLOW, FeatureValidator
from streams.engines.batch import BatchEngine
from streams.kafka.publisher import Publisher
from streams.learning import metrics as lm
from streams.scoring.pipeline import BatchResult
from streams.scoring.records import InboundMessage, RecordBuilder, now_ms
from streams.scoring.registry import prediction_encoder, schema_resolver
from streams.settings import KafkaSettings, ScoringSettings, Settings

log = logging.getLogger(__name__)
ROUTE = "online"


@dataclass(frozen=True, slots=True)
class Serving:
    """What online scoring uses; replaced as a whole (one reference assignment) when a snapshot lands.

    It is the live learner seen as a ``Scorer``: named after the learner, versioned by the snapshot it
    descends from.
    """

    learner: Learner
    snapshot_version: int  # 0 before the first snapshot
    sha256: str  # of the snapshot artifact; "" before the first snapshot
    name: str  # the learner spec name: predictions are "from" it

    @property
    def version(self) -> str:
        return str(self.snapshot_version)

    @property
    def feature_names(self) -> list[str]:
        return list(self.learner.feature_names)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.learner.classes]

    def predict_many(self, X: np.ndarray) -> ScoreBatch:
        return self.learner.predict_many(pd.DataFrame(np.asarray(X, dtype=np.float64), columns=self.feature_names))

    def predict_one(self, features: Mapping[str, float]) -> dict[str, Any]:
        return self.learner.predict_one(features)


class ServingSlot:
    """Holds the current ``Serving``; the scoring lane reads ``current`` once per batch."""

    def __init__(self, serving: Serving) -> None:
        self.current = serving


class OnlinePipeline:
    """``process(messages) -> BatchResult`` like ``ScoringPipeline``, so a ``BatchEngine`` can run it."""

    def __init__(self, settings: Settings, slot: ServingSlot, validator: FeatureValidator, learner_name: str) -> None:
        self.settings = settings
        self.slot = slot
        self.validator = validator
        self.name = learner_name
        self.records = RecordBuilder(settings.worker_name, settings.dead_letter_topic,
                                     encoder=prediction_encoder(settings))
        self._resolver = schema_resolver(settings)  # registry schema ids, shared with the scoring lane
        self._columns = list(validator.feature_names)
        self._decoder = FeatureValidator(validator.feature_names, validator.allow_extra, input_dtype="float64")
        self._limit = FLOAT32_OVERFLOW if validator.input_dtype == "float32" else None
        self._out = lm.PREDICTIONS.labels(learner_name)
        self._invalid = lm.SKIPPED_EVENTS.labels(learner_name, "invalid_input")
        self._non_finite = lm.SKIPPED_EVENTS.labels(learner_name, "non_finite_prediction")

    def process(self, messages: Sequence[InboundMessage], received_ms: int | None = None) -> BatchResult:
        received_ms = received_ms or now_ms()
        result = BatchResult()
        topics = self.settings.input_topics
        formats = [topics.get(m.topic, "auto") for m in messages]
        # River learns from float64 features, so rows are decoded as float64; the float32 range check the
        # validator asks for is applied afterwards (the ONNX path dead-letters those inputs).
        decoded = decode_rows([m.value for m in messages], formats, self._decoder, self.settings.max_payload_bytes,
                              self._resolver)
        if decoded.errors:  # the ONNX path dead-letters them; a second dead letter would be noise
            self._invalid.inc(len(decoded.errors))
        X, index, events = decoded.X, decoded.index, decoded.events
        if self._limit is not None and len(index):
            fits = (np.abs(X) < self._limit).all(axis=1)
            if not fits.all():
                self._invalid.inc(int((~fits).sum()))
                keep = np.flatnonzero(fits).tolist()
                X, index, events = X[fits], [index[j] for j in keep], [events[j] for j in keep]
        if not index:
            return result
        good = list(zip([messages[i] for i in index], events, strict=True))
        serving = self.slot.current
        batch = serving.learner.predict_many(pd.DataFrame(X, columns=self._columns))
        result.outputs = self.records.predictions(
            good, X, batch, serving, route=ROUTE, topic=self.settings.online_prediction_topic,
            received_ms=received_ms, on_unencodable=lambda _msg: self._non_finite.inc(),  # a diverged model
        )
        result.scored = len(result.outputs)
        self._out.inc(result.scored)
        return result


class OnlineScoringLane(BatchEngine):
    """A ``BatchEngine`` in the learner's own consumer group, publishing online predictions."""

    def __init__(self, kafka: KafkaSettings, scoring: ScoringSettings, pipeline: OnlinePipeline,
                 publisher: Publisher) -> None:
        super().__init__(kafka, scoring, pipeline, publisher)  # type: ignore[arg-type]
        self.group_id = f"{kafka.app_id}-learner"

    def _process(self, messages: list) -> None:
        super()._process(messages)
        # Yield the GIL to the OS scheduler once per batch. A busy thread that only releases the GIL briefly
        # (numpy, librdkafka calls) can starve a CPU-bound thread waiting for it: measured, 4000 Hoeffding-tree
        # learns on a background thread took 44-62 s instead of 0.3 s next to a scoring loop, 0.1 s with this.
        time.sleep(0)
