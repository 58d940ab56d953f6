"""End to end over the embedded broker: the closed loop with a real worker and a real retrain service process.

Positive: a concept change at a known event (models.demo rule → device_score's effect reversed, streams.drift.sim)
→ ADWIN alert in the worker's drift lane → retrain request → the service builds the training dataset from the
archived post-change inputs joined with their labels → candidate trained with the champion's recipe → challenger
in shadow → the gate passes on labelled events scored by both → promoted: predictions switch to the new version
while events keep flowing, each event scored exactly once; `streamscore lineage` of a new prediction names the
request, the alert and the data version.

Manual approval: the same change with STREAMSCORE_RETRAIN_APPROVAL=manual → the gate passes → awaiting_approval,
the champion keeps serving → `streamscore models approve demo-risk 2` → promoted, predictions switch.

Negative: a request on data of the unchanged rule → a candidate trained on fewer rows than the champion → the
gate rejects it with its reason, the route goes back to the champion, which keeps serving every event.

Fault: the retrain service is SIGKILLed while it trains (and again once the candidate is in shadow) and restarted:
one candidate, one shadow, one gate decision.

The gate's events are produced only once the worker's /registry shows the challenger in shadow: the service
writes `shadow_started` when the route is in the registry, the worker applies it on its next control-topic read
(measured 315 ms later under load), and an event scored before that has no challenger score, so it is never a
pair (a burst produced at once after `shadow_started` could be scored by the champion alone: the cause of the
negative test's full-suite failures, docs/closed_loop.md).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from models.card import ModelCard
from models.demo import FEATURE_NAMES, risk_probability, sample_events
from schemas.drift import OffsetRange, RetrainRequest, encode
from streams.cli.main import app as cli_app
from streams.cli.produce import encode_events, produce
from streams.drift.alerts import data_version
from streams.drift.sim import concept_labels
from streams.kafka.reader import read_all
from streams.retrain.dataset import load_training
from streams.retrain.lifecycle import LifecycleEvent, decode
from streams.routing.watcher import ensure_registry_topic, registry_for
from streams.settings import Settings
from tests.conftest import Flow, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

N_BEFORE, N_AFTER, N_GATE = 2500, 2000, 500
WINDOW = 2000
SERVICE_LOG = "worker-retrain.log"  # named worker-* so that Flow.log() shows its tail on a failure


@pytest.fixture
def engine() -> str:
    return "batch"  # the loop does not depend on the scoring engine (both share the routed pipeline)


@pytest.fixture
def lflow(flow: Flow, model_dir: Path) -> Iterator[Flow]:
    run = flow.settings.app_id.removeprefix("test-")
    flow.settings = flow.settings.model_copy(update={
        "registry_model": "demo-risk", "registry_topic": f"_registry-{run}", "labels_topic": f"labels-{run}",
        "shadow_topic": f"shadow-{run}", "drift_topic": f"drift-{run}", "alerts_topic": f"alerts-{run}",
        "retrain_topic": f"retrain-{run}", "retrain_lifecycle_topic": f"lifecycle-{run}",
        "archive": True, "archive_segment_seconds": 1.0, "drift_interval_s": 0.3, "drift_window": WINDOW,
        "retrain_cooldown_s": 0.0, "retrain_min_rows": 500, "retrain_data_wait_s": 60.0,
        "retrain_gate_min_samples": 300, "retrain_gate_max_wait_s": 120.0,
    })
    ensure_registry_topic(flow.settings)
    registry_for(flow.settings).register(model_dir)  # v1: the champion
    flow.service = None  # type: ignore[attr-defined]
    yield flow
    service = flow.service  # type: ignore[attr-defined]
    if service is not None and service.poll() is None:
        service.terminate()
        service.wait(30)


# --- processes and topics -------------------------------------------------------------------------------
def start_service(flow: Flow) -> subprocess.Popen:
    env = {**os.environ, **flow.settings.as_env()}
    log = open(flow.log_dir / SERVICE_LOG, "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli.main", "retrain"], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    flow.service = proc  # type: ignore[attr-defined]
    return proc


def start_loop(flow: Flow) -> int:
    """A worker (its web port returned, for /registry and /drift) and the retrain service."""
    port = free_port()
    flow.start_worker(web_port=port)
    start_service(flow)
    return port


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def shadow_applied(flow: Flow, port: int, version: str) -> None:
    """Wait until the worker scores with ``demo-risk@version`` in shadow: from then on every event gets both scores."""
    wait_until(f"the worker to apply the shadow route of demo-risk@{version}", lambda: f"demo-risk@{version}" in
               get_json(port, "/registry")["default"]["shadow"].values(), flow, timeout=60)


def champion_applied(flow: Flow, port: int, version: str) -> None:
    """Wait until the worker's champion is ``demo-risk@version`` with no shadow (the promotion is applied)."""
    def applied() -> bool:
        lane = get_json(port, "/registry")["default"]
        return set(lane["arms"].values()) == {f"demo-risk@{version}"} and not lane["shadow"]
    wait_until(f"the worker to serve demo-risk@{version} alone", applied, flow, timeout=60)


