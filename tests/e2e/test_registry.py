"""End to end over the embedded broker: registry hot swap and every routing policy, with real worker processes.

The hot swap runs on both engines; each policy runs on one (they live in the transport-free pipeline,
which both engines share). Archiving and drift monitoring are off here: they are other capabilities,
and the 2-core machine is shared.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from models.card import ModelCard
from models.demo import CLASS_NAMES, make_dataset, sample_events
from models.registry import ModelRegistry
from models.train_demo import export_demo_model, fit_demo_classifier, train_demo_model
from schemas.drift import DriftRecord, decode
from schemas.drift_thresholds import DriftThresholds
from schemas.labels import Label, encode_label
from streams.cli.produce import encode_events, produce
from streams.kafka.publisher import Outbound, Publisher
from streams.kafka.reader import read_all, wait_for
from streams.routing.router import ABSplit
from streams.routing.watcher import ensure_registry_topic, registry_for
from tests.conftest import free_port
from tests.support.health import get, watch
from tests.support.registry_worker import registry_status, start_on_known_port, wait_registry_status

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def model_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v2") / "2"
    train_demo_model(out, seed=8, n=5000, version="2")
    return out


@pytest.fixture(scope="module")
def model_bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 3: trained on flipped labels, so it is wrong about 9 times in 10 (what a canary must catch)."""
    out = tmp_path_factory.mktemp("bad") / "3"
    _clf, split = fit_demo_classifier(seed=9, n=3000)
    flipped = GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0)
    flipped.fit(split.X_train, 1 - split.y_train)
    export_demo_model(flipped, split, out, version="3")
    return out


@pytest.fixture
def rflow(flow, model_dir, model_v2, model_bad):
    """The flow of conftest with a registry: v1 champion, v2 challenger, v3 (bad) registered."""
    run = flow.settings.app_id
    flow.settings = flow.settings.model_copy(update={
        "registry_model": "demo-risk", "registry_topic": f"_registry-{run}", "labels_topic": f"labels-{run}",
        "shadow_topic": f"shadow-{run}", "archive": False, "drift_window": 0,
    })
    ensure_registry_topic(flow.settings)
    registry = registry_for(flow.settings)
    registry.register(model_dir)
    registry.register(model_v2, aliases=["challenger"])
    registry.register(model_bad)
    flow.registry = registry
    return flow








def predictions(settings, topic: str, wanted: set[str], timeout: float = 60) -> list[dict]:
    def covered(messages) -> bool:
        return wanted <= {orjson.loads(m.value())["event_id"] for m in messages}

    return [orjson.loads(m.value()) for m in wait_for(settings, topic, covered, timeout)]


def send_labels(settings, events: list[dict], seed: int) -> None:
    """The true class of each event (sample_events(seed, n) rows are make_dataset(seed, n) rows)."""
    _X, y = make_dataset(seed, len(events))
    publisher = Publisher(settings.kafka)
    publisher.send_batch([
        Outbound(settings.labels_topic, e["event_id"].encode(),
                 encode_label(Label(event_id=e["event_id"], label=CLASS_NAMES[int(label)], label_time=0)))
        for e, label in zip(events, y, strict=True)
    ]).wait(30)
    publisher.close()


