"""The learning owner: labels -> join -> prequential metrics -> learn -> versioned snapshots.

Every worker with a learner runs a ``Trainer`` in the consumer group ``<app_id>-learner-labels``.
The labels topic has exactly one partition, so exactly one member holds it: that worker is the
*learning owner*; the others stand by and serve the newest snapshot they find.

What "learned" means is fixed by the snapshots, never by the group's committed offsets. When a
worker becomes the owner (start, restart, failover) or sees a version it did not write (a rollback),
it loads the newest snapshot (sha256 and signature verified), seeks the labels partition to the snapshot's
``next_offsets``, and keeps it paused while it rebuilds the join window. Labels after those offsets are
learned again on top of the snapshot's model, labels before them never: nothing is learned twice in a
lineage and nothing is skipped. Offsets are committed to the group only after a snapshot, for lag
dashboards.

Each label batch: decode (invalid -> counted) -> take the joined features and served prediction
(missing -> one catch-up read of the feature/prediction topics, then late/duplicate/unknown ->
counted) -> update the prequential metrics with the served prediction -> ``learn_many``.

A newer snapshot that does not verify (unsigned, signed with another key, a pickle naming a class
outside the allowlist) is never unpickled: the watch logs it once, lists it in ``status()["refused_snapshots"]``
and keeps serving the version it has. An owner that must write on top of it cannot (the version is
taken), so its next snapshot stops learning with ``error`` set: the lineage is not forked around it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from online_learning.join import JoinStore
from online_learning.learner import Learner
from online_learning.prequential import PrequentialMetrics
from online_learning.snapshots import SnapshotConflict, SnapshotError, SnapshotMeta, SnapshotStore, dumps_state
from online_learning.specs import LearnerSpec
from schemas.labels import InvalidLabel, LearnedRange, ResumeOffset, decode_label, encode_learner_metrics
from schemas.validation import FeatureValidator
from streams.kafka import clients
from streams.kafka.publisher import Outbound, Publisher
from streams.learning import metrics as lm
from streams.learning.join import JoinReader
from streams.learning.scoring import Serving, ServingSlot
from streams.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, int]
OUTCOMES = ("learned", "unknown", "late", "duplicate", "invalid")


class Trainer:
    def __init__(self, settings: Settings, spec: LearnerSpec, validator: FeatureValidator, store: SnapshotStore,
                 slot: ServingSlot, publisher: Publisher) -> None:
        self.settings = settings
        self.spec = spec
        self.validator = validator
        self.features = list(validator.feature_names)
        self.classes = list(settings.learner_classes) if spec.task == "binary" else []
        self.store = store
        self.slot = slot
        self.publisher = publisher
        self.group_id = f"{settings.app_id}-learner-labels"
        self.join = JoinStore(settings.join_ttl_s, settings.join_max_size)
        self.stopping = threading.Event()
        self.labels_joined = threading.Event()  # first assignment seen (possibly empty: a standby)
        self.owner = False
        self.rebuilding = False
        self.error: BaseException | None = None
        # the model the owner trains and the snapshot it descends from
        self.learner: Learner = slot.current.learner
        self.metrics = PrequentialMetrics(spec.task)
        self.base: SnapshotMeta | None = None
        # accounts since the base snapshot
        self._ranges: dict[Key, list[int]] = {}
        self._next: dict[Key, int] = {}
        self._counts: Counter[str] = Counter()
        self._last_snapshot = time.monotonic()
        self._consumer: Consumer | None = None
        self._partitions: list[TopicPartition] = []
        self._reader: JoinReader | None = None
        self._targets: dict[Key, int] = {}
        self._held: list[Any] = []
        self._next_watch = 0.0
        self._thread: threading.Thread | None = None
        self._shown_metrics: set[tuple[str, str]] = set()
        self.refused: dict[int, str] = {}  # snapshot versions that did not verify, with the reason (/learner)
        name = spec.name
        self._m_labels = {o: lm.LABELS.labels(name, o) for o in OUTCOMES}
        self._m_predicted_at_learn = lm.PREDICTED_AT_LEARN.labels(name)

    # --- lifecycle ------------------------------------------------------------------------------
    def load_latest(self) -> None:
        """Serve the newest snapshot, if any (at start, before the labels group is joined)."""
        latest = self.store.latest_version()
        if latest is not None:
            self._install(*self._restore(latest))

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="learner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        s = self.settings
        self._consumer = consumer = clients.consumer(s.kafka, self.group_id)
        consumer.subscribe([s.labels_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        try:
            while not self.stopping.is_set():
                messages = clients.records(consumer, s.batch_size, 0.05 if self.owner else 0.2, where="labels")
                if self.owner:
                    self._owner_step(messages)
                self._watch()
                time.sleep(0)  # let threads waiting for the GIL in (see OnlineScoringLane._process)
        except Exception as exc:  # leave the group below, so another worker takes over the learning
            self.error = exc
            log.exception("online learning stopped; this worker no longer learns")
        finally:
            try:
                consumer.close()  # revokes the partition: the owner writes its final snapshot there
            finally:
                self._drop_ownership()

    # --- ownership ------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            if partitions:
                self._take_ownership(consumer, partitions)
            else:
                log.info("learner standing by: another worker holds %s", self.settings.labels_topic)
        finally:
            self.labels_joined.set()  # after ownership is settled, so status never shows a half-made owner

    def _take_ownership(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        latest = self.store.latest_version()
        meta, learner, metrics = self._restore(latest) if latest is not None else (None, None, None)
        self._install(meta, learner, metrics)
        resume = meta.resume_at() if meta else {}
        for tp in partitions:
            tp.offset = resume.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)
        consumer.pause(partitions)  # until the join window is rebuilt
        self._partitions = partitions
        self._start_rebuild()
        self.owner = True
        lm.OWNER.labels(self.spec.name).set(1)
        log.info("learning owner from snapshot v%s at %s", meta.version if meta else 0,
                 [(tp.partition, tp.offset) for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.owner and partitions:
            try:
                if self.error is None:  # after a failure the accounts may be half-updated: the next owner relearns
                    self._snapshot_if_dirty()
            except Exception:
                log.exception("final snapshot on revoke failed; the next owner relearns from the previous one")
            self._drop_ownership()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may already learn: our unsnapshotted learning is abandoned, not written.
        self._drop_ownership()

    def _drop_ownership(self) -> None:
        if not self.owner:
            return
        self.owner = False
        self.rebuilding = False
        lm.OWNER.labels(self.spec.name).set(0)
        dirty = sum(self._counts.values()) > 0
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.join.clear()
        self._held.clear()
        if dirty:  # serve what the last snapshot says, not learning that no snapshot holds
            if self.base is not None:
                self._install(*self._restore(self.base.version))
            else:
                self._install(None, None, None)

    def _start_rebuild(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self.join.clear()
        self._held.clear()
        self._reader = JoinReader(self.settings, self.join, self.validator, self.spec.name)
        self._targets = self._reader.start()
        self.rebuilding = True

    # --- the owner's loop -------------------------------------------------------------------------
    def _owner_step(self, messages: list) -> None:
        reader = self._reader
        assert reader is not None and self._consumer is not None
        if self.rebuilding:
            self._held.extend(messages)  # none expected (paused before the first fetch), but never drop any
            reader.drain()
            if not reader.reached(self._targets):
                return
            reader.drain()
            self.rebuilding = False
            self._consumer.resume(self._partitions)
            log.info("join window rebuilt: %d events", len(self.join))
            messages, self._held = self._held, []
        else:
            reader.drain()
        if messages:
            self._learn(messages)
        self.join.expire()
        lm.JOIN_ENTRIES.labels(self.spec.name).set(len(self.join))
        self._maybe_snapshot()

    def _learn(self, messages: list) -> None:
        learner, join = self.learner, self.join
        labels: list[tuple[str, Any, bool | float]] = []
        for msg in messages:
            key, offset = (msg.topic(), msg.partition()), msg.offset()
            span = self._ranges.setdefault(key, [offset, offset])
            span[1] = offset
            self._next[key] = offset + 1
            try:
                label = decode_label(msg.value())
                labels.append((label.event_id, label.label, learner.encode_label(label.label)))
            except (InvalidLabel, ValueError):
                self._count("invalid")
        if not labels:
            return
        if any((e := join.peek(eid)) is None or e.prediction is None for eid, _, _ in labels):
            self._reader.catch_up(self.settings.join_catchup_s)  # type: ignore[union-attr]
        rows, values, targets, served = [], [], [], []
        for eid, value, target in labels:
            entry = join.take(eid)
            if entry is None:
                self._count(join.miss_reason(eid))
                continue
            rows.append(entry.row)
            values.append(value)
            targets.append(target)
            served.append(entry.prediction)
        if not rows:
            return
        X = pd.DataFrame(rows, columns=self.features)
        self._evaluate(X, targets, served)
        learner.learn_many(X, values)
        self._count("learned", len(rows))

    def _evaluate(self, X: pd.DataFrame, targets: list, served: list) -> None:
        """Prequential: each label against the prediction served for its event, before learning it."""
        missing = [i for i, s in enumerate(served) if s is None]
        if missing:  # no served prediction in the window: predict now, still before learning
            version = str(self.base.version if self.base else 0)
            batch = self.learner.predict_many(X.iloc[missing])
            for i, score, label in zip(missing, batch.scores.tolist(), batch.labels.tolist(), strict=True):
                served[i] = (version, score, label)
            self._counts["predicted_at_learn"] += len(missing)
            self._m_predicted_at_learn.inc(len(missing))
        positive = self.classes[1] if self.classes else None
        for target, (version, score, label) in zip(targets, served, strict=True):
            predicted = (label == positive) if positive is not None else None
            self.metrics.update(version, target, score, predicted)

    def _count(self, outcome: str, n: int = 1) -> None:
        self._counts[outcome] += n
        self._m_labels[outcome].inc(n)

    # --- snapshots --------------------------------------------------------------------------------
    def _consumed(self) -> int:
        return sum(self._counts[o] for o in OUTCOMES)

    def _maybe_snapshot(self) -> None:
        consumed = self._consumed()
        if consumed and (consumed >= self.settings.snapshot_every_n
                         or time.monotonic() - self._last_snapshot >= self.settings.snapshot_every_s):
            self._snapshot()

    def _snapshot_if_dirty(self) -> None:
        if self._consumed():
            self._snapshot()

    def _snapshot(self) -> None:
        base = self.base
        data = dumps_state({"model": self.learner.state(), "metrics": self.metrics})
        resume = base.resume_at() if base else {}
        resume.update(self._next)
        counts = self._counts
        try:
            meta = self.store.write(
                data, version=(base.version if base else 0) + 1, parent=base.version if base else None,
                kind="learned", worker=self.settings.worker_name, feature_names=self.features, classes=self.classes,
                offsets=[LearnedRange(topic=t, partition=p, first_offset=a, last_offset=b)
                         for (t, p), (a, b) in sorted(self._ranges.items())],
                next_offsets=[ResumeOffset(topic=t, partition=p, offset=o) for (t, p), o in sorted(resume.items())],
                learned=counts["learned"], learned_total=self.learned_total, consumed=self._consumed(),
                unknown=counts["unknown"], late=counts["late"], duplicate=counts["duplicate"],
                invalid=counts["invalid"], predicted_at_learn=counts["predicted_at_learn"],
                metrics=self.metrics.values(),
            )
        except SnapshotConflict:
            log.warning("snapshot v%d was written by someone else (a rollback or a new owner); reloading",
                        (base.version if base else 0) + 1)
            self._reload_latest()
            return
        self._reset_accounts(meta)
        self.slot.current = Serving(self.learner, meta.version, meta.sha256, self.spec.name)
        name = self.spec.name
        lm.SNAPSHOTS.labels(name, "learned").inc()
        lm.VERSION.labels(name).set(meta.version)
        lm.LEARNED_TOTAL.labels(name).set(meta.learned_total)
        lm.set_metric_gauges(name, meta.metrics, self._shown_metrics)
        self.publisher.send_batch([Outbound(self.settings.learner_metrics_topic, str(meta.version).encode(),
                                            encode_learner_metrics(meta.to_record()))])
        if self._consumer is not None and resume:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in resume.items()],
                                  asynchronous=True)
        skipped = {k: getattr(meta, k) for k in ("unknown", "late", "duplicate", "invalid") if getattr(meta, k)}
        (log.warning if skipped else log.info)(
            "snapshot v%d: learned %d of %d labels (lineage %d)%s; metrics %s", meta.version, meta.learned,
            meta.consumed, meta.learned_total, f", not learned: {skipped}" if skipped else "", meta.metrics.get("all"))

    @property
    def learned_total(self) -> int:
        return (self.base.learned_total if self.base else 0) + self._counts["learned"]

    def _reset_accounts(self, meta: SnapshotMeta | None) -> None:
        self.base = meta
        self._ranges.clear()
        self._next.clear()
        self._counts.clear()
        self._last_snapshot = time.monotonic()

    # --- loading ----------------------------------------------------------------------------------
    def _restore(self, version: int) -> tuple[SnapshotMeta, Learner, PrequentialMetrics]:
        meta, state = self.store.load(version)  # sha256 (and HMAC) verified before unpickling
        if meta.feature_names != self.features or meta.classes != self.classes:
            raise SnapshotError(
                f"{self.spec.name} v{version} was trained on features {meta.feature_names} and classes "
                f"{meta.classes}; this worker is configured for {self.features} and {self.classes}")
        lm.SNAPSHOT_LOADS.labels(self.spec.name).inc()
        learner = Learner(self.spec, self.features, classes=self.classes or None, model=state["model"])
        return meta, learner, state["metrics"]

    def _install(self, meta: SnapshotMeta | None, learner: Learner | None, metrics: PrequentialMetrics | None) -> None:
        """Make ``meta`` (None: a fresh model) the model this worker serves and, as the owner, learns on."""
        old = self.learner
        if learner is None:
            learner = Learner(self.spec, self.features, classes=self.classes or None)
            metrics = PrequentialMetrics(self.spec.task)
        self.learner, self.metrics = learner, metrics  # type: ignore[assignment]
        self._reset_accounts(meta)
        self.slot.current = Serving(learner, meta.version if meta else 0, meta.sha256 if meta else "", self.spec.name)
        if old is not learner:
            old.close()  # only stops its background thread; a batch still scoring with it finishes fine
        name = self.spec.name
        lm.VERSION.labels(name).set(meta.version if meta else 0)
        lm.LEARNED_TOTAL.labels(name).set(meta.learned_total if meta else 0)
        if meta is not None:
            log.info("%s v%d loaded (sha256 %s)", name, meta.version, meta.sha256[:12])

    def _reload_latest(self) -> None:
        """The owner found a version it did not write: continue from it (seek, pause, rebuild)."""
        latest = self.store.latest_version()
        if latest is None:
            return
        meta, learner, metrics = self._restore(latest)
        self.rebuilding = True  # (status) from here until the window is rebuilt
        self._install(meta, learner, metrics)
        resume = meta.resume_at()
        consumer = self._consumer
        assert consumer is not None
        for tp in self._partitions:
            consumer.seek(TopicPartition(tp.topic, tp.partition, resume.get((tp.topic, tp.partition),
                                                                            OFFSET_BEGINNING)))
        consumer.pause(self._partitions)
        log.info("learning owner continues from v%d (%s) at %s", meta.version, meta.kind, resume)
        self._start_rebuild()

    def _watch(self) -> None:
        """Every ``snapshot_poll_s``: pick up versions written elsewhere (rollbacks; the owner's, on standbys)."""
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + self.settings.snapshot_poll_s
        latest = self.store.latest_version()
        current = self.base.version if self.base else 0
        if latest is None or latest <= current:
            return
        try:
            if self.owner:
                self._reload_latest()
            else:
                self._install(*self._restore(latest))
        except SnapshotError as exc:  # unsigned, mis-signed or a disallowed pickle: never loaded, never fatal here
            if latest not in self.refused:
                log.error("%s v%d refused, still serving v%d: %s", self.spec.name, latest, current, exc)
            self.refused[latest] = str(exc)

    # --- status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        current = self.slot.current
        return {
            "learner": self.spec.name,
            "version": current.snapshot_version,
            "sha256": current.sha256,
            "owner": self.owner,
            "labels_joined": self.labels_joined.is_set(),
            "rebuilding": self.rebuilding,
            "learned_total": self.learned_total,
            "consumed_since_snapshot": self._consumed(),
            "join_entries": len(self.join),
            "error": None if self.error is None else repr(self.error),
            "refused_snapshots": {str(v): reason for v, reason in self.refused.items()},
        }
