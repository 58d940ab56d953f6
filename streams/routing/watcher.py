"""Registry in the worker: the control topic drives which model versions score, swapped without a restart.

    streamscore models promote|rollback|route ──▶ <registry_dir>/log.jsonl ──▶ _streamscore-registry (1 partition)
                                                                                        │ replayed from offset 0
    worker:  [registry watcher thread] ── RegistryState ── build_table ──▶ Router.swap(table)
             [feedback thread] ◀── labels topic (all partitions, no group) ──▶ Router.learn (bandit, canary)
             scoring thread: ScoringPipeline.process ─▶ Router.route(batch) with the table of that moment

Enabled by ``STREAMSCORE_REGISTRY_MODEL``; unset, nothing here runs and the worker scores with
``model_dir`` as before. The worker reads the whole control topic before it scores anything, so the
first event is already scored by the registry's champion; later records are applied by the watcher
thread, which loads the new versions off the hot path and swaps the whole routing table in one
reference store. A micro-batch reads the table once, so a swap lands between batches: no event is
dropped, none is scored twice, and each prediction names the version that produced it.

Nothing on the control topic is trusted as it arrives: every record goes through
``models.registry.RegistryFollower`` with the deployment key (``Settings.signing_key_bytes``), which
refuses unsigned or mis-signed records, seq jumps it cannot close from the signed registry log, artifact
paths outside ``<registry_dir>/models/<name>/<version>``, and artifacts that are not the registered
sha256. A refused record changes nothing: it is logged once (one error line with the reason), kept in
``/registry`` (``control.rejected``), and the worker keeps scoring with what it has. An authentic record
refused for its content (e.g. an artifact not yet on the shared volume) is retried every
``RETRY_REJECTED_S``; while such a record holds back a model or route this worker serves, or the watcher
thread keeps failing, ``healthy`` is False and ``last_error`` says why (for /readyz). The thread never
dies of an unexpected error: it logs it once, backs off 1, 2, 4 ... 30 s and continues.

When a canary breaches its thresholds, the worker routes everything to the baseline at once and records
the rollback in the registry (log + control topic), so every worker follows. The worker serves
``/registry`` (JSON: lanes, versions, policy statistics, the follower's seq and refused records, health).

>>> from models.registry import RegistryRecord, Change
>>> rec = RegistryRecord(seq=1, key="route:features", change=Change(kind="route"), route={"policy": "single"},
...                      at_ms=0, by="me")
>>> decode_record(encode_record(rec)) == rec
True
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import faust
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic
from faust.types import AppT
from mode import Service
from pydantic import ValidationError

from models.card import ModelCard
from models.registry import (
    ModelRegistry,
    ModelVersion,
    RegistryError,
    RegistryFollower,
    RegistryRecord,
    RegistryState,
    RejectedRecord,
    load_version,
)
from models.scorer import Scorer
from schemas.labels import InvalidLabel, decode_label
from streams.background import BackgroundThread
from streams.kafka import clients
from streams.kafka.topics import ensure_topics
from streams.metrics import MODEL_INFO, ROUTING_SWAPS
from streams.routing.router import Feedback, Router, RouteSpec, RoutingTable, TopicRoute, make_policy
from streams.scoring.pipeline import ScoringPipeline
from streams.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_ROUTE_KEY = "*"
RETRY_REJECTED_S = 5.0  # authentic records refused for their content are re-validated this often
BACKOFF_S = (1.0, 30.0)  # first and longest pause after an unexpected error of the watcher thread


def encode_record(record: RegistryRecord) -> bytes:
    return record.model_dump_json().encode()


def decode_record(value: bytes) -> RegistryRecord:
    return RegistryRecord.model_validate_json(value)


def ensure_registry_topic(settings: Settings, timeout: float = 15.0) -> None:
    """Create the control topic: ONE partition (a total order of changes), compacted (last state per key)."""
    admin = clients.admin(settings.kafka)
    if settings.registry_topic in admin.list_topics(timeout=timeout).topics:
        return
    topic = NewTopic(settings.registry_topic, 1, settings.replication_factor, config={"cleanup.policy": "compact"})
    try:
        admin.create_topics([topic], operation_timeout=timeout)[settings.registry_topic].result()
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise


class ControlPublisher:
    """Publishes registry records to the control topic, waiting for each to be acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = clients.producer(settings.kafka, **{"linger.ms": 0})  # one record at a time, at once

    def __call__(self, record: RegistryRecord) -> None:
        errors: list[KafkaError] = []
        self._producer.produce(self.settings.registry_topic, encode_record(record), record.key.encode(),
                               on_delivery=lambda err, _msg: errors.append(err) if err else None)
        if self._producer.flush(15) or errors:
            raise RegistryError(f"control topic {self.settings.registry_topic!r} did not take record {record.seq} "
                                f"({errors or 'timed out'}); it is in the local log: run `streamscore models sync`")