# --- hot swap --------------------------------------------------------------------------------------
def test_promote_mid_stream_swaps_within_seconds_with_every_event_scored_exactly_once(rflow):
    s = rflow.settings
    start_on_known_port(rflow)
    events = sample_events(41, 8000)
    producer = threading.Thread(target=produce, args=(s, rflow.json_topic, list(encode_events(events))),
                                kwargs={"rate": 1000})
    producer.start()
    wait_for(s, s.prediction_topic, lambda ms: len(ms) >= 1500, timeout=60)
    promoted_ms = time.time_ns() // 1_000_000
    rflow.registry.promote("demo-risk", "2")  # what `streamscore models promote demo-risk 2` does
    producer.join()
    preds = predictions(s, s.prediction_topic, {e["event_id"] for e in events})

    ids = [p["event_id"] for p in preds]
    assert len(ids) == len(set(ids)) == len(events), "an event was lost or scored twice"
    v2 = ModelCard.load(rflow.registry.root / "models/demo-risk/2")
    first_v2 = min(p["scored_at"] for p in preds if p["model_version"] == "2")
    swap_s = (first_v2 - promoted_ms) / 1000
    by_partition = collections.defaultdict(list)
    for p in sorted(preds, key=lambda p: p["source_offset"]):
        by_partition[p["source_partition"]].append(p["model_version"])
    for versions in by_partition.values():  # one clean switch per partition: 1 ... 1 2 ... 2
        assert versions == sorted(versions) and versions[0] == "1" and versions[-1] == "2"
    late = [p for p in preds if p["scored_at"] > promoted_ms + 3000]
    assert late and all(p["model_version"] == "2" and p["model_sha256"] == v2.onnx_sha256 for p in late)
    counts = collections.Counter(p["model_version"] for p in preds)
    print(f"engine {s.engine}: promote -> first v2 prediction {swap_s:.2f} s; scored by v1 {counts['1']}, "
          f"v2 {counts['2']}, duplicates 0")
    assert 0 <= swap_s < 3

    rflow.registry.rollback("demo-risk")  # and back, equally without a restart
    time.sleep(1.5)
    more = sample_events(42, 200)
    produce(s, rflow.json_topic, encode_events(more))
    after = predictions(s, s.prediction_topic, {e["event_id"] for e in more})
    assert {p["model_version"] for p in after if p["event_id"].startswith("evt-42-")} == {"1"}


@pytest.mark.parametrize("engine", ["batch"])
def test_every_worker_of_the_group_follows_a_promotion(rflow):
    s = rflow.settings
    start_on_known_port(rflow)
    start_on_known_port(rflow)  # two workers share the input partitions; each follows the control topic on its own
    during = sample_events(49, 3000)
    producer = threading.Thread(target=produce, args=(s, rflow.json_topic, list(encode_events(during))),
                                kwargs={"rate": 1000})
    producer.start()
    wait_for(s, s.prediction_topic, lambda ms: len(ms) >= 500, timeout=60)
    promoted_ms = time.time_ns() // 1_000_000
    rflow.registry.promote("demo-risk", "2")
    producer.join()
    time.sleep(1.0)
    after = sample_events(50, 1000)  # keyed by event id: spread over every partition, so over both workers
    produce(s, rflow.json_topic, encode_events(after))
    preds = predictions(s, s.prediction_topic, {e["event_id"] for e in during + after})

    assert {p["event_id"] for p in preds} == {e["event_id"] for e in during + after}
    workers = {p["worker"] for p in preds}
    late = [p for p in preds if p["event_id"].startswith("evt-50-")]
    assert len(workers) == 2 and {p["worker"] for p in late} == workers  # both scored after the promotion...
    assert {p["model_version"] for p in late} == {"2"}  # ...and both with the new champion
    first_v2 = {w: min(p["scored_at"] for p in preds if p["worker"] == w and p["model_version"] == "2")
                for w in workers}
    print("promote -> first v2 prediction per worker (s):",
          sorted(round((t - promoted_ms) / 1000, 2) for t in first_v2.values()))


