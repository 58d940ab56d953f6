"""Routing policies: which registered model version scores which event, per input topic.

Every policy has the same tiny interface (River style), and none of them touches Kafka:

* ``arms``: the model refs (alias or version) it routes between; ``shadow_arms``: refs scored on the side;
* ``pick_many(keys) -> np.ndarray``: the arm index for each event (keys are entity ids);
* ``learn_one(arm, reward)``: feedback for an event an arm scored (reward in [0, 1], from the labels topic);
* ``observe(arm, n, seconds, failed)``: how scoring a batch with an arm went (canary health);
* ``breach() -> str | None``: why the policy must be rolled back (canary only).

>>> spec = RouteSpec(policy="ab", variants={"champion": 90, "challenger": 10}, salt="exp-1")
>>> ab = make_policy(spec)
>>> keys = [f"acct-{i}" for i in range(10_000)]
>>> picks = ab.pick_many(keys)
>>> round(float((picks == 1).mean()), 2), bool((ab.pick_many(keys) == picks).all())  # ~10 %, sticky
(0.1, True)
>>> bandit = make_policy(RouteSpec(policy="bandit", arms=["1", "2"], algorithm="thompson", seed=3))
>>> for _ in range(200):
...     bandit.learn_one("1", 0.0); bandit.learn_one("2", 1.0)
>>> float((bandit.pick_many(keys[:1000]) == 1).mean()) > 0.95
True

``Router`` applies the policies of a ``RoutingTable`` to a pipeline's micro-batch; the table (policies
plus the loaded scorers) is swapped as a whole by the registry watcher, so a batch is always scored by
one consistent table: a swap never drops or re-scores an event.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models.scorer import Scorer
from schemas.routes import RouteSpec
from streams.metrics import CANARY_ROLLBACKS, PREDICTIONS_OUT
from streams.scoring.records import RecordBuilder

if TYPE_CHECKING:
    from streams.kafka.publisher import Outbound

log = logging.getLogger(__name__)

_route_ids = itertools.count(1)


def stable_unit(keys: Sequence[str], salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per key, the same in every process and run (not Python's salted hash()).

    >>> stable_unit(["a", "b"], "s").tolist() == stable_unit(["a", "b"], "s").tolist()
    True
    """
    prefix = salt.encode() + b"\x00"
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + k.encode(), digest_size=8).digest(), "big") for k in keys),
        dtype=np.float64, count=len(keys),
    ) / 2.0**64


class Policy:
    """Base: one arm, no feedback, never breaches."""

    name: str = "single"
    learns: bool = False  # whether labels matter: only then does the router remember which arm served what

    def __init__(self, arms: Sequence[str], shadow_arms: Sequence[str] = (), name: str | None = None) -> None:
        self.name = name or self.name
        self.arms = tuple(arms)
        self.shadow_arms = tuple(shadow_arms)
        self._lock = threading.Lock()  # picks run on the scoring thread, feedback on the labels thread

    def pick_many(self, keys: Sequence[str]) -> np.ndarray:
        return np.zeros(len(keys), dtype=np.intp)

    def learn_one(self, arm: str, reward: float) -> None:
        """Feedback for one event ``arm`` scored; ignored by policies that do not learn."""

    def observe(self, arm: str, n: int, seconds: float, failed: bool) -> None:
        """How scoring ``n`` events with ``arm`` went; ignored by policies without health checks."""

    def breach(self) -> str | None:
        return None

    def stats(self) -> dict[str, object]:
        return {}


class ABSplit(Policy):
    """Weighted split by a salted hash of the entity id: an entity always sees the same variant."""

    name = "ab"

    def __init__(self, weights: dict[str, float], salt: str) -> None:
        super().__init__(list(weights))
        w = np.asarray(list(weights.values()), dtype=np.float64)
        self._edges = np.cumsum(w / w.sum())[:-1]
        self.salt = salt

    def pick_many(self, keys: Sequence[str]) -> np.ndarray:
        return np.searchsorted(self._edges, stable_unit(keys, self.salt), side="right").astype(np.intp)