def registry_for(settings: Settings, features: list[str] | tuple[str, ...] | None = None,
                 publish: bool = True) -> ModelRegistry:
    """The registry directory of these settings; changes are published to the control topic when ``publish``."""
    if features is None:
        features = settings.registry_features
        if features is None:
            features = ModelCard.load(settings.model_dir).features
    key = settings.signing_key_bytes()  # before any broker round trip: no key is a configuration mistake
    return ModelRegistry(settings.registry_path, features, ControlPublisher(settings) if publish else None, key=key)


class ControlReader:
    """The control topic from offset 0, folded through a ``RegistryFollower`` (no consumer group, nothing committed).

    Only authentic, in-order, valid records reach ``state``; refused ones are logged once and kept in
    ``follower.rejected``.
    """

    def __init__(self, settings: Settings, key: bytes | None = None) -> None:
        self.settings = settings
        self.follower = RegistryFollower(settings.registry_path, key if key is not None else
                                         settings.signing_key_bytes(), verify_artifacts=True)
        self._tp = TopicPartition(settings.registry_topic, 0, OFFSET_BEGINNING)
        self.consumer = clients.standalone_consumer(settings.kafka, f"{settings.app_id}-registry",
                                                    **{"fetch.wait.max.ms": 100})
        self.consumer.assign([self._tp])

    @property
    def state(self) -> RegistryState:
        return self.follower.state

    def apply(self, value: bytes, offset: int | None) -> bool:
        """Fold one record in; True when it changed the state. A refused record is logged here, once."""
        try:
            applied = self.follower.apply_record(value, offset=offset)
        except RejectedRecord as exc:
            # One line per refused record (an audit trail of forgeries), not one per kind and interval: each
            # offset is read once, so a flood of forgeries is as long as the control topic, no longer.
            log.error("registry record refused, still scoring with what this worker has: %s", exc,
                      extra={"summary_kind": ("refused", offset)})
            return False
        if applied.filled:
            log.warning("registry records %s were missing from %s (compacted or lost); taken from the signed log "
                        "%s", list(applied.filled), self.settings.registry_topic, self.follower.log_path)
        return applied.changed

    def poll(self, timeout: float) -> int:
        """Apply what arrives within ``timeout``; how many records changed the state."""
        changed = 0
        for msg in clients.records(self.consumer, 500, timeout, where="registry topic"):
            try:
                changed += self.apply(msg.value(), msg.offset())
            except Exception:  # not a refusal: read this record (and the rest of the batch) again after the backoff
                self.consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
                raise
        return changed

    def retry(self) -> int:
        """Re-validate authentic records refused for their content; how many are now applied."""
        applied = self.follower.retry_rejected()
        for a in applied:
            log.warning("registry record %d (%s) applied on retry: %s", a.record.seq, a.record.key,
                        a.record.change.kind)
        return len(applied)

    def catch_up(self, timeout: float = 30.0) -> int:
        """Read up to the end offset of the moment; ``TimeoutError`` if the broker does not deliver it in time."""
        _low, high = self.consumer.get_watermark_offsets(self._tp, timeout=timeout)
        deadline = time.monotonic() + timeout
        changed = 0
        while high > 0:
            changed += self.poll(0.2)
            position = self.consumer.position([self._tp])[0].offset
            if position >= high:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {position}/{high} records of {self.settings.registry_topic} in {timeout} s")
        return changed

    def close(self) -> None:
        self.consumer.close()


