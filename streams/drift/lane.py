"""Drift monitoring beside scoring: the inputs the worker scores are compared with the model's reference
profile, off the hot path, and drift records, alerts and retrain requests are published.

    scoring pipeline ──(decoded batch, listener)──▶ sliding window (last N inputs, a sample above a rate)
    labels topic ──▶ [drift lane, group <app_id>-drift] ──▶ concept drift │ app.timer every drift_interval_s,
                                                                          ▼ evaluated on a worker thread
               drift ◀── DriftRecord ◀── check_window(profile, window, scores)
               alerts ◀── DriftAlert  ◀── AlertDebouncer ──▶ RetrainRequest ──▶ retrain-requests

The window is fed from the batches the scoring pipeline has already decoded (``ScoringPipeline.listeners``),
with either engine: each input is decoded once in the worker. Until 2026-12 the lane had its own consumer of
the input topics and decoded each sampled input again with the per-event pydantic decoder: that thread took
~30 % of the worker's active CPU samples beside the scoring thread's ~48 % (py-spy, batch engine, 150k
backlog), and its consumer prefetched up to 64 MB (docs/side-lanes-cost.md). The lane's consumer now reads
only the labels topic (concept drift), in group ``<app_id>-drift``; it is a confluent-kafka consumer on a
thread rather than a Faust agent, since a second Faust app (one app = one group) on the shared event loop cut
the faust engine's throughput (docs/drift.md).

Every worker monitors the partitions it scores; inputs are keyed by event id, so each worker's window is a
random sample of the stream.

Prediction drift scores the window with the worker's model (one ONNX call per evaluation, ~7 ms for
2000 rows incl. all statistics) rather than reading the predictions topic: the scores then belong to
exactly the events of the window, independent of scoring lag and of the engine. Missing features are
counted from the decoded input (NaN in the window), so no dead-letter topic needs reading.

Gauges: ``streamscore_drift_statistic{model,feature,statistic}`` (p-values as ``<statistic>_p_value``;
prediction statistics under feature ``prediction:score``) and ``streamscore_drift_status{model}``
(0 ok, 1 warn, 2 alert).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import faust
import numpy as np
from confluent_kafka import Message
from faust.types import AppT
from mode import Service
from prometheus_client import Gauge

from models.scorer import Scorer
from schemas.codecs import InvalidEvent, decode_feature_event
from schemas.drift import STATUS_LEVEL, DriftAlert, DriftRecord, RetrainRequest, encode
from schemas.hot_path import DecodedRows, decode_rows
from schemas.validation import FeatureValidator
from streams.background import BackgroundThread
from streams.drift.alerts import AlertDebouncer
from streams.drift.check import check_window, worst_status
from streams.drift.concept import ConceptTracker
from streams.drift.profile import PROFILE_FILENAME, ReferenceProfile
from streams.drift.window import SlidingWindow, WindowSnapshot
from streams.kafka import clients
from streams.kafka.publisher import Outbound, Publisher
from streams.kafka.topics import ensure_topics
from streams.metrics import DRIFT_ALERTS
from streams.scoring.pipeline import ScoringPipeline
from streams.scoring.records import InboundMessage
from streams.scoring.registry import schema_resolver
from streams.settings import Settings

log = logging.getLogger(__name__)

DRIFT_STATISTIC = Gauge("streamscore_drift_statistic", "Latest drift statistic of a feature (docs/drift.md)",
                        ["model", "feature", "statistic"])
DRIFT_STATUS = Gauge("streamscore_drift_status", "Overall drift status: 0 ok, 1 warn, 2 alert", ["model"])
# Records kept in memory for the worker's /drift/report page: 60 evaluations are 5 min of a busy stream at the
# default 5 s interval, ~4 MB for 10 features with histograms (tracemalloc: 8.1 MB per 120); the topic keeps all.
RECENT_RECORDS = 60
# InvalidEvent codes of the feature check (schemas.validation): such an input still has features drift judges.
FEATURE_ERRORS = frozenset({"missing_feature", "extra_feature", "out_of_range", "non_finite"})


def drift_topics(settings: Settings) -> list[str]:
    return [settings.drift_topic, settings.alerts_topic, settings.retrain_topic]


def load_reference(model_dir, card) -> tuple[ReferenceProfile, str] | None:
    """The profile the model card pins, or None when the model was exported without one."""
    if card.reference_profile_sha256 is None:
        return None
    profile = ReferenceProfile.load(model_dir, expected_sha256=card.reference_profile_sha256)
    return profile, card.reference_profile_sha256


def reference_of(model: Scorer) -> tuple[ReferenceProfile, str] | None:
    """The reference profile a scorer was exported with: its own (ONNX), its first part's (composite), or None."""
    parts = getattr(model, "parts", None)
    if parts:
        return reference_of(parts[0])
    card, source_dir = getattr(model, "card", None), getattr(model, "source_dir", None)
    if card is None or source_dir is None:
        return None
    return load_reference(source_dir, card)