def lifecycle(s: Settings) -> list[LifecycleEvent]:
    try:
        return [decode(m.value()) for m in read_all(s, s.retrain_lifecycle_topic)]
    except KeyError:
        return []


def stage(s: Settings, name: str) -> LifecycleEvent | None:
    return next((e for e in lifecycle(s) if e.stage == name), None)


def decided(s: Settings) -> LifecycleEvent | None:
    return next((e for e in lifecycle(s) if e.stage in ("promoted", "rejected", "awaiting_approval")), None)


def stage_counts(s: Settings, request_id: str) -> collections.Counter:
    return collections.Counter(e.stage for e in lifecycle(s) if e.request_id == request_id)


def labels_of(events: list[dict], truth: np.ndarray) -> list[tuple[bytes, bytes]]:
    now = int(time.time() * 1000)
    return [(e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": "risky" if y else "legit",
                                                    "label_time": now})) for e, y in zip(events, truth, strict=True)]


def matrix(events: list[dict]) -> np.ndarray:
    return np.array([[e["features"][f] for f in FEATURE_NAMES] for e in events])


def predictions(s: Settings) -> list[dict]:
    return [orjson.loads(m.value()) for m in read_all(s, s.prediction_topic)]


def scored_once(flow: Flow, events: list[dict]) -> dict[str, str]:
    """Wait until every one of ``events`` is scored; assert each exactly once and nothing else; id → version."""
    wanted = {e["event_id"] for e in events}
    preds = wait_until("every event scored", lambda: (p := predictions(flow.settings)) and
                       wanted <= {x["event_id"] for x in p} and p, flow, timeout=60)
    counts = collections.Counter(p["event_id"] for p in preds)
    lost_or_extra = set(counts) ^ wanted
    twice = [e for e, n in counts.items() if n > 1]
    assert not lost_or_extra and not twice, f"{len(lost_or_extra)} lost or unexpected, {len(twice)} double-scored"
    return {p["event_id"]: p["model_version"] for p in preds}


def trickle(flow: Flow, events: list[dict], until: Callable[[], object], sent: int = 0, reserve: int = 300) -> int:
    """Produce ``events`` 100 at a time (every 0.3 s) until ``until()`` holds, keeping ``reserve`` back; how many
    are sent. Events keep flowing while a decision lands, as in production."""
    while not until() and sent < len(events) - reserve:
        produce(flow.settings, flow.json_topic, encode_events(events[sent:sent + 100]))
        sent += 100
        time.sleep(0.3)
    return sent


# --- the scenarios' shared steps ---------------------------------------------------------------------------
def concept_change_to_shadow(flow: Flow, port: int) -> tuple[LifecycleEvent, list[dict]]:
    """Pre-change events and labels, then the change → alert → request → candidate v2 in shadow (applied by the
    worker); (its ``shadow_started``, the events produced)."""
    s = flow.settings
    before = sample_events(71, N_BEFORE)
    produce(s, flow.json_topic, encode_events(before))
    produce(s, s.labels_topic, labels_of(before, concept_labels(np.random.default_rng(1), matrix(before))))
    wait_until("pre-change labels judged", lambda: (get_json(port, "/drift")["labels_evaluated"] or 0) >= N_BEFORE,
               flow)
    assert stage(s, "request_received") is None, "a retrain request before the change"

    # the change: new inputs first (so the drift window holds only post-change events), then their labels
    after = sample_events(72, N_AFTER)
    produce(s, flow.json_topic, encode_events(after))
    wait_until("post-change inputs in the window", lambda: (get_json(port, "/drift")["messages_evaluated"] or 0)
               >= N_BEFORE + N_AFTER, flow)
    changed = np.random.default_rng(2)
    produce(s, s.labels_topic, labels_of(after, concept_labels(changed, matrix(after), changed_from=0)))
    shadow = wait_until("the candidate in shadow", lambda: stage(s, "shadow_started"), flow, timeout=90)
    assert shadow.model_version == "2"
    assert shadow.request_id and shadow.alert_id and shadow.data_version and shadow.training_dataset
    shadow_applied(flow, port, "2")
    return shadow, before + after