class TableBuilder:
    """Turns a registry state into a routing table; caches loaded scorers by sha256 and reuses unchanged lanes."""

    def __init__(self, settings: Settings, feature_names: tuple[str, ...]) -> None:
        self.settings = settings
        self.feature_names = feature_names
        self._scorers: dict[str, Scorer] = {}
        self._generation = 0

    def _scorer(self, state: RegistryState, spec: RouteSpec, ref: str) -> Scorer:
        name = spec.model or self.settings.registry_model
        mv: ModelVersion = state.model(name or "").resolve(ref)
        scorer = self._scorers.get(mv.sha256)
        if scorer is None:
            scorer = load_version(self.settings.registry_path, mv)
            if scorer.feature_names != self.feature_names:  # the pipeline validates and orders rows for these
                raise RegistryError(f"{mv.name}@{mv.version} takes {list(scorer.feature_names)}, but this worker "
                                    f"builds rows of {list(self.feature_names)}")
            self._scorers[mv.sha256] = scorer
            MODEL_INFO.labels(scorer.name, scorer.version, scorer.sha256).set(1)
        return scorer

    def _lane(self, state: RegistryState, spec: RouteSpec, old: TopicRoute | None) -> TopicRoute:
        policy = make_policy(spec)
        scorers = [self._scorer(state, spec, ref) for ref in policy.arms]
        shadow = [self._scorer(state, spec, ref) for ref in policy.shadow_arms]
        if old is not None and old.same_as(spec, scorers, shadow):
            return old
        return TopicRoute(spec, policy, tuple(scorers), tuple(shadow))

    def specs(self, state: RegistryState) -> dict[str, RouteSpec]:
        """Routes from settings, overridden per topic by the registry log (run-time changes win)."""
        merged = {**self.settings.routes, **state.routes()}
        return {topic: RouteSpec.model_validate(spec) for topic, spec in merged.items()}

    def build(self, state: RegistryState, current: RoutingTable | None) -> RoutingTable:
        specs = self.specs(state)
        default_spec = specs.pop(DEFAULT_ROUTE_KEY, RouteSpec())
        default = self._lane(state, default_spec, current.default if current else None)
        lanes = {topic: self._lane(state, spec, current.routes.get(topic) if current else None)
                 for topic, spec in specs.items()}
        self._generation += 1
        in_use = {s.sha256 for lane in [default, *lanes.values()] for s in (*lane.scorers, *lane.shadow_scorers)}
        for sha, retired in [(sha, s) for sha, s in self._scorers.items() if sha not in in_use]:
            del self._scorers[sha]  # frees the ONNX session once no batch holds the old table
            with contextlib.suppress(KeyError):  # already gone: e.g. the same labels as the model_dir model's
                MODEL_INFO.remove(retired.name, retired.version, retired.sha256)
        return RoutingTable(lanes, default, self._generation)


def _describe(table: RoutingTable) -> str:
    def one(lane: TopicRoute) -> str:
        arms = ", ".join(f"{a}={s.version}" for a, s in zip(lane.policy.arms, lane.scorers, strict=True))
        return f"{lane.spec.policy}({arms})"
    return "; ".join([f"*: {one(table.default)}", *(f"{t}: {one(lane)}" for t, lane in table.routes.items())])