# --- policies --------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["faust"])
def test_ab_split_is_sticky_per_entity_and_proportional(rflow):
    s = rflow.settings
    spec = {"policy": "ab", "variants": {"champion": 70, "challenger": 30}, "salt": "exp-7"}
    rflow.settings = s.model_copy(update={"routes": {"*": spec}})  # from configuration this time
    start_on_known_port(rflow)
    events = sample_events(43, 3000, n_entities=1500)
    produce(s, rflow.json_topic, encode_events(events))
    preds = predictions(s, s.prediction_topic, {e["event_id"] for e in events})

    versions_of = collections.defaultdict(set)
    for p in preds:
        versions_of[p["entity_id"]].add(p["model_version"])
    assert all(len(v) == 1 for v in versions_of.values()), "an entity saw both variants"
    entities = sorted(versions_of)
    expected = ABSplit({"champion": 70, "challenger": 30}, "exp-7").pick_many(entities)
    assert [versions_of[e].pop() for e in entities] == ["1" if i == 0 else "2" for i in expected]
    n, share = len(entities), float(np.mean(expected == 1))
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5, (n, share)  # binomial bound, 4 sigma
    assert {p["route"] for p in preds} == {"ab:champion", "ab:challenger"}

    # the configured route is replaced at run time (what `streamscore models route '*' SPEC` records)
    rflow.registry.set_route("*", {"policy": "single", "version": "challenger"})
    time.sleep(1.5)
    later = sample_events(48, 300, n_entities=1500)
    produce(s, rflow.json_topic, encode_events(later))
    after = predictions(s, s.prediction_topic, {e["event_id"] for e in later})
    assert {(p["model_version"], p["route"]) for p in after if p["event_id"].startswith("evt-48-")} == {
        ("2", "single:challenger")}


@pytest.mark.parametrize("engine", ["batch"])
def test_shadow_predictions_never_reach_the_prediction_topic(rflow):
    s = rflow.settings
    rflow.registry.set_route("*", {"policy": "shadow"})  # run-time route, as `streamscore models route` sets it
    start_on_known_port(rflow)
    events = sample_events(44, 600)
    produce(s, rflow.json_topic, encode_events(events))
    wanted = {e["event_id"] for e in events}
    shadow = predictions(s, s.shadow_topic, wanted)
    main = predictions(s, s.prediction_topic, wanted)

    assert len(main) == len(shadow) == 600
    assert {(p["model_version"], p["route"]) for p in main} == {("1", "shadow:champion")}
    assert {(p["model_version"], p["route"]) for p in shadow} == {("2", "shadow:challenger")}
    everything = [orjson.loads(m.value()) for m in read_all(s, s.prediction_topic)]
    assert len(everything) == 600 and {p["model_version"] for p in everything} == {"1"}


@pytest.mark.parametrize("engine", ["batch"])
def test_canary_with_a_bad_model_is_rolled_back_automatically(rflow):
    s = rflow.settings
    rflow.registry.set_route("*", {"policy": "canary", "candidate": "3", "percent": 50, "max_error_rate": 0.3,
                                   "min_events": 30})
    port = start_on_known_port(rflow)
    first = sample_events(45, 400)
    produce(s, rflow.json_topic, encode_events(first))
    preds = predictions(s, s.prediction_topic, {e["event_id"] for e in first})
    canary_share = np.mean([p["model_version"] == "3" for p in preds])
    assert 0.2 < canary_share < 0.8
    send_labels(s, first, 45)
    wait_registry_status(port, lambda st: st["labels_rewarded"] >= 400)
    second = sample_events(46, 300)
    produce(s, rflow.json_topic, encode_events(second))
    after = predictions(s, s.prediction_topic, {e["event_id"] for e in second})

    assert {p["model_version"] for p in after if p["event_id"].startswith("evt-46-")} == {"1"}
    records = wait_for(s, s.registry_topic, lambda ms: any(b"canary_rollback" in m.value() for m in ms), 20)
    rollback = next(orjson.loads(m.value()) for m in records if b"canary_rollback" in m.value())
    assert rollback["key"] == "route:*" and "error rate" in rollback["change"]["reason"]
    assert rollback["route"]["rolled_back"] == rollback["change"]["reason"]
    assert ModelRegistry(rflow.registry.root, rflow.registry.features,
                         key=s.signing_key_bytes()).state.routes()["*"]["rolled_back"]
    st = registry_status(port)
    assert st["default"]["spec"]["rolled_back"] and st["canary_rollbacks"]


