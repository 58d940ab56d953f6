"""End to end over the embedded broker: online learning in real worker processes.

The stream is the demo's (models.demo) with its known concept; its labels come from the same seed
(``make_dataset``). Like a label system, the test sends an event's label only after the event's online
prediction is out, one round of 250 events at a time, so each round is scored by a model that has
learned the rounds before it.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable

import numpy as np
import orjson
import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset, sample_events
from online_learning.learner import Learner
from online_learning.snapshots import SnapshotMeta, SnapshotStore
from online_learning.specs import get_spec
from schemas.labels import LearnerMetrics, decode_learner_metrics
from streams.cli.main import app as cli_app
from streams.cli.produce import encode_events, produce
from streams.kafka.reader import read_all, wait_for
from streams.settings import Settings
from tests.conftest import Flow, free_port

pytestmark = pytest.mark.e2e

N, ROUND = 3000, 250
SEED = 5  # the stream the bars below were measured on


@pytest.fixture
def engine() -> str:
    return "faust"  # online learning does not depend on the ONNX engine; one run is enough


@pytest.fixture
def lflow(flow: Flow) -> Flow:
    run = flow.settings.app_id.removeprefix("test-")
    flow.settings = flow.settings.model_copy(update={
        "learner": "logreg",
        "labels_topic": f"labels-{run}",
        "online_prediction_topic": f"online-predictions-{run}",
        "learner_metrics_topic": f"learner-metrics-{run}",
        "snapshot_dir": flow.log_dir / "snapshots",
        "snapshot_every_n": 500,
        "snapshot_every_s": 600.0,
        "snapshot_poll_s": 0.5,
    })
    return flow


# --- helpers ---------------------------------------------------------------------------------------
def start(flow: Flow, wait: bool = True, **overrides: object) -> tuple:
    port = free_port()
    return flow.start_worker(wait=wait, web_port=port, **overrides), port


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/learner", timeout=2) as resp:
        return json.loads(resp.read())


def wait_status(port: int, predicate: Callable[[dict], bool], timeout: float, flow: Flow) -> dict:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = status(port)
            if predicate(last):
                return last
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"learner status never matched; last {last}\n{flow.log()}")


def owning(st: dict) -> bool:
    return st["owner"] and st["scoring_assigned"] and not st["rebuilding"]


def demo_stream(seed: int = SEED, n: int = N) -> tuple[list[dict], list[dict]]:
    events = sample_events(seed, n)
    _, y = make_dataset(seed, n)  # the same rows, so these are the events' true labels
    labels = [{"event_id": e["event_id"], "label": CLASS_NAMES[int(v)], "label_time": int(time.time() * 1000)}
              for e, v in zip(events, y, strict=True)]
    return events, labels


def online_predictions(s: Settings, ids: set[str], timeout: float = 60) -> list[dict]:
    msgs = wait_for(s, s.online_prediction_topic,
                    lambda ms: ids <= {orjson.loads(m.value())["event_id"] for m in ms}, timeout)
    rows = [orjson.loads(m.value()) for m in msgs]
    assert ids <= {r["event_id"] for r in rows}, "online predictions missing"
    return [r for r in rows if r["event_id"] in ids]


def stream_rounds(s: Settings, events: list[dict], labels: list[dict], rounds: range, port: int,
                  flow: Flow) -> None:
    """Per round: features -> wait for their online predictions -> labels -> wait until they are learned,
    so round r is always scored by the model that learned rounds < r."""
    topic = next(iter(s.input_topics))
    for r in rounds:
        chunk = slice(r * ROUND, (r + 1) * ROUND)
        produce(s, topic, encode_events(events[chunk]))
        online_predictions(s, {e["event_id"] for e in events[chunk]})  # served before the labels are sent
        produce(s, s.labels_topic, [(lab["event_id"].encode(), orjson.dumps(lab)) for lab in labels[chunk]])
        done = (r + 1) * ROUND
        wait_status(port, lambda st, done=done: st["learned_total"] >= done, 30, flow)


def lineage(store: SnapshotStore) -> list[SnapshotMeta]:
    """The latest snapshot and its ancestors, oldest first."""
    chain, version = [], store.latest_version()
    while version is not None:
        meta = store.meta(version)
        chain.append(meta)
        version = meta.parent
    return chain[::-1]


def assert_learned_exactly_once(chain: list[SnapshotMeta], topic: str, n_labels: int) -> None:
    """Consumed offset ranges tile [0, n_labels) with no gap and no overlap; every label learned once."""
    spans = [(r.first_offset, r.last_offset) for m in chain for r in m.offsets if r.topic == topic]
    assert spans[0][0] == 0 and spans[-1][1] == n_labels - 1, spans
    assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:], strict=False)), f"gap or overlap: {spans}"
    assert sum(m.learned for m in chain) == chain[-1].learned_total == n_labels
    assert all(m.duplicate == m.unknown == m.late == m.invalid == 0 for m in chain)


def metrics_records(s: Settings) -> dict[str, LearnerMetrics]:
    return {r.model_version: r for r in (decode_learner_metrics(m.value())
                                         for m in read_all(s, s.learner_metrics_topic))}


def log_loss(truth: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)  # River's LogLoss clamps the same way
    return float(-np.mean(np.where(truth, np.log(p), np.log(1 - p))))


def roc_auc(truth: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score  # exact, unlike River's thresholded approximation

    return float(roc_auc_score(truth, p))


def prometheus(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return resp.read().decode()


# --- tests -----------------------------------------------------------------------------------------
def test_learns_the_demo_concept_counts_bad_labels_and_rolls_back_without_restart(lflow):
    lflow.settings = lflow.settings.model_copy(update={"snapshot_every_s": 2.0})
    s = lflow.settings
    proc, port = start(lflow)
    wait_status(port, owning, 60, lflow)
    events, labels = demo_stream()
    stream_rounds(s, events, labels, range(6), port, lflow)
    bad = [(b"bad-1", b"not json"),
           (b"bad-2", orjson.dumps({"event_id": "evt-never-seen", "label": "risky", "label_time": 0})),
           (b"bad-3", orjson.dumps({"event_id": events[0]["event_id"], "label": "maybe", "label_time": 0}))]
    produce(s, s.labels_topic, bad)  # not decodable / unknown event / not a class: counted, never fatal
    stream_rounds(s, events, labels, range(6, N // ROUND), port, lflow)
    st = wait_status(port, lambda st: st["learned_total"] == N and st["consumed_since_snapshot"] == 0, 60, lflow)

    # The test's own prequential view: every served prediction against its true label, by round.
    served = {p["event_id"]: p for p in online_predictions(s, {e["event_id"] for e in events})}
    truth = np.array([lab["label"] == "risky" for lab in labels])
    scores = np.array([served[e["event_id"]]["score"] for e in events])
    hits = np.array([served[e["event_id"]]["label"] == lab["label"] for e, lab in zip(events, labels, strict=True)])
    assert np.all(scores[:ROUND] == 0.5)  # round 0 was scored before any label: no preference at all
    late = slice(4 * ROUND, N)  # rounds scored after >= 1000 labels were learned
    late_log_loss = log_loss(truth[late], scores[late])
    print(f"rounds 4-11: accuracy {hits[late].mean():.3f} log loss {late_log_loss:.3f} "
          f"ROC AUC {roc_auc(truth[late], scores[late]):.3f}; majority class {1 - truth[late].mean():.3f}")
    # Measured on this stream (3 runs, identical: each round waits for the previous labels to be learned):
    # rounds 4-11 accuracy 0.875, log loss 0.318, ROC AUC 0.834, vs log loss 0.693 and AUC 0.5 untrained.
    # Accuracy barely moves: 84.5% of these events are 'legit', which the untrained model predicts for all.
    # The bars sit below the measurements; the accuracy bar still sits above that majority baseline.
    assert hits[late].mean() >= 0.85 and late_log_loss <= 0.38 and roc_auc(truth[late], scores[late]) >= 0.78

    # The worker's prequential metrics, per serving version, as published on the metrics topic.
    store = SnapshotStore(s.snapshot_path, "logreg", s.signing_key_bytes())  # the worker's (deployment) key
    latest = store.latest()
    assert latest is not None and latest.version == st["version"]
    record = metrics_records(s)[str(latest.version)]
    overall = record.metrics["all"]
    assert overall["n"] == N and overall["accuracy"] == pytest.approx(hits.mean(), abs=1e-12)
    assert overall["log_loss"] == pytest.approx(log_loss(truth, scores), abs=1e-9)
    trained = [m for v, m in record.metrics.items() if v not in ("0", "all") and m["n"] >= 200]
    assert trained and all(m["log_loss"] < record.metrics["0"]["log_loss"] for m in trained), record.metrics
    for m in trained:
        assert m["accuracy"] >= 0.82 and m["log_loss"] <= 0.42 and m["roc_auc"] >= 0.72, m
    chain = lineage(store)
    assert sum(m.learned for m in chain) == N and sum(m.consumed for m in chain) == N + len(bad)
    assert (sum(m.invalid for m in chain), sum(m.unknown for m in chain)) == (2, 1)
    text = prometheus(port)
    assert 'streamscore_learner_labels_total{learner="logreg",outcome="learned"} 3000.0' in text
    assert 'streamscore_learner_labels_total{learner="logreg",outcome="invalid"} 2.0' in text
    assert 'streamscore_learner_labels_total{learner="logreg",outcome="unknown"} 1.0' in text

    # rollback: a new snapshot holding v2's model; the running worker switches to it without a restart
    env = {f"STREAMSCORE_{k}": v for k, v in (("SNAPSHOT_DIR", str(s.snapshot_path)), ("LEARNER", "logreg"),
                                              ("STATE_DIR", str(s.state_dir)))}  # where the deployment key is
    result = CliRunner().invoke(cli_app, ["learners", "rollback", "2"], env=env)
    assert result.exit_code == 0, result.output
    rolled = store.latest()
    assert (rolled.version, rolled.parent, rolled.kind) == (latest.version + 1, 2, "rollback")
    assert rolled.sha256 == store.meta(2).sha256 and rolled.next_offsets == latest.next_offsets
    wait_status(port, lambda st: st["version"] == rolled.version and owning(st), 30, lflow)
    assert proc.poll() is None  # the same process: hot reload

    fresh, fresh_labels = demo_stream(seed=SEED + 1, n=ROUND)
    produce(s, next(iter(s.input_topics)), encode_events(fresh))
    served = online_predictions(s, {e["event_id"] for e in fresh})
    _, state = store.load(2)
    v2 = Learner(get_spec("logreg"), FEATURE_NAMES, classes=CLASS_NAMES, model=state["model"])
    X = pd.DataFrame(np.array([[e["features"][f] for f in FEATURE_NAMES] for e in fresh]), columns=FEATURE_NAMES)
    expected = dict(zip([e["event_id"] for e in fresh], v2.predict_many(X).scores.tolist(), strict=True))
    for p in served:
        assert p["model_version"] == str(rolled.version) and p["model_sha256"] == rolled.sha256
        # v2's model serves again (to the last bits: numpy's dot rounds differently for other batch sizes)
        assert p["score"] == pytest.approx(expected[p["event_id"]], rel=1e-12, abs=1e-15)
    produce(s, s.labels_topic, [(lab["event_id"].encode(), orjson.dumps(lab)) for lab in fresh_labels])
    wait_status(port, lambda st: st["learned_total"] == store.meta(2).learned_total + ROUND, 30, lflow)
    lflow.stop_all()  # graceful: the final snapshot
    final = store.latest()
    assert (final.parent, final.learned, final.learned_total) == (rolled.version, ROUND,
                                                                 store.meta(2).learned_total + ROUND)


def test_kill_9_resumes_at_the_snapshot_offsets_not_the_group_offsets_and_learns_every_label_once(lflow):
    s = lflow.settings  # a snapshot every 500 labels
    store = SnapshotStore(s.snapshot_path, "logreg")
    events, labels = demo_stream()
    proc, port = start(lflow)
    wait_status(port, owning, 60, lflow)
    stream_rounds(s, events, labels, range(4), port, lflow)
    wait_until(lambda: store.latest_version() == 2, 10)  # v2 learned labels 0..999
    behind = lflow.log_dir / "snapshots-behind"
    shutil.copytree(s.snapshot_path, behind)  # the snapshot store as it was at v2
    stream_rounds(s, events, labels, range(4, 7), port, lflow)  # v3 at 1500, then 250 more learned in memory
    assert store.latest().next_offsets[0].offset == 1500
    proc.kill()
    proc.wait(30)
    assert committed_offset(s) == 1500  # committed with v3

    # Restart against the older store: the worker must resume at v2's offsets (1000), not at the group's
    # (1500); trusting the group would skip labels 1000..1499 and the total below would be 2500.
    proc, port = start(lflow, snapshot_dir=behind)
    st = wait_status(port, owning, 60, lflow)
    assert st["version"] == 2 and st["learned_total"] == 1000  # restored, sha256-verified
    stream_rounds(s, events, labels, range(7, N // ROUND), port, lflow)
    wait_status(port, lambda st: st["learned_total"] == N, 60, lflow)
    lflow.stop_all()  # graceful: the final snapshot

    chain = lineage(SnapshotStore(behind, "logreg"))
    assert_learned_exactly_once(chain, s.labels_topic, N)
    first_after = next(m for m in chain if m.parent == 2)
    assert first_after.offsets[0].first_offset == 1000  # relearned what the killed worker held in memory
    records = metrics_records(s)  # the last record per version: the restarted worker's lineage
    assert sum(records[str(m.version)].learned for m in chain) == N
    assert records[str(chain[-1].version)].learned_total == N
    assert all(records[str(m.version)].duplicate == 0 for m in chain)


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def committed_offset(s: Settings) -> int:
    consumer = Consumer({**s.kafka_client_config(), "group.id": f"{s.app_id}-learner-labels"})
    try:
        return consumer.committed([TopicPartition(s.labels_topic, 0)], timeout=10)[0].offset
    finally:
        consumer.close()


def wait_one_owner(flow: Flow, ports: list[int], timeout: float) -> int:
    """Index of the one worker that learns, once every worker has joined both groups and it stays so."""
    deadline, seen = time.monotonic() + timeout, []
    stable = 0
    while time.monotonic() < deadline:
        try:
            seen = [status(port) for port in ports]
        except OSError:
            time.sleep(0.3)
            continue
        ready = all(st["scoring_assigned"] and st["labels_joined"] and not st["rebuilding"] for st in seen)
        owners = [i for i, st in enumerate(seen) if st["owner"]]
        stable = stable + 1 if ready and len(owners) == 1 else 0
        if stable >= 3:  # the same answer over ~1 s: no rebalance in flight
            return owners[0]
        time.sleep(0.3)
    raise AssertionError(f"never exactly one learning owner: {seen}\n{flow.log()}")


def test_two_workers_one_learns_both_serve_the_newest_snapshot_and_the_other_takes_over(lflow):
    lflow.settings = lflow.settings.model_copy(update={"snapshot_every_n": 300})
    s = lflow.settings
    store = SnapshotStore(s.snapshot_path, "logreg")
    events, labels = demo_stream()
    workers = [start(lflow, wait=False), start(lflow, wait=False)]
    owner_index = wait_one_owner(lflow, [port for _, port in workers], timeout=60)
    (owner, owner_port), (standby, standby_port) = workers[owner_index], workers[1 - owner_index]
    half = N // ROUND // 2
    stream_rounds(s, events, labels, range(half), owner_port, lflow)
    wait_status(owner_port, lambda st: st["learned_total"] == half * ROUND, 30, lflow)
    latest = store.latest_version()
    wait_status(standby_port, lambda st: st["version"] == latest, 10, lflow)  # hot-loaded the owner's snapshot

    served = online_predictions(s, {e["event_id"] for e in events[: half * ROUND]})
    by_worker: dict[str, set[int]] = {}
    for p in served:
        by_worker.setdefault(p["worker"], set()).add(int(p["model_version"]))
    assert len(by_worker) == 2, "both workers score (the scoring group splits the partitions)"
    assert all(max(versions) >= 1 for versions in by_worker.values()), by_worker  # both served snapshots

    owner.kill()
    owner.wait(30)
    assert standby.poll() is None
    wait_status(standby_port, owning, 45, lflow)  # failover: the standby now learns, from the latest snapshot
    stream_rounds(s, events, labels, range(half, N // ROUND), standby_port, lflow)
    wait_status(standby_port, lambda st: st["learned_total"] == N, 60, lflow)
    lflow.stop_all()
    assert_learned_exactly_once(lineage(store), s.labels_topic, N)