class Canary(ABSplit):
    """``percent`` of entities (sticky) go to the candidate; rolled back when its health breaches a threshold.

    Errors are scoring failures (the rows then fall back to the baseline) plus labelled events the
    candidate got wrong (reward < 0.5); latency is the candidate's mean ONNX ``predict_many`` time per event.

    >>> c = Canary("champion", "challenger", 50, max_error_rate=0.2, max_latency_ms=None, min_events=10, salt="")
    >>> for _ in range(10):
    ...     c.learn_one("challenger", 0.0)
    >>> c.breach()
    'canary challenger error rate 1.00 > 0.20 over 10 events'
    """

    name = "canary"
    learns = True

    def __init__(self, baseline: str, candidate: str, percent: float, max_error_rate: float | None,
                 max_latency_ms: float | None, min_events: int, salt: str) -> None:
        super().__init__({baseline: 100.0 - percent, candidate: percent}, salt)
        self.candidate = candidate
        self.max_error_rate, self.max_latency_ms, self.min_events = max_error_rate, max_latency_ms, min_events
        self.errors = self.observed = 0
        self.scored, self.seconds = 0, 0.0

    def learn_one(self, arm: str, reward: float) -> None:
        if arm == self.candidate:
            with self._lock:
                self.observed += 1
                self.errors += reward < 0.5

    def observe(self, arm: str, n: int, seconds: float, failed: bool) -> None:
        if arm != self.candidate:
            return
        with self._lock:
            if failed:
                self.observed += n
                self.errors += n
            else:
                self.scored += n
                self.seconds += seconds

    def breach(self) -> str | None:
        with self._lock:
            if self.max_error_rate is not None and self.observed >= self.min_events:
                rate = self.errors / self.observed
                if rate > self.max_error_rate:
                    return (f"canary {self.candidate} error rate {rate:.2f} > {self.max_error_rate:.2f} "
                            f"over {self.observed} events")
            if self.max_latency_ms is not None and self.scored >= self.min_events:
                mean_ms = 1000 * self.seconds / self.scored
                if mean_ms > self.max_latency_ms:
                    return (f"canary {self.candidate} mean latency {mean_ms:.3f} ms/event > {self.max_latency_ms} ms "
                            f"over {self.scored} events")
        return None

    def stats(self) -> dict[str, object]:
        return {"errors": self.errors, "observed": self.observed, "scored": self.scored,
                "mean_ms_per_event": 1000 * self.seconds / self.scored if self.scored else None}


class Bandit(Policy):
    """Multi-armed bandit over model versions, rewarded from the labels topic (per event, not sticky).

    ``thompson``: Beta(1 + reward sum, 1 + (n - reward sum)) per arm, one draw per arm per event.
    ``epsilon_greedy``: a uniformly random arm with probability epsilon, otherwise the best mean
    reward so far (arms not yet rewarded count as best, so each is tried).
    """

    name = "bandit"
    learns = True

    def __init__(self, arms: Sequence[str], algorithm: str, epsilon: float, seed: int | None) -> None:
        super().__init__(arms)
        self.algorithm, self.epsilon = algorithm, epsilon
        self.n = np.zeros(len(self.arms))
        self.rewards = np.zeros(len(self.arms))
        self._rng = np.random.default_rng(seed)
        self._index = {a: i for i, a in enumerate(self.arms)}

    def pick_many(self, keys: Sequence[str]) -> np.ndarray:
        k, size = len(self.arms), len(keys)
        with self._lock:
            if self.algorithm == "thompson":
                draws = self._rng.beta(1 + self.rewards, 1 + self.n - self.rewards, size=(size, k))
                return draws.argmax(axis=1).astype(np.intp)
            means = np.where(self.n > 0, self.rewards / np.maximum(self.n, 1), np.inf)
            picks = np.full(size, int(np.argmax(means)), dtype=np.intp)
            explore = self._rng.random(size) < self.epsilon
            picks[explore] = self._rng.integers(0, k, int(explore.sum()))
            return picks

    def learn_one(self, arm: str, reward: float) -> None:
        i = self._index.get(arm)
        if i is not None:
            with self._lock:
                self.n[i] += 1
                self.rewards[i] += min(1.0, max(0.0, reward))

    def stats(self) -> dict[str, object]:
        return {a: {"n": int(self.n[i]), "mean_reward": float(self.rewards[i] / self.n[i]) if self.n[i] else None}
                for i, a in enumerate(self.arms)}


def make_policy(spec: RouteSpec) -> Policy:
    if spec.policy == "single":
        return Policy([spec.version])
    if spec.policy == "canary" and spec.rolled_back:
        return Policy([spec.baseline], name="canary")  # route "canary:<baseline>": the spec says why
    if spec.policy == "ab":
        return ABSplit(spec.variants, spec.salt)
    if spec.policy == "canary":
        return Canary(spec.baseline, spec.candidate, spec.percent, spec.max_error_rate, spec.max_latency_ms,
                      spec.min_events, spec.salt)
    if spec.policy == "shadow":
        return Policy([spec.baseline], [spec.candidate], name="shadow")
    return Bandit(spec.arms, spec.algorithm, spec.epsilon, spec.seed)


