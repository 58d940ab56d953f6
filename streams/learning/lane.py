"""Online learning beside ONNX scoring: River learners that keep learning from a labels topic.

    features ──▶ [online scoring lane, group <app>-learner] ──▶ online-predictions ─┐
        │                                                                         │ join window
        └──────────────────────────────▶ [trainer: owner of the 1-partition  ◀────┘ (by event id)
    labels ──────────────────────────────▶  labels topic, group <app>-learner-labels]
                                                   │
                                                   ├──▶ snapshots/<learner>/vNNNNNN (immutable)
                                                   └──▶ learner-metrics

Enabled by ``STREAMSCORE_LEARNER=<spec>`` (see ``online_learning.specs``); unset, nothing here runs
and the ONNX path is untouched. Every worker scores with the newest snapshot it has loaded; the one
worker holding the labels partition also learns and writes the snapshots (docs/online_learning.md).
The worker serves ``/learner`` (JSON status) beside ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import faust
from faust.types import AppT
from mode import Service

from online_learning.learner import Learner
from online_learning.snapshots import SnapshotStore
from online_learning.specs import get_spec
from schemas.validation import FeatureValidator
from streams.kafka import clients
from streams.kafka.publisher import Publisher
from streams.kafka.topics import ensure_topics
from streams.learning.scoring import OnlinePipeline, OnlineScoringLane, Serving, ServingSlot
from streams.learning.trainer import Trainer
from streams.settings import Settings

log = logging.getLogger(__name__)


class LabelsTopicError(RuntimeError):
    pass


def ensure_learning_topics(settings: Settings) -> None:
    """Create the labels (ONE partition), online-prediction and learner-metrics topics if missing.

    One labels partition is what makes exactly one worker the learner (the group gives it to one
    member); a labels topic created elsewhere with more partitions would split learning, so it is refused.
    """
    single = settings.model_copy(update={"partitions": 1})
    ensure_topics(single, [settings.labels_topic, settings.learner_metrics_topic])
    ensure_topics(settings, [settings.online_prediction_topic])
    meta = clients.admin(settings.kafka).list_topics(settings.labels_topic, timeout=15)
    n = len(meta.topics[settings.labels_topic].partitions)
    if n != 1:
        raise LabelsTopicError(f"labels topic {settings.labels_topic!r} has {n} partitions; online learning needs "
                               "exactly 1 (one learning owner). Use a new topic, see docs/online_learning.md")


class Learning:
    """The capability's objects: serving slot, online scoring lane, trainer, their producer."""

    def __init__(self, settings: Settings, default_features: tuple[str, ...]) -> None:
        self.settings = settings
        self.spec = get_spec(settings.learner or "")
        features = tuple(settings.learner_features or default_features)
        classes = settings.learner_classes if self.spec.task == "binary" else None
        validator = FeatureValidator(features)
        # the deployment key (registry and snapshots share it); on Kafka without one the worker stops here
        self.store = SnapshotStore(settings.snapshot_path, self.spec.name, settings.signing_key_bytes())
        self.slot = ServingSlot(Serving(Learner(self.spec, features, classes=classes), 0, "", self.spec.name))
        self.publisher = Publisher(settings.kafka)
        self.trainer = Trainer(settings, self.spec, validator, self.store, self.slot, self.publisher)
        pipeline = OnlinePipeline(settings, self.slot, validator, self.spec.name)
        self.lane = OnlineScoringLane(settings.kafka, settings.scoring, pipeline, self.publisher)

    def start(self) -> None:
        ensure_learning_topics(self.settings)
        self.trainer.load_latest()
        self.trainer.start()
        self.lane.start()

    def stop(self) -> None:
        self.trainer.stop()  # first: its final snapshot publishes a metrics record
        self.lane.stop()
        self.publisher.close()
        self.slot.current.learner.close()

    def status(self) -> dict[str, Any]:
        return {**self.trainer.status(), "scoring_assigned": self.lane.assigned.is_set()}

    def health(self) -> dict[str, Any]:
        trainer = self.trainer._thread is not None and self.trainer._thread.is_alive()
        scoring = self.lane.alive
        return {"healthy": trainer and scoring, "trainer_alive": trainer, "online_scoring_alive": scoring}


class _LearningService(Service):
    def __init__(self, learning: Learning, **kwargs: object) -> None:
        self.learning = learning
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.loop.run_in_executor(None, self.learning.start)

    async def on_stop(self) -> None:
        await self.loop.run_in_executor(None, self.learning.stop)


def register_learning(app: AppT, settings: Settings, feature_names: Sequence[str]) -> Learning | None:
    """Wire online learning into the app when ``settings.learner`` is set; otherwise do nothing."""
    if not settings.learner:
        return None
    learning = Learning(settings, tuple(feature_names))
    app.service(_LearningService(learning))

    @app.page("/learner")
    async def learner_status(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json(learning.status())

    log.info("online learning with %s (%s)", learning.spec.name, learning.spec.description)
    return learning
