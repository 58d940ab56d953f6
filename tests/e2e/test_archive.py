"""End to end: a real worker archives what it consumes and publishes; versions, lineage and replay over it.

Real embedded broker, real worker processes (the archiver is its own consumer group in every worker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from datastore.canonical import ContentHasher, SourceRecord
from datastore.catalog import coverage_of, list_manifests
from datastore.dataset import Selection, list_versions, snapshot, verify_version, version_rows
from datastore.segment import verify_segment
from datastore.storage import LocalStorage
from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset, sample_events
from models.train_demo import train_demo_model
from online_learning.snapshots import SnapshotStore
from streams.cli.main import app
from streams.cli.produce import bad_payloads, encode_events, produce
from streams.kafka.reader import read_all, wait_for
from streams.learning.lane import ensure_learning_topics
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
runner = CliRunner()


@pytest.fixture
def flow(flow):
    """conftest's flow with the archiver on, as every worker runs it by default (a child process)."""
    flow.settings = flow.settings.model_copy(update={"archive": True})
    return flow


def archived_count(storage: LocalStorage, topic: str) -> int:
    return sum(m.record_count for m in list_manifests(storage, [topic]))


def wait_archived(storage: LocalStorage, wanted: dict[str, int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(archived_count(storage, t) >= n for t, n in wanted.items()):
            return
        time.sleep(0.3)
    got = {t: archived_count(storage, t) for t in wanted}
    raise AssertionError(f"archive incomplete after {timeout} s: {got}, wanted {wanted}")


def cli(settings, *args: str):
    env = {"STREAMSCORE_STATE_DIR": str(settings.state_dir), "STREAMSCORE_DATA_DIR": str(settings.data_path),
           "STREAMSCORE_MODEL_DIR": str(settings.model_dir), "STREAMSCORE_SNAPSHOT_DIR": str(settings.snapshot_path)}
    if settings.learner is not None:
        env["STREAMSCORE_LEARNER"] = settings.learner
    return runner.invoke(app, list(args), env=env)


def test_archive_seals_verified_segments_lineage_and_replay(flow, tmp_path):
    s = flow.settings
    model_dir = tmp_path / "models" / "demo-risk" / "1"
    card = train_demo_model(model_dir, seed=7, n=3000, data_dir=s.data_path)  # training data -> a dataset version
    s = flow.settings = s.model_copy(update={"model_dir": model_dir})
    json_events, avro_events = sample_events(41, 300), sample_events(42, 100)
    bad = bad_payloads(FEATURE_NAMES, tag="arc")
    json_payloads = list(encode_events(json_events, "json")) + [p for _, p in bad]
    produce(s, flow.json_topic, json_payloads)
    produce(s, flow.avro_topic, encode_events(avro_events, "avro"))
    port = free_port()
    flow.start_worker(archive_segment_records=64, archive_segment_seconds=0.5, web_port=port)
    events = json_events + avro_events
    store = LocalStorage(s.data_path)
    wait_archived(store, {flow.json_topic: len(json_payloads), flow.avro_topic: len(avro_events),
                          s.prediction_topic: len(events)})
    # the archiver runs as the worker's child process; the worker's /metrics re-exports its counters
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/archive", timeout=5) as resp:
        status = json.loads(resp.read())
    assert status["mode"] == "process" and status["alive"] and status["restarts"] == 0, status
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    archived_metric = f'streamscore_archive_records_total{{topic="{s.prediction_topic}"}} {float(len(events))}'
    assert archived_metric in metrics, [line for line in metrics.splitlines() if "archive" in line]

    # sealed segments: each verifies against its manifest (sha256, bytes, offsets, content hash); size-capped
    manifests = list_manifests(store, [flow.json_topic, flow.avro_topic, s.prediction_topic])
    assert manifests and all(verify_segment(store, m) == [] for m in manifests)
    assert max(m.record_count for m in manifests) <= 64
    # the archive holds the topic byte for byte: same (key, value) multiset as the broker
    broker = sorted((m.key(), m.value()) for m in read_all(s, flow.json_topic))
    cut = snapshot(store, Selection(topics=[flow.json_topic]))[0]
    archived = sorted((row["key"], row["value"]) for _, row in version_rows(store, cut))
    assert archived == broker and len(archived) == len(json_payloads)

    # a dataset version of everything, through the CLI; verify it
    result = cli(s, "data", "snapshot", "-m", "e2e")
    assert result.exit_code == 0, result.output
    version = next(v for v in list_versions(store) if v.description == "e2e")
    assert version.topics[s.prediction_topic].records == len(events)
    # schema-level rejects are marked invalid in the archive; feature-level ones (missing/extra) decode fine
    feature_level = {"missing_feature", "extra_feature"}
    assert version.topics[flow.json_topic].invalid == sum(code not in feature_level for code, _ in bad)
    assert cli(s, "data", "verify", version.id[:10]).exit_code == 0
    assert cli(s, "data", "verify").exit_code == 0

    # replay reproduces every prediction bit for bit
    result = cli(s, "replay", "--data", version.id[:12], "--model", "demo-risk@1")
    assert result.exit_code == 0, result.output
    assert f"{len(events)} of {len(events)} predictions reproduced bit for bit" in result.output, result.output
    print(result.output)
    assert f"{len(bad)} not scorable" in result.output
    # ... and detects a different artifact under the same name and version
    other = tmp_path / "other" / "demo-risk" / "1"
    train_demo_model(other, seed=8, n=3000)
    result = cli(s, "replay", "--data", version.id, "--model", str(other))
    assert result.exit_code == 1, result.output
    assert "not this artifact" in result.output and "predictions differ" in result.output
    print(result.output)

    # lineage: event -> input record -> prediction -> model -> training data version
    event = json_events[5]
    prediction = next(orjson.loads(m.value()) for m in read_all(s, s.prediction_topic)
                      if m.key() == event["event_id"].encode())
    result = cli(s, "lineage", event["event_id"])
    assert result.exit_code == 0, result.output
    out = result.output
    print(out)
    assert f"event {event['event_id']}" in out and f"input      {flow.json_topic}[" in out
    assert f"score {prediction['score']!r}" in out and "demo-risk@1" in out
    assert f"in data    {version.id}" in out
    assert f"trained on {card.training_data_version}" in out
    assert list_versions(store)[0].id == card.training_data_version  # the training set is an archived version
    bad_key = bad[0][1][0].decode()
    result = cli(s, "lineage", bad_key)
    assert result.exit_code == 0 and "invalid" in result.output, result.output
    assert cli(s, "lineage", "no-such-event").exit_code == 1


def expected_id(settings, topics: list[str]) -> tuple[str, int]:
    """The dataset id computed straight from the broker's records (no archive involved)."""
    records = []
    for topic in topics:
        for m in read_all(settings, topic):
            ts_type, ts = m.timestamp()
            records.append(SourceRecord(m.topic(), m.partition(), m.offset(), ts if ts_type else None, m.key(),
                                        m.value(), list(m.headers() or [])))
    hasher = ContentHasher()
    for rec in sorted(records, key=lambda r: r.position):
        hasher.add(rec)
    return hasher.hexdigest(), hasher.count


@pytest.mark.parametrize("engine", ["batch"])
def test_two_independent_archivers_give_the_same_version_id(flow, tmp_path):
    s = flow.settings
    produce(s, flow.json_topic, encode_events(sample_events(51, 400), "json"))
    produce(s, flow.avro_topic, encode_events(sample_events(52, 100), "avro"))
    topics = [flow.json_topic, flow.avro_topic]
    stores = []
    # two apps (own groups, own data dirs), cutting segments differently: by 37 records vs by time
    for name, records, seconds in (("a", 37, 0.3), ("b", 100_000, 0.5)):
        data_dir = tmp_path / f"data-{name}"
        flow.start_worker(app_id=f"{s.app_id}-{name}", data_dir=data_dir, archive_segment_records=records,
                          archive_segment_seconds=seconds, wait=False)
        stores.append(LocalStorage(data_dir))
    for store in stores:
        wait_archived(store, {flow.json_topic: 400, flow.avro_topic: 100}, timeout=90)
    segments = [len(list_manifests(store, topics)) for store in stores]
    versions = [snapshot(store, Selection(topics=topics))[0] for store in stores]

    assert segments[0] != segments[1]  # different segmentation ...
    assert versions[0].id == versions[1].id  # ... same content, same version id
    assert (versions[0].id, versions[0].record_count) == expected_id(s, topics)  # = hash of the broker's records
    again, created = snapshot(stores[0], Selection(topics=topics))
    assert (again.id, created) == (versions[0].id, False)


def archive_commits(settings, topic: str) -> list[TopicPartition]:
    consumer = Consumer(settings.group_consumer_config(f"{settings.app_id}-archive"))
    try:
        return consumer.committed([TopicPartition(topic, p) for p in range(settings.partitions)], timeout=10)
    finally:
        consumer.close()


@pytest.mark.parametrize("engine", ["batch"])
def test_kill_9_while_archiving_leaves_no_corrupt_segment_and_loses_nothing(flow):
    s = flow.settings
    events = sample_events(61, 20_000)
    overrides = {"archive_segment_records": 1500, "archive_segment_seconds": 1.0}
    worker = flow.start_worker(**overrides)
    producer = threading.Thread(target=produce, args=(s, flow.json_topic, list(encode_events(events))),
                                kwargs={"rate": 5000})
    producer.start()
    store = LocalStorage(s.data_path)
    wait_for(s, s.prediction_topic, lambda ms: len(ms) >= 3000, timeout=90)
    wait_archived(store, {flow.json_topic: 1500})
    deadline = time.monotonic() + 30
    while sum(max(tp.offset, 0) for tp in archive_commits(s, flow.json_topic)) < 1000:
        assert time.monotonic() < deadline, "the archiver committed nothing"
        time.sleep(0.2)
    worker.kill()  # SIGKILL, mid-stream: segments are open
    worker.wait(30)
    unsealed = list((store.spool_dir()).rglob("*.avro.part"))
    sealed = list_manifests(store)
    assert unsealed, "no segment was being written when the worker died; the test proves nothing"
    assert sealed and all(verify_segment(store, m) == [] for m in sealed)  # nothing sealed is corrupt
    # everything the archive group committed (acknowledged) is in a sealed segment
    for tp in archive_commits(s, flow.json_topic) + archive_commits(s, s.prediction_topic):
        cov = coverage_of(store, tp.topic, tp.partition)
        assert all(cov.contains(o) for o in range(max(tp.offset, 0))), tp

    flow.start_worker(**overrides)
    producer.join()
    wait_archived(store, {flow.json_topic: len(events)}, timeout=120)
    version, _ = snapshot(store, Selection(topics=[flow.json_topic]))
    ids = {row["event"]["event_id"] for _, row in version_rows(store, version)}
    assert ids == {e["event_id"] for e in events}  # no event lost
    assert version.record_count == len(events)  # none archived twice either
    assert verify_version(store, version) == []
    assert not any(p.exists() for p in unsealed)  # the dead writer's temp files were discarded at restart
    assert all(verify_segment(store, m) == [] for m in list_manifests(store))
    print(f"kill -9: {len(sealed)} sealed segments verified, {len(unsealed)} unsealed files discarded")



@pytest.mark.parametrize("engine", ["faust"])
def test_river_snapshots_link_to_the_archived_labels_they_learned(flow):
    run = flow.settings.app_id.removeprefix("test-")
    s = flow.settings = flow.settings.model_copy(update={
        "learner": "logreg", "labels_topic": f"labels-{run}", "online_prediction_topic": f"online-predictions-{run}",
        "learner_metrics_topic": f"learner-metrics-{run}", "snapshot_dir": flow.log_dir / "snapshots",
        "snapshot_every_n": 300, "snapshot_every_s": 600.0})
    n = 600
    events = sample_events(71, n)
    _, y = make_dataset(71, n)  # the same rows: the events' true labels
    labels = [(e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": CLASS_NAMES[int(v)],
                                                     "label_time": int(time.time() * 1000)}))
              for e, v in zip(events, y, strict=True)]
    ensure_learning_topics(s)  # the worker creates them too, but maybe after it reports ready
    flow.start_worker(archive_segment_records=128, archive_segment_seconds=0.5)
    produce(s, flow.json_topic, encode_events(events))
    wait_for(s, s.online_prediction_topic, lambda ms: len(ms) >= n, timeout=60)  # features joined before labels
    snapshots = SnapshotStore(s.snapshot_path, "logreg")
    for version, chunk in ((1, labels[:300]), (2, labels[300:])):  # a snapshot every 300 labels learned
        produce(s, s.labels_topic, chunk)
        deadline = time.monotonic() + 60
        while (snapshots.latest_version() or 0) < version:
            assert time.monotonic() < deadline, f"no snapshot v{version}:\n{flow.log()}"
            time.sleep(0.3)
    store = LocalStorage(s.data_path)
    wait_archived(store, {s.labels_topic: n})

    result = cli(s, "data", "learned", "logreg", "1")
    assert result.exit_code == 0, result.output
    result2 = cli(s, "data", "learned", "logreg", "2")
    assert result2.exit_code == 0, result2.output
    v1, v2 = (next(v for v in list_versions(store) if v.description.startswith(f"labels learned by logreg v{k}"))
              for k in (1, 2))
    print(result.output, result2.output)
    learned = [snapshots.meta(k).offsets[0] for k in (1, 2)]
    assert [v.record_count for v in (v1, v2)] == [r.last_offset - r.first_offset + 1 for r in learned]
    assert v2.parent == v1.id and v1.id in result.output
    rows = [row for _, row in version_rows(store, v1)]
    assert [row["label"]["event_id"] for row in rows] == [k.decode() for k, _ in labels[:v1.record_count]]
    assert verify_version(store, v2) == []
    # lineage of a labelled event: its input, its label, and the snapshot that learned it with that data version
    result = cli(s, "lineage", events[400]["event_id"])
    assert result.exit_code == 0, result.output
    assert f"label      {s.labels_topic}[0]@400" in result.output
    assert f"learned by logreg v2  data {v2.id}" in result.output


@pytest.mark.parametrize("engine", ["batch"])
def test_standalone_archiver_beside_a_worker_that_does_not_archive(flow):
    s = flow.settings
    events = sample_events(81, 500)
    flow.start_worker(archive=False)
    env = {**os.environ, **s.as_env(), "STREAMSCORE_ARCHIVE_SEGMENT_SECONDS": "0.5"}
    with open(flow.log_dir / "archiver.log", "wb") as log:
        archiver = subprocess.Popen([sys.executable, "-m", "streams.cli.main", "data", "archiver"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
    try:
        produce(s, flow.json_topic, encode_events(events))
        store = LocalStorage(s.data_path)
        wait_archived(store, {flow.json_topic: len(events), s.prediction_topic: len(events)})
    finally:
        archiver.send_signal(signal.SIGTERM)
        rc = archiver.wait(30)
    assert rc == 0, (flow.log_dir / "archiver.log").read_text()
    ends = {(m.topic, m.partition): m.last_offset + 1 for m in list_manifests(store, [flow.json_topic])}
    assert {(tp.topic, tp.partition): tp.offset for tp in archive_commits(s, flow.json_topic)} == ends
