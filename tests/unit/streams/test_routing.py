"""Routing policies and the router, without a broker: splits, stickiness, canary health, bandits, table swaps,
and the feedback lane's consumer lifecycle."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from models.demo import FEATURE_NAMES, sample_events
from models.registry import ModelRegistry
from models.train_demo import train_demo_model
from streams.routing.router import ABSplit, Bandit, Canary, Feedback, Router, RouteSpec, make_policy, stable_unit
from streams.routing.watcher import TableBuilder
from streams.scoring.pipeline import InboundMessage, ScoringPipeline
from streams.settings import Settings

KEYS = [f"acct-{i}" for i in range(20_000)]


def within_binomial(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# --- policies ------------------------------------------------------------------------------------
def test_ab_split_proportions_and_stickiness():
    policy = ABSplit({"champion": 70, "challenger": 20, "2": 10}, salt="exp")
    picks = policy.pick_many(KEYS)
    for arm, p in enumerate([0.7, 0.2, 0.1]):
        assert within_binomial(int((picks == arm).sum()), len(KEYS), p)
    again = ABSplit({"champion": 70, "challenger": 20, "2": 10}, salt="exp").pick_many(KEYS[::-1])[::-1]
    assert (again == picks).all()  # same entity, same variant: in any process, in any order
    reshuffled = ABSplit({"champion": 70, "challenger": 20, "2": 10}, salt="exp-2").pick_many(KEYS)
    assert 0.4 < float((reshuffled == picks).mean()) < 0.7  # another salt is an independent split


def test_stable_unit_is_uniform():
    u = stable_unit(KEYS, "s")
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert all(within_binomial(int(c), len(KEYS), 0.1) for c in counts)


def test_canary_sends_percent_and_rolls_back_on_errors_or_latency():
    canary = Canary("champion", "challenger", 10, max_error_rate=0.2, max_latency_ms=5.0, min_events=100, salt="")
    assert within_binomial(int((canary.pick_many(KEYS) == 1).sum()), len(KEYS), 0.1)
    for i in range(99):
        canary.learn_one("challenger", 0.0 if i % 2 else 1.0)
        canary.learn_one("champion", 0.0)  # the baseline's errors are not the canary's
    assert canary.breach() is None  # 99 < min_events
    canary.learn_one("challenger", 0.0)
    assert canary.breach() == "canary challenger error rate 0.50 > 0.20 over 100 events"

    slow = Canary("champion", "challenger", 10, max_error_rate=None, max_latency_ms=1.0, min_events=100, salt="")
    slow.observe("challenger", 50, 0.5, failed=False)  # 10 ms per event, but only 50 events
    assert slow.breach() is None
    slow.observe("challenger", 50, 0.5, failed=False)
    assert "mean latency 10.000 ms/event > 1.0 ms" in slow.breach()
    failing = Canary("champion", "challenger", 10, max_error_rate=0.5, max_latency_ms=None, min_events=10, salt="")
    failing.observe("challenger", 10, 0.0, failed=True)
    assert "error rate 1.00" in failing.breach()


@pytest.mark.parametrize("algorithm", ["epsilon_greedy", "thompson"])
def test_bandit_converges_to_the_better_arm(algorithm):
    """Bernoulli rewards 0.4 vs 0.6: after 200 rounds of 20 events the better arm gets most traffic."""
    bandit = Bandit(["1", "2"], algorithm, epsilon=0.1, seed=1)
    rng = np.random.default_rng(2)
    p = np.array([0.4, 0.6])
    late = []
    for round_ in range(200):
        picks = bandit.pick_many(KEYS[:20])
        for arm in picks:
            bandit.learn_one(bandit.arms[arm], float(rng.random() < p[arm]))
        if round_ >= 150:
            late.extend(picks.tolist())
    share = float(np.mean(np.asarray(late) == 1))
    assert share > 0.85, (algorithm, share, bandit.stats())
    stats = bandit.stats()
    assert stats["2"]["n"] > stats["1"]["n"] and abs(stats["2"]["mean_reward"] - 0.6) < 0.05


def test_route_spec_validation_and_refs():
    with pytest.raises(ValueError, match="at least two variants"):
        RouteSpec(policy="ab", variants={"champion": 1})
    with pytest.raises(ValueError, match="at least two distinct arms"):
        RouteSpec(policy="bandit", arms=["1", "1"])
    with pytest.raises(ValueError, match="must differ"):
        RouteSpec(policy="shadow", baseline="2", candidate="2")
    assert RouteSpec(policy="canary").refs() == ["champion", "challenger"]
    rolled = make_policy(RouteSpec(policy="canary", rolled_back="too many errors"))
    assert rolled.arms == ("champion",) and not (rolled.pick_many(KEYS[:100])).any()


# --- router over a real pipeline ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    root = tmp_path_factory.mktemp("routing")
    reg = ModelRegistry(root / "registry", FEATURE_NAMES)
    for version, seed in [("1", 7), ("2", 8)]:
        train_demo_model(root / version, seed=seed, n=1500, version=version)
        reg.register(root / version, aliases=["challenger"] if version == "2" else [])
    return reg


def settings_for(registry: ModelRegistry, **routes: dict) -> Settings:
    return Settings(registry_model="demo-risk", registry_dir=registry.root, routes=routes,
                    input_topics={"features": "json", "other": "json"}, worker_id="w")


def pipeline_with(settings: Settings, registry: ModelRegistry) -> tuple[ScoringPipeline, TableBuilder]:
    scorer = registry.load_scorer("demo-risk", "1")
    pipeline = ScoringPipeline(settings.scoring, scorer)
    builder = TableBuilder(settings, scorer.feature_names)
    pipeline.router = Router(builder.build(registry.state, None), Feedback(60, 10_000), shadow_topic="shadow")
    return pipeline, builder


def batch(seed: int, n: int, topic: str = "features") -> list[InboundMessage]:
    return [InboundMessage(topic, 0, i, e["event_id"].encode(), orjson.dumps(e))
            for i, e in enumerate(sample_events(seed, n))]


def test_shadow_scores_both_and_publishes_the_candidate_only_to_the_shadow_topic(registry):
    settings = settings_for(registry, features={"policy": "shadow"})
    pipeline, _ = pipeline_with(settings, registry)
    result = pipeline.process(batch(1, 200) + batch(2, 50, topic="other"))
    main = [orjson.loads(o.value) for o in result.outputs if o.topic == settings.prediction_topic]
    shadow = [orjson.loads(o.value) for o in result.outputs if o.topic == "shadow"]
    assert result.scored == 250 and len(main) == 250 and len(shadow) == 200  # 'other' has no shadow
    assert {p["model_version"] for p in main} == {"1"} and {p["model_version"] for p in shadow} == {"2"}
    assert {p["route"] for p in shadow} == {"shadow:challenger"}
    assert {p["route"] for p in main if p["source_topic"] == "features"} == {"shadow:champion"}
    assert {p["route"] for p in main if p["source_topic"] == "other"} == {"single:champion"}


def test_swapping_the_table_between_batches_changes_the_version_and_scores_each_event_once(registry):
    settings = settings_for(registry)
    pipeline, builder = pipeline_with(settings, registry)
    first = pipeline.process(batch(3, 100))
    registry.promote("demo-risk", "2")
    try:
        pipeline.router.swap(builder.build(registry.state, pipeline.router.table))
        second = pipeline.process(batch(4, 100))
    finally:
        registry.rollback("demo-risk")
    versions = [orjson.loads(o.value)["model_version"] for o in first.outputs + second.outputs]
    assert versions == ["1"] * 100 + ["2"] * 100
    from prometheus_client import REGISTRY

    def info(version: str) -> float | None:
        sha = registry.state.model("demo-risk").versions[version].sha256
        return REGISTRY.get_sample_value("streamscore_model_info", {"model": "demo-risk", "version": version,
                                                                    "sha256": sha})
    assert (info("2"), info("1")) == (1.0, None)  # the gauge names what is served; the retired version is gone
    ids = [orjson.loads(o.value)["event_id"] for o in first.outputs + second.outputs]
    assert len(set(ids)) == 200


def test_table_rebuild_keeps_unchanged_lanes_and_their_learning(registry):
    settings = settings_for(registry, features={"policy": "bandit", "arms": ["1", "2"], "seed": 1})
    pipeline, builder = pipeline_with(settings, registry)
    result = pipeline.process(batch(5, 200))
    lane = pipeline.router.table.route_for("features")
    truth = {orjson.loads(o.value)["event_id"]: orjson.loads(o.value)["label"] for o in result.outputs}
    rewarded = sum(pipeline.router.learn(event_id, label, None) for event_id, label in truth.items())
    assert rewarded == 200 and sum(s["n"] for s in lane.policy.stats().values()) == 200
    assert all(s["mean_reward"] in (None, 1.0) for s in lane.policy.stats().values())  # every label agreed
    assert not pipeline.router.learn("evt-5-0", "risky", None)  # taken already: a duplicate label is no reward
    rebuilt = builder.build(registry.state, pipeline.router.table)  # e.g. after an unrelated registry change
    assert rebuilt.route_for("features") is lane and rebuilt.generation == 2


def test_canary_breach_routes_to_the_baseline_at_once_and_reports_it(registry):
    settings = settings_for(registry, features={"policy": "canary", "percent": 50, "max_error_rate": 0.3,
                                                 "min_events": 20, "salt": "t"})
    pipeline, _ = pipeline_with(settings, registry)
    breaches = []
    pipeline.router.on_breach = lambda topic, spec, reason: breaches.append((topic, spec.policy, reason))
    result = pipeline.process(batch(6, 200))
    preds = [orjson.loads(o.value) for o in result.outputs]
    assert within_binomial(sum(p["model_version"] == "2" for p in preds), 200, 0.5)
    for p in preds:  # every canary prediction turns out wrong
        wrong = "legit" if p["label"] == "risky" else "risky"
        pipeline.router.learn(p["event_id"], wrong if p["model_version"] == "2" else p["label"], None)
    after = [orjson.loads(o.value) for o in pipeline.process(batch(7, 100)).outputs]
    assert breaches and breaches[0][:2] == ("features", "canary") and "error rate 1.00" in breaches[0][2]
    assert {p["model_version"] for p in after} == {"1"}
    assert pipeline.router.table.route_for("features").spec.rolled_back == breaches[0][2]


class _Broken:
    """A scorer whose runtime fails (e.g. a bad graph that loaded): the canary must absorb it."""

    name, version, sha256 = "demo-risk", "broken", "0" * 64

    def predict_many(self, X: np.ndarray) -> None:
        raise RuntimeError("onnxruntime exploded")


def test_a_failing_canary_falls_back_to_the_baseline_and_loses_no_event(registry):
    settings = settings_for(registry, features={"policy": "canary", "percent": 50, "max_error_rate": 0.5,
                                                 "min_events": 1000})
    pipeline, _ = pipeline_with(settings, registry)
    table = pipeline.router.table
    lane = table.route_for("features")
    broken_lane = type(lane)(lane.spec, lane.policy, (lane.scorers[0], _Broken()))  # type: ignore[arg-type]
    pipeline.router.swap(type(table)({"features": broken_lane}, table.default, table.generation))
    result = pipeline.process(batch(8, 300))
    preds = [orjson.loads(o.value) for o in result.outputs]
    assert len({p["event_id"] for p in preds}) == 300 and {p["model_version"] for p in preds} == {"1"}
    entities = [e["entity_id"] for e in sample_events(8, 300)]
    sent_to_canary = int((lane.policy.pick_many(entities) == 1).sum())
    assert sent_to_canary > 50 and lane.policy.stats()["errors"] == sent_to_canary  # counted against the canary


def test_builder_refuses_unknown_refs_and_models_with_other_inputs(registry, tmp_path: Path):
    settings = settings_for(registry, features={"policy": "shadow", "candidate": "ghost"})
    scorer = registry.load_scorer("demo-risk", "1")
    with pytest.raises(ValueError, match="no version or alias 'ghost'"):
        TableBuilder(settings, scorer.feature_names).build(registry.state, None)
    with pytest.raises(ValueError, match="builds rows of"):
        TableBuilder(settings_for(registry), tuple(reversed(scorer.feature_names))).build(registry.state, None)


# --- docstring examples stay runnable -------------------------------------------------------------------
@pytest.mark.parametrize("module_name", ["models.registry", "models.registry_diff", "models.registry_river",
                                         "models.composite",
                                         "streams.routing.router", "streams.routing.watcher"])
def test_docstring_examples(module_name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --- the feedback lane's consumer ------------------------------------------------------------------------------
class _LabelsConsumer:
    """What FeedbackLane asks of its consumer; ``consume`` fails ``failures`` times, then returns nothing."""

    def __init__(self, failures: int) -> None:
        self.failures, self.consumed, self.closed = failures, 0, 0

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None, 1: None})})

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        return 0, 5

    def assign(self, partitions: list) -> None:
        self.assigned = partitions

    def consume(self, n: int, timeout: float) -> list:
        self.consumed += 1
        if self.failures:
            self.failures -= 1
            raise RuntimeError("broker gone")
        time.sleep(0.01)
        return []

    def close(self) -> None:
        if self.closed:
            raise RuntimeError("Consumer closed")  # as confluent-kafka's does
        self.closed += 1


@pytest.mark.parametrize(("failures", "restarts"), [(0, 0), (1, 1), (5, 0)], ids=["running", "restarted", "waiting"])
def test_feedback_lane_closes_its_consumer_once_however_it_is_stopped(monkeypatch: pytest.MonkeyPatch,
                                                                       failures: int, restarts: int) -> None:
    # "waiting": stopped during the back-off after a failure, where run never ends to close it (it stayed open)
    from streams.routing import watcher

    fake = _LabelsConsumer(failures)
    monkeypatch.setattr(watcher.clients, "standalone_consumer", lambda *a, **k: fake)
    lane = watcher.FeedbackLane(Settings(), router=None)  # type: ignore[arg-type]  # no label arrives to reward
    lane.backoff_s = (0.05,) if failures == 1 else (30.0,)
    lane.start()
    deadline = time.monotonic() + 5
    while (fake.consumed < 3 if failures != 5 else fake.consumed < 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    lane.stop(timeout=2)
    assert (fake.closed, lane.restarts, lane.alive) == (1, restarts, False)
    assert [(tp.partition, tp.offset) for tp in fake.assigned] == [(0, 5), (1, 5)]  # from the end, as of start