class RegistryWatcher(BackgroundThread):
    """Follows the control topic on a thread and swaps the router's table when the registry changes."""

    thread_name = "registry-watch"

    def __init__(self, settings: Settings, feature_names: tuple[str, ...], key: bytes | None = None) -> None:
        self.settings = settings
        self.reader = ControlReader(settings, key)
        self.builder = TableBuilder(settings, feature_names)
        self.reader.catch_up()
        self.swaps = 0
        self.build_error: str | None = None  # the last table that could not be built (None: the current one is)
        self.thread_error: str | None = None  # the last unexpected error of the thread (None: it is running fine)
        self.thread_errors = 0
        try:
            table = self.builder.build(self.reader.state, None)
        except (RegistryError, ValidationError) as exc:
            raise RegistryError(f"cannot start scoring from the registry ({settings.registry_topic}): {exc}. Register "
                                "a version (`streamscore models register DIR`), or `streamscore models sync` when the "
                                "broker lost the control topic") from exc
        self.router = Router(table, shadow_topic=settings.shadow_topic, prediction_topic=settings.prediction_topic)
        self._next_retry = time.monotonic() + RETRY_REJECTED_S
        self._rebuild_due = False
        super().__init__()

    # --- the thread ---------------------------------------------------------------------------------
    def run(self) -> None:
        delay = BACKOFF_S[0]
        try:
            while not self.stopping.is_set():
                try:
                    self.beat()  # an injected fault lands in the handler below, like any other failed round
                    self.step(0.2)
                except Exception as exc:  # a dead watcher would serve a stale table silently: never let it die
                    self.thread_errors += 1
                    self._rebuild_due = True  # records applied before the error have not reached the table yet
                    cause = f"{type(exc).__name__}: {exc}"
                    if cause != self.thread_error:  # once per distinct cause, not once per retry
                        log.error("registry watcher failed, retrying in %.0f s (still scoring with the current "
                                  "table): %s", delay, cause, exc_info=log.isEnabledFor(logging.DEBUG))
                    self.thread_error = cause
                    self.stopping.wait(delay)
                    delay = min(delay * 2, BACKOFF_S[1])
                else:
                    if self.thread_error is not None:
                        log.warning("registry watcher recovered after %d failed attempts", self.thread_errors)
                    self.thread_error, delay = None, BACKOFF_S[0]
        finally:
            self.reader.close()

    def step(self, timeout: float) -> None:
        """One round: apply what arrived, retry refused records now and then, rebuild the table if anything changed."""
        changed = self.reader.poll(timeout)
        if time.monotonic() >= self._next_retry:
            self._next_retry = time.monotonic() + RETRY_REJECTED_S
            changed += self.reader.retry()
            changed += self.build_error is not None  # e.g. an artifact that was missing may be there now
        if changed or self._rebuild_due:
            self._rebuild_due = False
            self.rebuild()

    def rebuild(self) -> None:
        try:
            table = self.builder.build(self.reader.state, self.router.table)
        except Exception as exc:  # whatever a version fails with (a refused pickle, a bad ONNX graph): keep serving
            cause = str(exc) if isinstance(exc, RegistryError | ValidationError | OSError) else \
                f"{type(exc).__name__}: {exc}"
            if cause != self.build_error:
                log.error("registry change not applied, still scoring with the previous table: %s", cause)
            self.build_error = cause
            return
        self.router.swap(table)
        self.swaps += 1
        ROUTING_SWAPS.inc()
        self.build_error = None
        log.info("registry routing swapped (generation %d): %s", table.generation, _describe(table))

    # --- health -------------------------------------------------------------------------------------
    def _served_keys(self) -> set[str]:
        """Registry keys whose records decide what this worker scores with."""
        table = self.router.table
        models = {s.name for lane in [table.default, *table.routes.values()]
                  for s in (*lane.scorers, *lane.shadow_scorers)}
        if self.settings.registry_model:
            models.add(self.settings.registry_model)
        routes = {DEFAULT_ROUTE_KEY, *self.settings.input_topics, *table.routes}
        return {f"model:{m}" for m in models} | {f"route:{t}" for t in routes}

    def blocked(self) -> list[str]:
        """Authentic records this worker had to refuse for a model or route it serves: it is behind the registry."""
        pending = self.reader.follower.status()["pending"]
        served = self._served_keys()
        return [p for p in pending if p.rpartition("@")[0] in served]

    @property
    def last_error(self) -> str | None:
        """Why this worker does not score with what the registry says (None: it does)."""
        if self.thread_error is not None:
            return f"registry watcher failing: {self.thread_error}"
        if not self.alive and self._thread is not None and not self.stopping.is_set():
            return "registry watcher thread is not running"
        blocked = self.blocked()
        if blocked:
            reasons = {r.key: r.reason for r in self.reader.follower.rejected if r.key is not None}
            return "; ".join(f"{b} refused: {reasons.get(b.rpartition('@')[0], 'see control.rejected')}"
                             for b in blocked)
        return self.build_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        # BackgroundThread's supervisor records the error of a crashed run() here (and None in __init__); without
        # a setter every registry worker died at start with AttributeError.
        self.thread_error = value

    @property
    def healthy(self) -> bool:
        return self.last_error is None


class FeedbackLane(BackgroundThread):
    """Labels (all partitions, no group, from the end at start) -> rewards for the arms that scored those events."""

    thread_name = "routing-feedback"

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.labels = self.rewarded = 0
        self._consumer: Consumer | None = None
        super().__init__()

    def start(self) -> None:
        s = self.settings
        self._consumer = clients.standalone_consumer(s.kafka, f"{s.app_id}-routing-feedback", **{
            "fetch.wait.max.ms": s.background_fetch_wait_ms})
        # From the end as of now (resolved here, before the worker is ready): older labels are for events this
        # worker never served, since that map starts empty.
        meta = self._consumer.list_topics(s.labels_topic, timeout=15).topics[s.labels_topic]
        ends = [TopicPartition(s.labels_topic, p) for p in meta.partitions]
        self._consumer.assign([TopicPartition(tp.topic, tp.partition, self._consumer.get_watermark_offsets(
            tp, timeout=15)[1]) for tp in ends])
        super().start()

    def run(self) -> None:
        consumer = self._consumer
        while not self.stopping.is_set():
            self.beat()
            for msg in clients.records(consumer, 500, 0.2, where="routing feedback"):
                try:
                    label = decode_label(msg.value())
                except InvalidLabel:
                    continue  # the learner's lane dead-letters bad labels; here they just carry no reward
                self.labels += 1
                self.rewarded += self.router.learn(label.event_id, label.label, label.reward)

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        # Closed here, not when run ends: after an error the supervisor runs it again with the same consumer, and
        # a stop during the back-off wait after an error never returns to run (its consumer was left open).
        if self._consumer is not None and not self.alive:
            self._consumer.close()
            self._consumer = None