# Fewest inputs of a batch the window takes at once (unless the batch or the rate cap is smaller). At 5000/s of
# 90k/s, taking every batch's ~15 tokens cost 0.67 us per scored event on the scoring thread; 64 at a time 0.2.
MIN_SAMPLE = 64


class DriftMonitor:
    """Window, reference and alert state of one model; no Kafka client, no event loop.

    ``add_many`` is called by the lane thread, ``snapshot`` by the timer, ``evaluate`` on the drift thread;
    the lock only guards the window's arrays while a batch is appended or copied.
    """

    def __init__(self, settings: Settings, scorer: Scorer, profile: ReferenceProfile, profile_sha256: str,
                 worker: str | None = None) -> None:
        if profile.feature_names != list(scorer.feature_names):
            raise ValueError(f"profile features {profile.feature_names} differ from the model's "
                             f"{list(scorer.feature_names)}")
        self.settings = settings
        self.scorer = scorer
        self.profile = profile
        self.profile_sha256 = profile_sha256
        self.worker = worker or settings.worker_name
        self.names = tuple(profile.feature_names)
        self.validator = FeatureValidator(self.names)
        self.resolver = schema_resolver(settings)  # registry schema ids, shared with the scoring lane
        self.window = SlidingWindow(settings.drift_window, len(self.names))
        self.debouncer = AlertDebouncer(settings.drift_alert_cooldown_s, settings.drift_resolve_after,
                                        settings.drift_retrain_on_alert)
        self.thresholds = settings.drift_thresholds
        self.concept = (ConceptTracker(scorer.classes[-1], settings.join_ttl_s, settings.drift_label_join_size)
                        if settings.drift_concept else None)
        self.lock = threading.Lock()
        self._tokens = float(settings.drift_max_events_per_s)  # token bucket: a second's worth to start
        self._refilled = time.monotonic()
        self.sampled_out = 0
        self.feed_errors = 0  # batches the scoring listener could not add (logged)
        self.evaluated_at = 0  # window.appended at the last evaluation
        self.last_record: DriftRecord | None = None
        self.recent: deque[DriftRecord] = deque(maxlen=RECENT_RECORDS)  # oldest first, for /drift/report
        self.last_alert: DriftAlert | None = None  # the latest notice published (firing or resolved)
        self._status_gauge = DRIFT_STATUS.labels(scorer.name)

    # --- per batch (scoring thread, or the lane thread for labels) ---------------------------
    def _budget(self, n: int, now: float | None) -> int:
        """How many of ``n`` inputs the window may take now (a token bucket at ``drift_max_events_per_s``)."""
        now = time.monotonic() if now is None else now
        rate = self.settings.drift_max_events_per_s
        self._tokens = min(float(rate), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        take = max(0, min(n, int(self._tokens)))
        if take < min(n, MIN_SAMPLE, rate):
            take = 0  # let the bucket fill: each sampled batch costs ~100-170 us of numpy on the scoring thread
        self._tokens -= take
        self.sampled_out += n - take
        return take

    def add_decoded(self, messages: Sequence[InboundMessage], decoded: DecodedRows, now: float | None = None) -> None:
        """Append a batch the scoring pipeline has already decoded (``ScoringPipeline.listeners``): no decoding here.

        Inputs beyond ``drift_max_events_per_s`` are left out, evenly spread over the batch (counted in
        ``sampled_out``): a window of a sample of the stream judges drift as well, and spans more time. Inputs
        scoring rejected for their features (missing, extra, out of float32 range) are decoded again here, one
        by one, because drift counts missing features and judges every value; they are rare. Rows are the
        model's float32 input (drift compares them with float64 reference bins: a difference below 1e-7).
        """
        n = len(messages)
        take = self._budget(n, now) if n else 0
        if take == 0:
            return
        pos = np.arange(n) if take == n else np.unique(np.linspace(0, n - 1, take).round().astype(np.int64))
        index = np.asarray(decoded.index, dtype=np.int64)
        j = np.minimum(np.searchsorted(index, pos), max(len(index) - 1, 0))
        hit = (index[j] == pos) if len(index) else np.zeros(len(pos), bool)
        rows = np.full((len(pos), len(self.names)), np.nan)
        rows[hit] = decoded.X[j[hit]]
        valid = hit.copy()
        times = np.zeros(len(pos), np.int64)
        events = decoded.events
        hits = j[hit].tolist()
        times[hit] = [events[k].event_time for k in hits]
        if not hit.all():
            errors = dict(decoded.errors)
            for at in np.flatnonzero(~hit).tolist():
                exc = errors.get(int(pos[at]))
                if exc is not None and exc.code in FEATURE_ERRORS:
                    m = messages[int(pos[at])]
                    row_time = self._reference_row(m.topic, m.value)
                    if row_time is not None:
                        rows[at], times[at], valid[at] = row_time[0], row_time[1], True
        picked = [messages[p] for p in pos.tolist()]
        with self.lock:
            self.window.extend([(m.topic, m.partition) for m in picked], [m.offset for m in picked], times, rows,
                               valid)
            if self.concept is not None:
                # A view of this batch's sample per event (~180 B) rather than a list of 8 floats (~320 B): the
                # join store holds up to drift_label_join_size (100k) of them while labels are awaited.
                self.concept.add_many_features([events[k].event_id for k in hits], list(rows[hit]),
                                               [picked[at].timestamp_ms for at in np.flatnonzero(hit).tolist()])

    def listener(self, messages: Sequence[InboundMessage], decoded: DecodedRows) -> None:
        """The hook on the scoring pipeline: never lets a drift problem fail a scoring batch (logged, counted)."""
        try:
            self.add_decoded(messages, decoded)
        except Exception:  # drift is beside scoring: a bug here must not dead-end the scoring batch
            self.feed_errors += 1
            if self.feed_errors in (1, 10, 100) or self.feed_errors % 1000 == 0:
                log.exception("drift window: batch not added (%d so far)", self.feed_errors)

    def add_many(self, messages: Iterable[Message], now: float | None = None) -> None:
        """Append a batch of confluent-kafka messages (errors and partition EOFs are skipped).

        Labels are few and always read; inputs are sampled as in ``add_decoded`` and decoded in bulk
        (``schemas.hot_path.decode_rows``) with the model's validator, like the scoring pipeline.
        """
        inputs: list[InboundMessage] = []
        for m in messages:
            if m.error() is not None:
                continue
            if m.topic() == self.settings.labels_topic:
                if self.concept is not None:
                    with self.lock:
                        self.concept.add_label(m.value())
            else:
                inputs.append(InboundMessage(m.topic(), m.partition(), m.offset(), None, m.value(),
                                             m.timestamp()[1]))
        if inputs:
            topics = self.settings.input_topics
            formats = [topics.get(m.topic, "auto") for m in inputs]
            decoded = decode_rows([m.value for m in inputs], formats, self.validator,
                                  self.settings.max_payload_bytes, self.resolver)
            self.add_decoded(inputs, decoded, now)

    def _reference_row(self, topic: str, value: bytes | None) -> tuple[list[float], int] | None:
        """Features of one input as the reference decoder reads them (missing ones NaN), or None if undecodable."""
        fmt = self.settings.input_topics.get(topic, "auto")
        try:
            event = decode_feature_event(value, fmt, self.settings.max_payload_bytes, self.resolver)
        except InvalidEvent:
            return None
        return [event.features.get(name, math.nan) for name in self.names], event.event_time

    def snapshot(self) -> WindowSnapshot:
        with self.lock:
            snap = self.window.snapshot()
            if self.concept is not None:
                rows, ys = self.concept.take_pending()
                snap = replace(snap, labelled=rows, targets=ys)
            return snap

    def add(self, topic: str, partition: int, offset: int, value: bytes | None, ts_ms: int | None = None) -> None:
        """Decode like the scoring pipeline; keep features even when the model could not score them.

        Not locked: call it under ``lock`` when another thread may snapshot (``add_many`` does).
        """
        fmt = self.settings.input_topics.get(topic, "auto")
        try:
            event = decode_feature_event(value, fmt, self.settings.max_payload_bytes, self.resolver)
        except InvalidEvent:
            self.window.append(topic, partition, offset, None, None)
            return
        try:
            row = self.validator.row(event)
        except InvalidEvent:  # missing or extra features: missing ones become NaN, extra ones are ignored
            row = [event.features.get(name, math.nan) for name in self.names]
        self.window.append(topic, partition, offset, event.event_time, row)
        if self.concept is not None:
            self.concept.add_features(event.event_id, row, ts_ms)

    def switch_model(self, scorer: Scorer, profile: ReferenceProfile, profile_sha256: str) -> None:
        """Monitor another model from now on (a promotion): same input window, new reference, new alert state.

        The window's inputs stay (they are the same stream); the next evaluation judges them against the new
        model's profile. Alerts and the error-stream detectors belong to a model, so they start afresh.
        """
        if profile.feature_names != list(scorer.feature_names) or tuple(profile.feature_names) != self.names:
            raise ValueError(f"{scorer.name}@{scorer.version}: profile features differ from the monitored ones")
        with self.lock:
            self.scorer, self.profile, self.profile_sha256 = scorer, profile, profile_sha256
            self.debouncer = AlertDebouncer(self.settings.drift_alert_cooldown_s, self.settings.drift_resolve_after,
                                            self.settings.drift_retrain_on_alert)
            if self.concept is not None:
                self.concept = ConceptTracker(scorer.classes[-1], self.settings.join_ttl_s,
                                              self.settings.drift_label_join_size)
            self.evaluated_at = 0  # judge the window against the new reference at the next tick
            self._status_gauge = DRIFT_STATUS.labels(scorer.name)

    def due(self) -> bool:
        """New messages since the last evaluation, and enough of them to judge (or new labelled events)."""
        enough = min(self.settings.drift_window, self.thresholds.min_events)
        labelled = self.concept is not None and bool(self.concept.pending_ys)
        return (self.window.appended > self.evaluated_at or labelled) and len(self.window) >= enough

    # --- per evaluation (worker thread) -----------------------------------------------------
    def evaluate(self, snap: WindowSnapshot, now_ms: int | None = None) -> tuple[DriftRecord, list[Outbound]]:
        """The drift record of ``snap`` and every message to publish for it (record, alerts, retrain)."""
        X = snap.X
        complete = ~np.isnan(X).any(axis=1) if X.size else np.zeros(0, bool)
        scores = self.scorer.predict_many(X[complete].astype(np.float32)).scores if complete.any() else None
        statistics = check_window(self.profile, X, scores, self.thresholds)
        if self.concept is not None:
            if len(snap.targets):
                self.concept.update(self.scorer.predict_many(snap.labelled.astype(np.float32)).scores, snap.targets)
            statistics += self.concept.statistics()
        record = DriftRecord(
            model_name=self.scorer.name,
            model_version=self.scorer.version,
            model_sha256=self.scorer.sha256,
            profile_sha256=self.profile_sha256,
            worker=self.worker,
            computed_at=now_ms if now_ms is not None else time.time_ns() // 1_000_000,
            window_start_ms=snap.start_ms,
            window_end_ms=snap.end_ms,
            window_events=snap.n_events,
            window_invalid=snap.n_invalid,
            window_scored=int(complete.sum()),
            offsets=snap.offsets,
            statistics=statistics,
            status=worst_status(statistics),
        )
        self.evaluated_at = snap.appended
        self.last_record = record
        self.recent.append(record)
        self._export(record)
        notices = self.debouncer.observe(record)
        self.last_alert = next((n for n in reversed(notices) if isinstance(n, DriftAlert)), self.last_alert)
        for notice in notices:
            if isinstance(notice, DriftAlert):
                DRIFT_ALERTS.labels(notice.model_name).inc()
        return record, [self._outbound(record)] + [self._outbound(n) for n in notices]

    def _outbound(self, message: DriftRecord | DriftAlert | RetrainRequest) -> Outbound:
        topic = {DriftRecord: self.settings.drift_topic, DriftAlert: self.settings.alerts_topic,
                 RetrainRequest: self.settings.retrain_topic}[type(message)]
        # Keyed by model: one partition per model keeps its records, alerts and requests in order.
        return Outbound(topic, message.model_name.encode(), encode(message))

    def _export(self, record: DriftRecord) -> None:
        model = record.model_name
        for s in record.statistics:
            feature = s.feature if s.kind == "feature" else f"{s.kind}:{s.feature}"
            DRIFT_STATISTIC.labels(model, feature, s.statistic).set(s.value)
            if s.p_value is not None:
                DRIFT_STATISTIC.labels(model, feature, f"{s.statistic}_p_value").set(s.p_value)
        self._status_gauge.set(STATUS_LEVEL[record.status])


class DriftLane(BackgroundThread):
    """The labels consumer of concept drift, in group ``<app_id>-drift``, on its own thread.

    Inputs reach the window from the scoring pipeline (``DriftMonitor.listener``), decoded once in the worker;
    this lane reads only the labels topic (few messages), and only when concept drift is on; otherwise it
    idles, so /healthz and the fault tests see the same part either way. Offsets are auto-committed as read: a
    label lost or seen twice around a crash moves one detector update, which nothing downstream waits for.
    """

    thread_name = "drift-lane"

    def __init__(self, settings: Settings, monitor: DriftMonitor) -> None:
        self.settings = settings
        self.monitor = monitor
        self.group_id = f"{settings.app_id}-drift"
        self.assigned = threading.Event()
        super().__init__()

    def run(self) -> None:
        s = self.settings
        if not s.drift_concept:
            self.assigned.set()  # nothing to be assigned: the window is fed by scoring
            while not self.stopping.wait(0.5):
                self.beat()
            return
        # A new drift group starts at the beginning like the scoring groups; later it resumes from its commits.
        # A small fetch queue: labels are few, and librdkafka's default prefetch is up to 64 MB per consumer.
        consumer = clients.consumer(s.kafka, self.group_id, background=True, **{
            "enable.auto.commit": True, "auto.commit.interval.ms": int(s.commit_interval_s * 1000),
            "queued.max.messages.kbytes": 2048})
        consumer.subscribe([s.labels_topic], on_assign=lambda *_: self.assigned.set())
        try:
            while not self.stopping.is_set():
                self.beat()
                messages = clients.records(consumer, 500, 0.1, where="drift lane")
                if messages:
                    self.monitor.add_many(messages)
        finally:
            consumer.close()


class DriftService(Service):
    """Runs the drift lane for the worker; evaluates once more and flushes on stop (the timer is the app's)."""

    def __init__(self, monitor: DriftMonitor, lane: DriftLane, served: Callable[[], object] | None = None,
                 **kwargs: object) -> None:
        self.monitor = monitor
        self.lane = lane
        self.served = served  # the model scoring now (registry mode), or None: the worker's fixed model
        self._not_followed: str | None = None
        self.publisher: Publisher | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift")
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        settings = self.monitor.settings
        await self.loop.run_in_executor(None, ensure_topics, settings, drift_topics(settings))
        if settings.drift_concept:  # one partition, as online learning needs it (streams/learning/lane.py)
            single = settings.model_copy(update={"partitions": 1})
            await self.loop.run_in_executor(None, ensure_topics, single, [settings.labels_topic])
        self.publisher = Publisher(settings.kafka)
        self.lane.start()  # joins its group on its own thread: nothing here waits for the join

    async def evaluate(self) -> DriftRecord | None:
        """Compare the window with the reference (if due) on the drift thread; publish what it yields."""
        monitor = self.monitor
        self.follow_served_model()
        if self.publisher is None or not monitor.due():
            return None
        snap = monitor.snapshot()  # a copy: the lane keeps appending meanwhile
        record, outputs = await self.loop.run_in_executor(self.thread, monitor.evaluate, snap)
        await self.publisher.send_batch(outputs, self.loop).wait_async()
        if record.status != "ok":
            log.warning("drift %s on %s@%s: %s", record.status, record.model_name, record.model_version,
                        ", ".join(f"{s.feature} {s.statistic}" for s in record.statistics if s.status != "ok"))
        return record

    def follow_served_model(self) -> None:
        """In registry mode, monitor the model that now serves the default route (after a promotion).

        Any ``Scorer`` is followed: an ONNX model with its own reference profile, a composite with its first
        part's, and a River snapshot (which has none) against the inputs' reference in use so far, since
        feature drift is about the inputs, which do not change with the model.
        """
        model = self.served() if self.served is not None else None
        monitor = self.monitor
        if model is None or model.sha256 == monitor.scorer.sha256:
            return
        try:
            reference = reference_of(model) or (monitor.profile, monitor.profile_sha256)
            monitor.switch_model(model, *reference)
        except (OSError, ValueError) as exc:  # keep monitoring the previous model; say so once
            if self._not_followed != model.sha256:
                log.warning("drift monitoring stays on %s@%s: cannot follow %s@%s (%s)", monitor.scorer.name,
                            monitor.scorer.version, model.name, model.version, exc)
                self._not_followed = model.sha256
            return
        log.info("drift monitoring now follows %s@%s", model.name, model.version)

    def status(self) -> dict[str, object]:
        """For the worker's /drift page: is the drift agent consuming, what does its window hold."""
        monitor, last = self.monitor, self.monitor.last_record
        return {
            "group": self.lane.group_id,
            "assigned": self.lane.assigned.is_set(),
            "window_events": len(monitor.window),
            "messages_seen": monitor.window.appended,
            "sampled_out": monitor.sampled_out,  # inputs skipped above drift_max_events_per_s
            "messages_evaluated": monitor.evaluated_at,  # messages seen when the last record was computed
            "evaluations_due": monitor.due(),
            "status": last.status if last else None,
            "last_computed_at": last.computed_at if last else None,
            "model": f"{monitor.scorer.name}@{monitor.scorer.version}",
            "profile_sha256": monitor.profile_sha256,
            # concept drift: labels read, and labelled events fed to the detectors so far
            "labels": dict(monitor.concept.counts) if monitor.concept else None,
            "labels_evaluated": monitor.concept.labels_evaluated if monitor.concept else None,
        }

    async def on_stop(self) -> None:
        await self.loop.run_in_executor(None, self.lane.stop)
        try:
            await self.evaluate()  # the window's last events would otherwise never be judged
        except Exception:  # a broker gone at shutdown must not keep the worker from stopping
            log.exception("final drift evaluation failed")
        if self.publisher is not None:
            await self.loop.run_in_executor(None, self.publisher.close)
        self.thread.shutdown(wait=False)


def register_drift_monitor(app: AppT, settings: Settings, scorer: Scorer, served: Callable[[], Scorer | None],
                           pipeline: ScoringPipeline) -> DriftService | None:
    """Wire drift monitoring into the app (either engine); None when off or the model has no profile.

    The window is fed by ``pipeline`` (its listener hook), which both engines score with: each input is
    decoded once in the worker, by scoring.

    ``served`` names the scorer the default route serves right now (the registry's champion), or None
    when routing is static; drift then follows it, whatever kind of scorer it is.
    """
    if settings.drift_window == 0:
        log.info("drift monitoring off (STREAMSCORE_DRIFT_WINDOW=0)")
        return None
    reference = load_reference(settings.model_dir, scorer.card)
    if reference is None:
        log.warning("drift monitoring off: %s has no %s (re-export the model to record one)",
                    settings.model_dir, PROFILE_FILENAME)
        return None
    monitor = DriftMonitor(settings, scorer, *reference)
    if tuple(pipeline.validator.feature_names) != monitor.names:
        raise ValueError(f"scoring decodes features {pipeline.validator.feature_names}, drift monitors {monitor.names}")
    pipeline.listeners.append(monitor.listener)
    service = DriftService(monitor, DriftLane(settings, monitor), served)

    @app.timer(settings.drift_interval_s, name="drift-evaluate")
    async def evaluate() -> None:
        await service.evaluate()

    @app.page("/drift")
    async def drift_status(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json(service.status())

    app.service(service)
    log.info("drift monitoring %s@%s: window %d events, every %.1f s -> %s, %s, %s", scorer.name,
             scorer.version, settings.drift_window, settings.drift_interval_s, *drift_topics(settings))
    return service