@pytest.mark.parametrize("engine", ["batch"])
def test_thompson_bandit_converges_to_the_better_model_on_label_rewards(rflow):
    s = rflow.settings
    rflow.registry.set_route("*", {"policy": "bandit", "arms": ["1", "3"], "algorithm": "thompson", "seed": 5})
    port = start_on_known_port(rflow)
    shares, rewarded = [], 0
    for round_ in range(4):
        seed = 50 + round_
        events = sample_events(seed, 200)
        produce(s, rflow.json_topic, encode_events(events))
        ids = {e["event_id"] for e in events}
        preds = [p for p in predictions(s, s.prediction_topic, ids) if p["event_id"] in ids]
        shares.append(float(np.mean([p["model_version"] == "1" for p in preds])))
        send_labels(s, events, seed)
        rewarded += len(events)
        wait_registry_status(port, lambda st, r=rewarded: st["labels_rewarded"] >= r)
    stats = registry_status(port)["default"]["stats"]
    print(f"share of the better arm per round: {shares}; arm stats {stats}")
    assert 0.25 < shares[0] < 0.75  # no prior: both arms explored
    assert shares[-1] > 0.9 and stats["1"]["mean_reward"] > 0.8 > 0.2 > stats["3"]["mean_reward"]


@pytest.mark.parametrize("engine", ["batch"])
def test_registry_lanes_that_crash_fail_health_then_keep_rewarding_and_swapping(rflow):
    """The feedback lane crashes twice (/healthz fails while it backs off 1 + 2 s), keeps its consumer, and
    rewards every label sent after; the watcher crashes once (/readyz fails) and still applies a promotion."""
    s = rflow.settings
    rflow.registry.set_route("*", {"policy": "bandit", "arms": ["1", "3"], "algorithm": "thompson", "seed": 5})
    port = free_port()
    rflow.start_worker(web_port=port, debug_endpoints=True)
    events = sample_events(71, 150)
    produce(s, rflow.json_topic, encode_events(events))
    predictions(s, s.prediction_topic, {e["event_id"] for e in events})
    watch(port, lambda status, body: status == 200, timeout=30)

    assert get(port, "/debug/fail?part=routing-feedback&times=2")[0] == 200
    took, body = watch(port, lambda status, body: "routing-feedback" in body.get("failing", []), timeout=10)
    assert took < 10 and body["parts"]["routing-feedback"]["last_error"].startswith("InjectedFault")
    _, body = watch(port, lambda status, body: status == 200, timeout=30)
    assert body["parts"]["routing-feedback"]["restarts"] == 2
    send_labels(s, events, 71)
    status = wait_registry_status(port, lambda st: st["labels_rewarded"] >= len(events))
    assert (status["labels_read"], status["labels_rewarded"]) == (len(events), len(events))

    assert get(port, "/debug/fail?part=registry-watcher")[0] == 200
    _, body = watch(port, lambda status, body: not body["registry_applied"], timeout=10, path="/readyz")
    assert body["ready"] is False
    watch(port, lambda status, body: status == 200, timeout=30, path="/readyz")
    rflow.registry.set_route("*", {"policy": "single", "version": "2"})
    status = wait_registry_status(port, lambda st: list(st["default"]["arms"].values()) == ["demo-risk@2"])
    assert list(status["default"]["arms"].values()) == ["demo-risk@2"] and status["healthy"] is True