class Registry:
    """The capability's objects in a worker: watcher, router, feedback lane, canary rollbacks."""

    def __init__(self, settings: Settings, feature_names: tuple[str, ...]) -> None:
        self.settings = settings
        ensure_registry_topic(settings)
        single = settings.model_copy(update={"partitions": 1})  # as online learning wants it (one learner)
        ensure_topics(single, [settings.labels_topic])
        ensure_topics(settings, [settings.shadow_topic])
        key = settings.signing_key_bytes()  # one key for the registry and the snapshots; none on Kafka: stop here
        self.watcher = RegistryWatcher(settings, feature_names, key)
        self.router = self.watcher.router
        self.router.feedback = Feedback(settings.join_ttl_s, settings.join_max_size)
        self.router.on_breach = self._on_breach
        self.feedback = FeedbackLane(settings, self.router)
        self._rollbacks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="canary-rollback")
        self._registry: Callable[[], ModelRegistry] = lambda: registry_for(settings, feature_names)
        self.rollbacks: list[str] = []

    def _on_breach(self, topic: str, spec: RouteSpec, reason: str) -> None:
        # Off the scoring thread: the registry write takes a file lock and a broker round trip.
        self._rollbacks.submit(self._record_rollback, topic or DEFAULT_ROUTE_KEY, spec, reason)

    def _record_rollback(self, key: str, spec: RouteSpec, reason: str) -> None:
        rolled = spec.model_copy(update={"rolled_back": reason}).model_dump(mode="json", exclude_defaults=True)
        try:
            record = self._registry().set_route(key, rolled, kind="canary_rollback", reason=reason,
                                                unless=lambda current: bool(current and current.get("rolled_back")))
            self.rollbacks.append(reason)
            log.warning("canary on %s rolled back in the registry (%s): %s", key,
                        f"record {record.seq}" if record else "already rolled back by another worker", reason)
        except Exception:
            log.exception("canary rollback on %s could not be recorded; this worker routes to the baseline", key)

    def start(self) -> None:
        self.watcher.start()
        self.feedback.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.feedback.stop()
        self._rollbacks.shutdown(wait=True)

    @property
    def healthy(self) -> bool:
        """False while the worker cannot score with what the registry says (see ``last_error``); for /readyz."""
        return self.watcher.healthy

    @property
    def last_error(self) -> str | None:
        return self.watcher.last_error

    def status(self) -> dict[str, object]:
        return {**self.router.table.describe(), "swaps": self.watcher.swaps, "healthy": self.healthy,
                "last_error": self.last_error, "control": self.watcher.reader.follower.status(),
                "labels_read": self.feedback.labels, "labels_rewarded": self.feedback.rewarded,
                "canary_rollbacks": self.rollbacks}


class _RegistryService(Service):
    def __init__(self, registry: Registry, **kwargs: object) -> None:
        self.registry = registry
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        # logged here: Faust configures logging only once the worker starts
        log.info("registry routing: %s", _describe(self.registry.router.table))
        await self.loop.run_in_executor(None, self.registry.start)

    async def on_stop(self) -> None:
        await self.loop.run_in_executor(None, self.registry.stop)


def register_registry(app: AppT, settings: Settings, pipeline: ScoringPipeline,
                      feature_names: Sequence[str]) -> Registry | None:
    """Route ``pipeline``'s scoring through the model registry when ``settings.registry_model`` is set."""
    if not settings.registry_model:
        return None
    registry = Registry(settings, tuple(feature_names))
    pipeline.router = registry.router  # before any batch: the first event already uses the registry
    app.service(_RegistryService(registry))

    @app.page("/registry")
    async def registry_status(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json(registry.status())

    return registry
