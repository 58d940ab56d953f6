"""The retrain service (`streamscore retrain`): retrain requests in, gated promotions out.

    retrain-requests ──▶ [group <app_id>-retrain] request ─▶ dataset (archive ⋈ labels) ─▶ train ─▶ register
        challenger ─▶ route shadow ─▶ commit the request
    predictions + predictions-shadow + labels ──▶ gate (streams.retrain.gate) ──▶ promote | reject
    every step ──▶ model-lifecycle (one partition; also this service's memory across restarts)

At-least-once: a request's offset is committed only after its lifecycle events are acknowledged; a request
redelivered after a crash finds its dataset (content-addressed) and its candidate (registered with that dataset)
and goes on from there. At most one candidate per model is in flight: later requests for it are skipped (with the
reason), as are requests within ``retrain_cooldown_s`` of the last retrain and requests for a champion that has
been replaced since the alert (stale). Nothing here runs inside the scoring worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from pydantic import ValidationError

from datastore.storage import open_storage
from models.registry import ModelRegistry, RegistryError
from schemas.drift import RetrainRequest
from schemas.drift import decode as decode_drift
from schemas.labels import InvalidLabel, decode_label
from streams.kafka import clients
from streams.kafka.topics import ensure_topics
from streams.retrain import lifecycle
from streams.retrain.dataset import DataNotArchived, TooFewLabels, TrainingDataset, build, load_xy
from streams.retrain.gate import GateConfig, GateResult, evaluate
from streams.retrain.lifecycle import LifecycleEvent, LoopState
from streams.retrain.trainer import finish, start_shadow, train_candidate
from streams.routing.watcher import ensure_registry_topic, registry_for
from streams.settings import Settings

log = logging.getLogger(__name__)
GATE_LOOKBACK_MS = 60_000  # champion predictions are read from this long before the shadow started (clock skew)


class LifecycleError(RuntimeError):
    """The lifecycle topic did not acknowledge an event: the step is not done (its input is not committed)."""


class Tail:
    """Every partition of one topic from a start (beginning, or a timestamp), read incrementally, no group."""
    def __init__(self, settings: Settings, topic: str, since_ms: int | None = None) -> None:
        self.settings, self.topic, self.since_ms = settings, topic, since_ms
        self.consumer: Consumer | None = None

    def _open(self) -> bool:
        c = clients.standalone_consumer(self.settings.kafka, f"{self.settings.app_id}-retrain-reader",
                                        **{"fetch.wait.max.ms": 100})
        meta = c.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            c.close()
            return False
        parts = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        if self.since_ms is not None:
            found = c.offsets_for_times([TopicPartition(self.topic, p, self.since_ms) for p in meta.partitions],
                                        timeout=10)
            parts = [TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                     for tp in found]
        c.assign(parts)
        self.consumer = c
        return True

    def poll(self, timeout: float = 0.05) -> list[Message]:
        if self.consumer is None and not self._open():
            return []
        assert self.consumer is not None
        out: list[Message] = []
        while batch := clients.records(self.consumer, 5000, timeout, where=f"reading {self.topic}"):
            out.extend(batch)
        return out

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class Labels:
    """Labels by event id (class index, arrival order) from the labels topic."""
    def __init__(self, settings: Settings, classes: list[str]) -> None:
        self.tail = Tail(settings, settings.labels_topic)
        self.classes = classes
        self.by_id: dict[str, tuple[int, int]] = {}
        self.invalid = 0

    def poll(self) -> int:
        n = 0
        for msg in self.tail.poll():
            try:
                lab = decode_label(msg.value())
            except InvalidLabel:
                self.invalid += 1
                continue
            if isinstance(lab.label, str):
                if lab.label not in self.classes:
                    self.invalid += 1
                    continue
                y = self.classes.index(lab.label)
            else:
                y = int(lab.label >= 0.5)
            if lab.event_id not in self.by_id:  # the first label of an event counts (a re-sent one changes nothing)
                self.by_id[lab.event_id] = (y, len(self.by_id))
                n += 1
        return n

    def classes_of(self) -> dict[str, int]:
        return {eid: y for eid, (y, _seq) in self.by_id.items()}


@dataclass
class Candidate:
    """A challenger in shadow, waiting for its gate (and, in manual mode, an approval)."""
    name: str
    version: str
    champion_version: str
    started_ms: int
    ids: dict[str, str | None]
    predictions: Tail
    shadow: Tail
    champion_scores: dict[str, float] = field(default_factory=dict)
    challenger_scores: dict[str, float] = field(default_factory=dict)
    result: GateResult | None = None

    def close(self) -> None:
        self.predictions.close()
        self.shadow.close()


class RetrainService:
    def __init__(self, settings: Settings, registry: ModelRegistry | None = None) -> None:
        self.s = settings
        self.by = f"retrain@{socket.gethostname()}-{os.getpid()}"
        ensure_registry_topic(settings)
        single = settings.model_copy(update={"partitions": 1})
        ensure_topics(single, [settings.retrain_lifecycle_topic, settings.labels_topic])
        ensure_topics(settings, [settings.retrain_topic, settings.prediction_topic, settings.shadow_topic])
        self.registry = registry or registry_for(settings)
        self.storage = open_storage(settings.data_path, settings.data_store_url)
        self.work_dir = settings.state_dir / "retrain" / "candidates"
        self.gate_cfg = GateConfig(min_samples=settings.retrain_gate_min_samples,
                                   min_improvement=settings.retrain_gate_min_improvement,
                                   alpha=settings.retrain_gate_alpha, resamples=settings.retrain_gate_resamples,
                                   seed=settings.retrain_gate_seed)
        self.producer = clients.producer(settings.kafka, **{"linger.ms": 0})
        self.state = LoopState()
        self.lifecycle_tail = Tail(settings, settings.retrain_lifecycle_topic)
        self.labels: Labels | None = None
        self.candidates: dict[str, Candidate] = {}
        self.stopping = False
        self.consumer = clients.consumer(settings.kafka, f"{settings.app_id}-retrain", background=True,
                                         **{"max.poll.interval.ms": 900_000})  # a training run may take minutes
        self.requests_seen = 0

    # --- lifecycle -------------------------------------------------------------------------------
    def emit(self, stage: str, name: str, **fields: Any) -> LifecycleEvent:
        event = LifecycleEvent(stage=stage, model_name=name, at_ms=lifecycle.now_ms(), by=self.by, **fields)
        errors: list[KafkaError] = []
        self.producer.produce(self.s.retrain_lifecycle_topic, lifecycle.encode(event), name.encode(),
                              on_delivery=lambda err, _m: errors.append(err) if err else None)
        if self.producer.flush(15) or errors:
            raise LifecycleError(f"lifecycle topic {self.s.retrain_lifecycle_topic!r} did not take {stage} of "
                                 f"{name}: {errors or 'timed out'}")
        self.state.apply(event)
        log.info("%s %s%s %s", stage, name, f"@{event.model_version}" if event.model_version else "",
                 event.reason)
        return event

    def replay_lifecycle(self) -> None:
        """Fold the lifecycle topic so far: in-flight candidates, approvals, handled requests, cooldowns."""
        for msg in self.lifecycle_tail.poll(timeout=0.5):
            try:
                self.state.apply(lifecycle.decode(msg.value()))
            except ValidationError:
                log.warning("lifecycle offset %d does not decode; ignored", msg.offset())

    def _labels(self) -> Labels:
        if self.labels is None:
            self.labels = Labels(self.s, list(self.registry.resolve(self.s.registry_model or self._any_model())
                                              .classes))
        return self.labels

    def _any_model(self) -> str:
        names = self.registry.reload().model_names()
        if not names:
            raise RegistryError("the registry holds no model to retrain")
        return names[0]

    # --- requests --------------------------------------------------------------------------------
    def handle(self, req: RetrainRequest) -> None:
        """Take one request as far as the shadow (or a skip/rejection); returns when its outcome is on the topic."""
        name = req.model_name
        ids = {"request_id": req.request_id, "alert_id": req.alert_id, "data_version": req.data_version}
        if req.request_id in self.state.handled:
            log.info("request %s already handled; skipped", req.request_id)
            return
        self.emit("request_received", name, champion_version=req.model_version, reason=req.reason, **ids)
        self.registry.reload()
        try:
            champion = self.registry.resolve(name)
        except RegistryError as exc:
            self.emit("request_skipped", name, reason=f"not in the registry: {exc}", **ids)
            return
        skip = None
        if champion.version != req.model_version:
            skip = f"stale: the alert was on {name}@{req.model_version}, the champion is now {champion.version}"
        elif name in self.state.in_flight and self.state.in_flight[name].request_id != req.request_id:
            skip = f"a candidate is in flight: {name}@{self.state.in_flight[name].model_version}"
        else:
            last = self.state.last_attempt.get(name)
            if last is not None and last[0] != req.request_id and \
                    lifecycle.now_ms() - last[1] < self.s.retrain_cooldown_s * 1000:
                skip = (f"cooldown: the last retrain of {name} began {(lifecycle.now_ms() - last[1]) / 1000:.0f} s "
                        f"ago (< STREAMSCORE_RETRAIN_COOLDOWN_S={self.s.retrain_cooldown_s:g})")
        if skip is not None:
            self.emit("request_skipped", name, champion_version=champion.version, reason=skip, **ids)
            return
        ds = self._dataset(req, ids)
        if ds is None:
            return
        self.emit("dataset_built", name, champion_version=champion.version, dataset_version=ds.inputs_version,
                  training_dataset=ds.id, reason=f"{len(ds.rows)} labelled rows of {ds.inputs} inputs",
                  detail={"rows": len(ds.rows), "inputs": ds.inputs, "positives": sum(y for _e, y in ds.rows)},
                  **ids)
        ids |= {"dataset_version": ds.inputs_version, "training_dataset": ds.id}
        X, y = load_xy(self.storage, ds)
        started = time.perf_counter()
        mv, trained = train_candidate(self.registry, ds, X, y, self.work_dir)
        self.emit("candidate_trained", name, model_version=mv.version, champion_version=champion.version,
                  reason=f"{'trained' if trained else 'found (trained before)'} in "
                  f"{time.perf_counter() - started:.1f} s", detail={f"held_out_{k}": v for k, v in mv.metrics.items()},
                  **ids)
        start_shadow(self.registry, self.s.retrain_route_topic, name)
        self.emit("shadow_started", name, model_version=mv.version, champion_version=champion.version,
                  reason=f"route {self.s.retrain_route_topic!r}: champion {champion.version} publishes, "
                  f"{mv.version} in shadow ({self.s.shadow_topic})", **ids)

    def _dataset(self, req: RetrainRequest, ids: dict[str, str]) -> TrainingDataset | None:
        """The request's training dataset, waiting (up to retrain_data_wait_s) for its archive segments and labels."""
        name = req.model_name
        mv = self.registry.resolve(name)
        deadline = time.monotonic() + self.s.retrain_data_wait_s
        while True:
            labels = self._labels()
            labels.poll()
            try:
                return build(self.storage, req, labels.classes_of(), features=mv.features, classes=mv.classes,
                             labels_topic=self.s.labels_topic, min_rows=self.s.retrain_min_rows)
            except (DataNotArchived, TooFewLabels) as exc:
                if time.monotonic() >= deadline or self.stopping:
                    self.emit("rejected", name, champion_version=mv.version,
                              reason=f"no training data after {self.s.retrain_data_wait_s:g} s: {exc}", **ids)
                    return None
            time.sleep(min(1.0, self.s.retrain_poll_s * 2))

    # --- gate ------------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Candidates in flight according to the lifecycle topic (after a restart) get their gate back."""
        for name, e in self.state.in_flight.items():
            if name not in self.candidates and e.model_version is not None and e.stage != "candidate_trained":
                self._watch(e)

    def _watch(self, e: LifecycleEvent) -> None:
        since = e.at_ms - GATE_LOOKBACK_MS
        ids = {k: getattr(e, k) for k in ("request_id", "alert_id", "data_version", "dataset_version",
                                          "training_dataset")}
        assert e.model_version is not None and e.champion_version is not None
        self.candidates[e.model_name] = Candidate(
            e.model_name, e.model_version, e.champion_version, e.at_ms, ids,
            Tail(self.s, self.s.prediction_topic, since), Tail(self.s, self.s.shadow_topic, since))

    def gate_step(self) -> None:
        if not self.candidates:
            return
        labels = self._labels()
        labels.poll()
        for name, c in list(self.candidates.items()):
            self._read_scores(c)
            if c.result is None:
                paired = sorted((labels.by_id[eid][1], eid) for eid in c.challenger_scores
                                if eid in c.champion_scores and eid in labels.by_id)
                eids = [eid for _seq, eid in paired]
                y = np.array([labels.by_id[eid][0] for eid in eids], dtype=np.float64)
                result = evaluate(np.array([c.champion_scores[e] for e in eids]),
                                  np.array([c.challenger_scores[e] for e in eids]), y, self.gate_cfg)
                if not result.decided:
                    if lifecycle.now_ms() - c.started_ms > self.s.retrain_gate_max_wait_s * 1000:
                        # the counts tell why: no challenger prediction at all means no worker applied the shadow
                        # route (or no event came); no pair despite both means the labels are missing
                        self._end(c, False, f"gate timed out after {self.s.retrain_gate_max_wait_s:g} s: "
                                  f"{result.reason} (read: {len(c.champion_scores)} champion predictions, "
                                  f"{len(c.challenger_scores)} challenger predictions, {len(labels.by_id)} labels)")
                    continue
                c.result = result
                detail = {k: v for k, v in result.as_dict().items() if k != "reason"}
                self.emit("gate_result", name, model_version=c.version, champion_version=c.champion_version,
                          reason=("passed: " if result.passed else "failed: ") + result.reason, detail=detail,
                          **c.ids)
                if not result.passed:
                    self._end(c, False, result.reason)
                    continue
                if self.s.retrain_approval == "manual":
                    self.emit("awaiting_approval", name, model_version=c.version, champion_version=c.champion_version,
                              reason=f"run `streamscore models approve {name} {c.version}`", **c.ids)
            if c.result is not None and c.result.passed and (
                    self.s.retrain_approval == "auto" or (name, c.version) in self.state.approved):
                self._end(c, True, c.result.reason)

    def _read_scores(self, c: Candidate) -> None:
        for m in c.predictions.poll():
            self._score(m, c.champion_scores, c.name, c.champion_version)
        for m in c.shadow.poll():
            self._score(m, c.challenger_scores, c.name, c.version)

    @staticmethod
    def _score(msg: Message, book: dict[str, float], name: str, version: str) -> None:
        try:  # JSON predictions; Avro predictions (avro_predictions) are not read by the gate yet
            p = orjson.loads(msg.value())
        except orjson.JSONDecodeError:
            return
        if isinstance(p, dict) and p.get("model_name") == name and p.get("model_version") == version:
            book.setdefault(p["event_id"], float(p["score"]))

    def _end(self, c: Candidate, promote: bool, reason: str) -> None:
        finish(self.registry, self.s.retrain_route_topic, c.name, c.version, promote)
        self.emit("promoted" if promote else "rejected", c.name, model_version=c.version,
                  champion_version=c.champion_version, reason=reason, **c.ids)
        c.close()
        del self.candidates[c.name]

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        self.replay_lifecycle()
        self._restore()
        self.consumer.subscribe([self.s.retrain_topic])
        log.info("retrain service up: requests %s (group %s-retrain), lifecycle %s, approval %s",
                 self.s.retrain_topic, self.s.app_id, self.s.retrain_lifecycle_topic, self.s.retrain_approval)
        try:
            while not self.stopping:
                for msg in clients.records(self.consumer, 1, self.s.retrain_poll_s, where="retrain requests"):
                    self._request(msg)
                self.replay_lifecycle()  # approvals (and other writers' events)
                self._restore()
                self.gate_step()
        finally:
            self.close()
        return 0

    def _request(self, msg: Message) -> None:
        self.requests_seen += 1
        try:
            req = decode_drift(RetrainRequest, msg.value())
        except (ValidationError, ValueError) as exc:
            log.error("retrain request at %s[%d]@%d does not decode (%s); skipped", msg.topic(), msg.partition(),
                      msg.offset(), str(exc).splitlines()[0])
        else:
            self.handle(req)
        # at-least-once: only now that its outcome is acknowledged on the lifecycle topic
        self.consumer.commit(offsets=[TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)],
                             asynchronous=False)

    def stop(self, *_args: object) -> None:
        self.stopping = True

    def close(self) -> None:
        for c in self.candidates.values():
            c.close()
        if self.labels is not None:
            self.labels.tail.close()
        self.lifecycle_tail.close()
        self.consumer.close()
        self.producer.flush(10)


def run_service(settings: Settings) -> int:
    service = RetrainService(settings)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    return service.run()


def approve(settings: Settings, name: str, version: str) -> LifecycleEvent:
    """Publish the approval of ``name@version`` on the lifecycle topic (the service promotes once its gate passed)."""
    single = settings.model_copy(update={"partitions": 1})
    ensure_topics(single, [settings.retrain_lifecycle_topic])
    event = LifecycleEvent(stage="approved", model_name=name, model_version=version, at_ms=lifecycle.now_ms(),
                           by=f"cli@{socket.gethostname()}", reason="approved by hand")
    producer = clients.producer(settings.kafka, **{"linger.ms": 0})
    errors: list[KafkaError] = []
    producer.produce(settings.retrain_lifecycle_topic, lifecycle.encode(event), name.encode(),
                     on_delivery=lambda err, _m: errors.append(err) if err else None)
    if producer.flush(15) or errors:
        raise LifecycleError(f"lifecycle topic {settings.retrain_lifecycle_topic!r} did not take the approval: "
                             f"{errors or 'timed out'}")
    return event