def gate_on_the_new_rule(flow: Flow) -> list[dict]:
    """The gate's events (challenger in shadow, applied): scored by both, labelled by the changed rule."""
    s = flow.settings
    gate = sample_events(73, N_GATE)
    produce(s, flow.json_topic, encode_events(gate))
    produce(s, s.labels_topic, labels_of(gate, concept_labels(np.random.default_rng(3), matrix(gate),
                                                              changed_from=0)))
    return gate


def request_on_the_unchanged_rule(flow: Flow, request_id: str) -> list[dict]:
    """1200 events labelled by the champion's own rule, scored; then a retrain request naming exactly them."""
    s = flow.settings
    events = sample_events(81, 1200)
    produce(s, flow.json_topic, encode_events(events))
    produce(s, s.labels_topic, labels_of(events, np.random.default_rng(4).random(len(events))
                                         < risk_probability(matrix(events))))
    preds = wait_until("events scored", lambda: len(p := predictions(s)) >= len(events) and p, flow)
    spans: dict[int, list[int]] = {}
    for p in preds:
        lo_hi = spans.setdefault(p["source_partition"], [p["source_offset"], p["source_offset"]])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], p["source_offset"]), max(lo_hi[1], p["source_offset"])
    offsets = [OffsetRange(topic=flow.json_topic, partition=k, first_offset=a, last_offset=b)
               for k, (a, b) in sorted(spans.items())]
    now = int(time.time() * 1000)
    request = RetrainRequest(request_id=request_id, model_name="demo-risk", model_version="1",
                             model_sha256=preds[0]["model_sha256"], requested_at=now, alert_id=f"alert-{request_id}",
                             reason="test: no concept change", data_version=data_version(offsets), offsets=offsets,
                             window_start_ms=now, window_end_ms=now, worker="test")
    produce(s, s.retrain_topic, [(b"demo-risk", encode(request))])
    return events


def gate_on_the_unchanged_rule(flow: Flow) -> list[dict]:
    s = flow.settings
    gate = sample_events(82, N_GATE)
    produce(s, flow.json_topic, encode_events(gate))
    produce(s, s.labels_topic, labels_of(gate, np.random.default_rng(5).random(len(gate))
                                         < risk_probability(matrix(gate))))
    return gate


def assert_champion_kept(flow: Flow, versions: dict[str, str]) -> None:
    assert set(versions.values()) == {"1"}
    registry = registry_for(flow.settings, publish=False)
    assert registry.resolve("demo-risk").version == "1"
    assert "challenger" not in registry.state.model("demo-risk").aliases
    assert registry.state.routes().get("*") == {"model": "demo-risk"}


def assert_promoted(flow: Flow, request_id: str, *, manual: bool) -> None:
    registry = registry_for(flow.settings, publish=False)
    assert registry.resolve("demo-risk").version == "2"
    assert "challenger" not in registry.state.model("demo-risk").aliases
    stages = [e.stage for e in lifecycle(flow.settings) if e.request_id == request_id]
    assert stages == ["request_received", "dataset_built", "candidate_trained", "shadow_started", "gate_result",
                      *(["awaiting_approval"] if manual else []), "promoted"], stages