@pytest.mark.parametrize("engine", ["batch"])
def test_composite_champion_scores_the_declared_blend_of_its_parts(rflow, model_dir, model_v2):
    from models.composite import CompositeSpec, Part
    from models.onnx_scorer import OnnxScorer

    s = rflow.settings
    spec = CompositeSpec(kind="weighted_average", parts=[Part(model="demo-risk", version="1", weight=3),
                                                         Part(model="demo-risk", version="challenger", weight=1)])
    rflow.registry.register_composite("demo-risk", "blend-1", spec)
    start_on_known_port(rflow)
    rflow.registry.promote("demo-risk", "blend-1")  # a composite is promoted like any version
    time.sleep(1.5)
    events = sample_events(47, 300)
    produce(s, rflow.json_topic, encode_events(events))
    preds = {p["event_id"]: p for p in predictions(s, s.prediction_topic, {e["event_id"] for e in events})}

    v1, v2 = OnnxScorer.from_dir(model_dir), OnnxScorer.from_dir(model_v2)
    X = v1.to_matrix([e["features"] for e in events])
    expected = (3 * v1.predict_many(X).scores + v2.predict_many(X).scores) / 4
    got = np.array([preds[e["event_id"]]["score"] for e in events])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    blend = rflow.registry.state.model("demo-risk").versions["blend-1"]
    assert {(p["model_version"], p["model_sha256"]) for p in preds.values()} == {("blend-1", blend.sha256)}


@pytest.mark.parametrize("engine", ["batch"])
def test_drift_monitoring_follows_the_promoted_champion(rflow, model_v2):
    """After a promotion the drift records name the new champion and use its reference profile."""
    s = rflow.settings = rflow.settings.model_copy(update={
        "drift_window": 300, "drift_interval_s": 0.3, "drift_thresholds": DriftThresholds(min_events=100),
        "drift_topic": f"drift-{rflow.settings.app_id}"})
    port = start_on_known_port(rflow)

    def records() -> list[DriftRecord]:
        try:
            return [decode(DriftRecord, m.value()) for m in read_all(s, s.drift_topic)]
        except KeyError:  # not created yet
            return []

    produce(s, rflow.json_topic, encode_events(sample_events(43, 400)))
    wait_for(s, s.prediction_topic, lambda ms: len(ms) >= 400, timeout=60)
    deadline = time.monotonic() + 30
    while not any(r.model_version == "1" for r in records()):
        assert time.monotonic() < deadline, "no drift record for v1"
        time.sleep(0.2)
    rflow.registry.promote("demo-risk", "2")
    wait_registry_status(port, lambda st: "demo-risk@2" in json.dumps(st))
    produce(s, rflow.json_topic, encode_events(sample_events(44, 100)))
    v2 = ModelCard.load(model_v2)
    deadline = time.monotonic() + 30
    while not (after := [r for r in records() if r.model_version == "2"]):
        assert time.monotonic() < deadline, "drift monitoring did not follow the promotion"
        time.sleep(0.2)
    assert after[0].model_sha256 == v2.onnx_sha256 and after[0].profile_sha256 == v2.reference_profile_sha256
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/drift", timeout=5) as resp:
        assert json.loads(resp.read())["model"] == "demo-risk@2"

    # Any Scorer is followed through the protocol: a composite champion, with its first part's profile.
    from models.composite import CompositeSpec, Part

    spec = CompositeSpec(kind="weighted_average", parts=[Part(model="demo-risk", version="2", weight=1),
                                                         Part(model="demo-risk", version="1", weight=1)])
    rflow.registry.register_composite("demo-risk", "blend-1", spec)
    rflow.registry.promote("demo-risk", "blend-1")
    wait_registry_status(port, lambda st: "demo-risk@blend-1" in json.dumps(st))
    produce(s, rflow.json_topic, encode_events(sample_events(45, 100)))
    deadline = time.monotonic() + 30
    while not (blended := [r for r in records() if r.model_version == "blend-1"]):
        assert time.monotonic() < deadline, "drift monitoring did not follow the composite champion"
        time.sleep(0.2)
    blend = rflow.registry.state.model("demo-risk").versions["blend-1"]
    assert blended[0].model_sha256 == blend.sha256 and blended[0].profile_sha256 == v2.reference_profile_sha256