@dataclass(frozen=True)
class TopicRoute:
    """The routing of one input topic: a spec, its policy and the scorers of its arms (aligned)."""

    spec: RouteSpec
    policy: Policy
    scorers: tuple[Scorer, ...]
    shadow_scorers: tuple[Scorer, ...] = ()
    route_id: int = field(default_factory=lambda: next(_route_ids))  # kept when a rebuild reuses the lane

    def same_as(self, spec: RouteSpec, scorers: Sequence[Scorer], shadow: Sequence[Scorer]) -> bool:
        """Same spec and same artifacts: a table rebuild keeps this lane and its learned state."""
        return (spec == self.spec and [s.sha256 for s in scorers] == [s.sha256 for s in self.scorers]
                and [s.sha256 for s in shadow] == [s.sha256 for s in self.shadow_scorers])

    @property
    def route_names(self) -> tuple[str, ...]:
        return tuple(f"{self.policy.name}:{a}" for a in self.policy.arms)


@dataclass(frozen=True)
class RoutingTable:
    """Routes by input topic plus the default route (topics without a route of their own); immutable."""

    routes: dict[str, TopicRoute]
    default: TopicRoute
    generation: int = 0

    def route_for(self, topic: str) -> TopicRoute:
        return self.routes.get(topic, self.default)

    def describe(self) -> dict[str, object]:
        def one(lane: TopicRoute) -> dict[str, object]:
            return {"spec": lane.spec.model_dump(exclude_defaults=True),
                    "arms": {a: f"{s.name}@{s.version}" for a, s in zip(lane.policy.arms, lane.scorers, strict=True)},
                    "shadow": {a: f"{s.name}@{s.version}"
                               for a, s in zip(lane.policy.shadow_arms, lane.shadow_scorers, strict=True)},
                    "stats": lane.policy.stats()}
        return {"generation": self.generation, "default": one(self.default),
                "topics": {t: one(lane) for t, lane in self.routes.items()}}


@dataclass(slots=True)
class _Served:
    topic: str
    arm: str
    label: str
    route_id: int