# --- the tests -------------------------------------------------------------------------------------------
def test_concept_change_retrains_shadows_and_promotes_without_losing_an_event(lflow: Flow) -> None:
    s, flow = lflow.settings, lflow
    port = start_loop(flow)
    shadow, produced = concept_change_to_shadow(flow, port)
    alerts = [orjson.loads(m.value()) for m in read_all(s, s.alerts_topic)]
    assert any(a["alert_id"] == shadow.alert_id and any("concept drift" in r for r in a["reasons"]) for a in alerts)

    # trained on post-change data only: every labelled row of its dataset is an event after the change
    from datastore.storage import LocalStorage  # the archive's store, as the service wrote it

    ds = load_training(LocalStorage(s.data_path), shadow.training_dataset)
    assert ds is not None and len(ds.rows) == WINDOW, ds and len(ds.rows)
    assert all(eid.startswith("evt-72-") for eid, _y in ds.rows)
    registry = registry_for(s, publish=False)
    card = ModelCard.load(registry.artifact_dir(registry.resolve("demo-risk", "2")))
    assert card.training_data_version == ds.id and card.parent_version == "1"
    assert card.recipe_hash == ModelCard.load(registry.artifact_dir(registry.resolve("demo-risk", "1"))).recipe_hash

    gate = gate_on_the_new_rule(flow)
    stream = sample_events(74, 3000)
    sent = trickle(flow, stream, lambda: decided(s))  # events keep flowing while the promotion lands
    promoted = stage(s, "promoted")
    result = stage(s, "gate_result")
    assert promoted is not None, (result, flow.log())
    assert result is not None and result.detail["n"] == 300 and result.detail["passed"] is True
    assert float(result.detail["improvement"]) >= s.retrain_gate_min_improvement
    champion_applied(flow, port, "2")
    produce(s, flow.json_topic, encode_events(stream[sent:sent + 300]))
    sent += 300

    versions = scored_once(flow, produced + gate + stream[:sent])
    last = stream[sent - 300:sent]
    assert {versions[e["event_id"]] for e in last} == {"2"}
    assert {versions[e["event_id"]] for e in produced[:N_BEFORE]} == {"1"}
    assert_promoted(flow, shadow.request_id, manual=False)

    # lineage of a prediction of the new model: the request, the alert, the data version
    event_id = last[-1]["event_id"]
    env = s.as_env()

    def traced() -> str | None:
        out = CliRunner().invoke(cli_app, ["lineage", event_id], env=env, terminal_width=400)
        return out.output if out.exit_code == 0 and "demo-risk@2" in out.output else None

    text = wait_until("the new prediction archived", traced, flow, timeout=30)
    assert shadow.request_id in text and shadow.alert_id in text and ds.id in text
    assert ds.data_version in text.replace("\n             ", "")


def test_manual_approval_keeps_the_champion_until_models_approve_then_promotes(lflow: Flow) -> None:
    flow = lflow
    flow.settings = s = flow.settings.model_copy(update={"retrain_approval": "manual"})
    port = start_loop(flow)
    shadow, produced = concept_change_to_shadow(flow, port)
    gate = gate_on_the_new_rule(flow)
    stream = sample_events(74, 3000)
    sent = trickle(flow, stream, lambda: decided(s), reserve=1500)
    waiting = stage(s, "awaiting_approval")
    result = stage(s, "gate_result")
    assert waiting is not None and waiting.model_version == "2", (result, flow.log())
    assert result is not None and result.detail["passed"] is True and result.detail["n"] == 300
    assert "streamscore models approve demo-risk 2" in waiting.reason, waiting.reason

    # a passed gate is not a promotion: the champion keeps serving while the approval is pending
    held = stream[sent:sent + 300]
    produce(s, flow.json_topic, encode_events(held))
    sent += 300
    versions = scored_once(flow, produced + gate + stream[:sent])
    assert {versions[e["event_id"]] for e in held} == {"1"}
    assert stage(s, "promoted") is None
    assert registry_for(s, publish=False).resolve("demo-risk").version == "1"

    out = CliRunner().invoke(cli_app, ["models", "approve", "demo-risk", "2"], env=s.as_env(), terminal_width=400)
    assert out.exit_code == 0 and "approved demo-risk@2" in out.output, out.output
    sent = trickle(flow, stream, lambda: stage(s, "promoted"), sent=sent)
    assert stage(s, "promoted") is not None, flow.log()
    champion_applied(flow, port, "2")
    last = stream[sent:sent + 300]
    produce(s, flow.json_topic, encode_events(last))
    sent += 300

    versions = scored_once(flow, produced + gate + stream[:sent])
    assert {versions[e["event_id"]] for e in last} == {"2"}
    assert [e.stage for e in lifecycle(s)].count("approved") == 1
    assert_promoted(flow, shadow.request_id, manual=True)