class Feedback:
    """Which arm scored which event, held until the event's label arrives; bounded by TTL and size.

    Not ``online_learning.join.JoinStore``: that store joins a feature row with a prediction, and here
    there is only the serving side. A label takes its entry, so a redelivered label rewards nothing.

    >>> fb = Feedback(ttl_s=60, max_size=2)
    >>> fb.served(["e1", "e2", "e3"], "features", "challenger", ["risky"] * 3, route_id=1)
    >>> fb.take("e1") is None, fb.take("e3").arm, fb.take("e3")  # e1 evicted by the size bound
    (True, 'challenger', None)
    """

    def __init__(self, ttl_s: float, max_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_size, self._clock = ttl_s, max_size, clock
        self._entries: OrderedDict[str, tuple[float, _Served]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def served(self, event_ids: Sequence[str], topic: str, arm: str, labels: Sequence[str], route_id: int) -> None:
        now = self._clock()
        with self._lock:
            for event_id, label in zip(event_ids, labels, strict=True):
                self._entries.setdefault(event_id, (now, _Served(topic, arm, label, route_id)))  # first serve wins
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
            horizon = now - self.ttl_s
            while self._entries and next(iter(self._entries.values()))[0] < horizon:
                self._entries.popitem(last=False)

    def take(self, event_id: str) -> _Served | None:
        with self._lock:
            entry = self._entries.pop(event_id, None)
        if entry is None or entry[0] < self._clock() - self.ttl_s:
            return None
        return entry[1]


def reward_of(label: str | float, reward: float | None, predicted: str) -> float:
    """The label's explicit reward when it has one, else 1 for a correct predicted class and 0 otherwise.

    >>> reward_of("risky", None, "risky"), reward_of("legit", None, "risky"), reward_of("legit", 0.3, "risky")
    (1.0, 0.0, 0.3)
    """
    if reward is not None:
        return float(reward)
    return 1.0 if str(label) == predicted else 0.0


BreachHandler = Callable[[str, RouteSpec, str], None]


class Router:
    """Applies the current ``RoutingTable`` to a micro-batch; swapped as a whole with ``swap``."""

    def __init__(self, table: RoutingTable, feedback: Feedback | None = None,
                 on_breach: BreachHandler | None = None, shadow_topic: str = "predictions-shadow",
                 prediction_topic: str = "predictions") -> None:
        self.table = table
        self.prediction_topic = prediction_topic
        self.feedback = feedback
        self.on_breach = on_breach
        self.shadow_topic = shadow_topic
        self._swap_lock = threading.Lock()

    def swap(self, table: RoutingTable) -> None:
        # One attribute store: a batch reads self.table once, so it sees the old or the new table, never a mix.
        with self._swap_lock:
            self.table = table

    def rollback_locally(self, topic: str | None, spec: RouteSpec, reason: str) -> None:
        """Send a breached canary's traffic to its baseline at once, before the registry round trip."""
        with self._swap_lock:
            table = self.table
            rolled = spec.model_copy(update={"rolled_back": reason})
            old = table.route_for(topic) if topic is not None else table.default
            lane = TopicRoute(rolled, make_policy(rolled), (old.scorers[0],))
            if topic is None:
                self.table = RoutingTable(table.routes, lane, table.generation)
            else:
                self.table = RoutingTable({**table.routes, topic: lane}, table.default, table.generation)

    def route(self, records: RecordBuilder, good: list, X: np.ndarray, received_ms: int) -> list[Outbound]:
        """Score ``good`` (message, event) pairs, rows of ``X``, as the table says; outputs for the publisher."""
        table = self.table
        outputs: list[Outbound] = []
        topics = np.asarray([msg.topic for msg, _ in good], dtype=object)
        for topic in dict.fromkeys(topics.tolist()):
            idx = np.flatnonzero(topics == topic)
            own = topic in table.routes
            lane = table.route_for(topic)
            reason = lane.policy.breach()  # judged before picking: labels that came since count for this batch
            if reason is not None:
                log.warning("rolling back %s on %s: %s", lane.spec.policy, topic, reason)
                CANARY_ROLLBACKS.labels(topic).inc()
                self.rollback_locally(topic if own else None, lane.spec, reason)
                if self.on_breach is not None:
                    self.on_breach(topic if own else "", lane.spec, reason)
                lane = self.table.route_for(topic)
            whole = idx.size == len(good)  # the common case: one topic per batch, no copies needed
            rows, X_topic = (good, X) if whole else ([good[i] for i in idx], X[idx])
            if len(lane.policy.arms) == 1:
                outputs.extend(self._score(records, lane, lane.policy.arms[0], lane.scorers[0], topic, rows,
                                           X_topic, received_ms))
            else:
                picks = lane.policy.pick_many([event.entity_id for _, event in rows])
                for arm_i, (arm, scorer) in enumerate(zip(lane.policy.arms, lane.scorers, strict=True)):
                    chosen = np.flatnonzero(picks == arm_i)
                    if chosen.size:
                        outputs.extend(self._score(records, lane, arm, scorer, topic, [rows[i] for i in chosen],
                                                   X_topic[chosen], received_ms))
            for arm, scorer in zip(lane.policy.shadow_arms, lane.shadow_scorers, strict=True):
                try:
                    batch = scorer.predict_many(X_topic)
                    outputs.extend(records.predictions(rows, X_topic, batch, scorer, route=f"shadow:{arm}",
                                                       topic=self.shadow_topic, received_ms=received_ms))
                except Exception:  # a broken shadow must never cost the primary its predictions
                    log.exception("shadow %s (%s@%s) failed on a batch", arm, scorer.name, scorer.version)
        return outputs

    def _score(self, records: RecordBuilder, lane: TopicRoute, arm: str, scorer: Scorer,
               topic: str, rows: list, X: np.ndarray, received_ms: int) -> list[Outbound]:
        route = f"{lane.policy.name}:{arm}"
        started = time.perf_counter()
        try:
            batch = scorer.predict_many(X)
        except Exception:
            if scorer is lane.scorers[0]:
                raise  # the baseline itself failed: let the engine retry the batch, as without routing
            log.exception("%s (%s@%s) failed; its rows fall back to %s", route, scorer.name, scorer.version,
                          lane.policy.arms[0])
            lane.policy.observe(arm, len(rows), time.perf_counter() - started, failed=True)
            return self._score(records, lane, lane.policy.arms[0], lane.scorers[0], topic, rows, X,
                               received_ms)
        lane.policy.observe(arm, len(rows), time.perf_counter() - started, failed=False)
        outputs = records.predictions(rows, X, batch, scorer, route=route, topic=self.prediction_topic,
                                      received_ms=received_ms)
        PREDICTIONS_OUT.labels(scorer.name, scorer.version).inc(len(rows))
        if self.feedback is not None and lane.policy.learns:
            self.feedback.served([event.event_id for _, event in rows], topic, arm,
                                 [str(label) for label in batch.labels], lane.route_id)
        return outputs

    def learn(self, event_id: str, label: str | float, reward: float | None) -> bool:
        """Reward the arm that scored ``event_id``; False when unknown here or the table changed since."""
        if self.feedback is None:
            return False
        served = self.feedback.take(event_id)
        if served is None:
            return False
        lane = self.table.route_for(served.topic)
        if lane.route_id != served.route_id:
            return False  # the policy that chose the arm is gone; its successor starts fresh
        lane.policy.learn_one(served.arm, reward_of(label, reward, served.label))
        return True