def test_no_better_candidate_is_rejected_and_the_champion_keeps_serving(lflow: Flow) -> None:
    s, flow = lflow.settings, lflow
    port = start_loop(flow)
    events = request_on_the_unchanged_rule(flow, "retrain-manual-1")
    wait_until("the candidate in shadow", lambda: stage(s, "shadow_started"), flow, timeout=90)
    shadow_applied(flow, port, "2")
    gate = gate_on_the_unchanged_rule(flow)

    rejected = wait_until("the gate's rejection", lambda: stage(s, "rejected"), flow, timeout=90)
    assert rejected.model_version == "2"
    assert stage(s, "promoted") is None
    result = stage(s, "gate_result")
    assert result is not None and result.detail["passed"] is False and result.detail["n"] == 300
    assert rejected.reason == result.reason.removeprefix("failed: "), (rejected.reason, result.reason)

    after = sample_events(83, 300)
    produce(s, flow.json_topic, encode_events(after))
    assert_champion_kept(flow, scored_once(flow, events + gate + after))


def kill_at_log_line(flow: Flow, proc: subprocess.Popen, text: str, since: int, timeout: float = 90) -> int:
    """SIGKILL ``proc`` as soon as its log (from byte ``since``) shows ``text``; the log's size then.

    The log file, not the lifecycle topic: reading a local file every 10 ms kills within a few ms of the step,
    while a topic read takes ~0.1 s and training the candidate only ~0.6 s (alone; ~7 s under load).
    """
    path = flow.log_dir / SERVICE_LOG
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with path.open("rb") as f:
            f.seek(since)
            if text.encode() in f.read():
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return path.stat().st_size
        assert proc.poll() is None, f"the service died before {text!r}:\n{flow.log()}"
        time.sleep(0.01)
    raise AssertionError(f"no {text!r} in the service log within {timeout} s\n{flow.log()}")


def test_service_killed_mid_request_resumes_with_one_candidate_one_shadow_one_decision(lflow: Flow) -> None:
    s, flow = lflow.settings, lflow
    port = start_loop(flow)
    events = request_on_the_unchanged_rule(flow, "retrain-kill-1")

    # 1. killed while it trains: the request is not committed, nothing is registered
    logged = kill_at_log_line(flow, flow.service, "dataset_built demo-risk", 0)  # type: ignore[attr-defined]
    assert stage_counts(s, "retrain-kill-1") == {"request_received": 1, "dataset_built": 1}, lifecycle(s)
    assert list(registry_for(s, publish=False).state.model("demo-risk").versions) == ["1"]

    # 2. restarted: the request is redelivered (uncommitted offset) and taken to the shadow; killed again there
    proc = start_service(flow)
    kill_at_log_line(flow, proc, "shadow_started demo-risk@2", logged)
    assert stage_counts(s, "retrain-kill-1") == {"request_received": 2, "dataset_built": 2, "candidate_trained": 1,
                                                 "shadow_started": 1}, lifecycle(s)

    # 3. restarted: the candidate in shadow is found on the lifecycle topic and gets its gate back
    start_service(flow)
    shadow_applied(flow, port, "2")
    gate = gate_on_the_unchanged_rule(flow)
    outcome = wait_until("the gate's decision", lambda: stage(s, "rejected") or stage(s, "promoted"), flow,
                         timeout=90)
    assert outcome.stage == "rejected" and outcome.model_version == "2", outcome
    result = stage(s, "gate_result")
    assert result is not None and result.detail["n"] == 300 and result.detail["passed"] is False

    counts = stage_counts(s, "retrain-kill-1")
    assert counts == {"request_received": 2, "dataset_built": 2, "candidate_trained": 1, "shadow_started": 1,
                      "gate_result": 1, "rejected": 1}, counts
    built = [e.training_dataset for e in lifecycle(s) if e.stage == "dataset_built"]
    assert len(set(built)) == 1, built  # content-addressed: the redelivered request built the same dataset
    trained = stage(s, "candidate_trained")
    assert trained is not None and trained.reason.startswith("trained in"), trained  # trained once, by the 2nd run
    registry = registry_for(s, publish=False)
    assert list(registry.state.model("demo-risk").versions) == ["1", "2"]  # exactly one candidate
    assert_champion_kept(flow, scored_once(flow, events + gate))
