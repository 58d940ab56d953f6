"""Unit tests of the datastore: segments, content-addressed versions, recovery, retention, training data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from datastore.archive import Archive, TopicSpec
from datastore.catalog import list_manifests, recover
from datastore.dataset import Selection, load_version, snapshot, verify_version
from datastore.manifest import manifest_key
from datastore.retention import apply_retention
from datastore.segment import verify_segment
from datastore.storage import LocalStorage
from models.card import ModelCard
from models.demo import sample_events
from models.train_demo import train_demo_model
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def records(topic: str = "features", n: int = 50, partitions: int = 2, seed: int = 1) -> list:
    from datastore.canonical import SourceRecord

    out = []
    for i, e in enumerate(sample_events(seed, n)):
        p = i % partitions
        out.append(SourceRecord(topic, p, i // partitions, 1_700_000_000_000 + i, e["event_id"].encode(),
                                orjson.dumps(e), [("traceparent", b"00-x")]))
    return out


def archive(store: LocalStorage, recs: list, segment_records: int, codec: str = "deflate") -> None:
    arc: Archive[int] = Archive(store, {"features": TopicSpec("event", "json")}, segment_records, 60.0, codec=codec)
    arc.add([(r, i) for i, r in enumerate(recs)])
    arc.seal_all()
    arc.close()


def test_version_id_depends_on_the_records_only(tmp_path):
    recs = records()
    stores = [LocalStorage(tmp_path / name) for name in ("a", "b", "c")]
    archive(stores[0], recs, 7)
    archive(stores[1], recs, 1000, codec="null")
    archive(stores[2], [r._replace(value=r.value.replace(b"evt", b"EVT")) if i == 13 else r
                        for i, r in enumerate(recs)], 7)
    ids = [snapshot(s, Selection())[0].id for s in stores]
    assert len(list_manifests(stores[0])) != len(list_manifests(stores[1]))
    assert ids[0] == ids[1]  # other segmentation and codec, same records: same id
    assert ids[2] != ids[0]  # one changed byte: another id


def test_a_flipped_byte_is_caught_by_segment_and_version_verification(tmp_path):
    store = LocalStorage(tmp_path)
    archive(store, records(), 10)
    version, _ = snapshot(store, Selection())
    victim = list_manifests(store)[2]
    path = store.path(victim.key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert any("sha256" in p for p in verify_segment(store, victim))
    assert verify_version(store, version) and "sha256" in verify_version(store, version)[0]


def test_redelivered_records_are_archived_once(tmp_path):
    store = LocalStorage(tmp_path)
    recs = records(n=20, partitions=1)
    archive(store, recs[:12], 5)  # 0..11 sealed (last segment by flush)
    archive(store, recs[8:], 5)  # a restart re-reads 8..19: 8..11 are skipped
    version, _ = snapshot(store, Selection())
    assert version.record_count == 20 and version.duplicates_dropped == 0
    assert sum(m.record_count for m in list_manifests(store)) == 20


def test_recovery_discards_unsealed_files_of_a_killed_writer_and_completes_manifests(tmp_path):
    """A real process killed with SIGKILL mid-segment: its temp file is discarded, sealed data is intact."""
    data = tmp_path / "data"
    script = textwrap.dedent(f"""
        import os, signal, orjson
        from datastore.archive import Archive, TopicSpec
        from datastore.canonical import SourceRecord
        from datastore.storage import LocalStorage
        arc = Archive(LocalStorage({str(data)!r}), {{"t": TopicSpec("event")}}, 10, 60.0)
        arc.add([(SourceRecord("t", 0, o, None, b"k", b"{{}}", []), o) for o in range(25)])  # 2 sealed, 5 open
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9
    store = LocalStorage(data)
    assert len(list(store.spool_dir().rglob("*.part"))) == 1
    # and a segment published whose manifest was never written (death between the two steps)
    sealed = list_manifests(store)
    store.delete(manifest_key(sealed[-1].key))
    report = recover(store)
    assert len(report.discarded_temp_files) == 1 and report.completed_manifests == [sealed[-1].key]
    after = list_manifests(store)
    assert [m.key for m in after] == [m.key for m in sealed] and all(verify_segment(store, m) == [] for m in after)
    assert after[-1].content_sha256 == sealed[-1].content_sha256
    assert not list(store.spool_dir().rglob("*.part"))


def test_retention_never_deletes_a_segment_a_version_lists(tmp_path):
    store = LocalStorage(tmp_path)
    archive(store, records(n=30, partitions=1), 10)
    kept, _ = snapshot(store, Selection(until_ms=1_700_000_000_000 + 10))  # the first segment only
    archive(store, records(n=60, partitions=1)[30:], 10)
    report = apply_retention(store, max_age_s=None, max_bytes=1)
    assert report.kept_referenced == 1 and len(report.deleted) == 5
    assert [m.key for m in list_manifests(store)] == [s.key for s in kept.segments]
    assert verify_version(store, kept) == []


def test_training_data_version_is_content_addressed_and_linked_from_the_card(tmp_path):
    a = train_demo_model(tmp_path / "m1", seed=3, n=1200, data_dir=tmp_path / "data")
    b = train_demo_model(tmp_path / "m2", seed=3, n=1200, data_dir=tmp_path / "other-data")
    store = LocalStorage(tmp_path / "data")
    version = load_version(store, a.training_data_version)
    assert a.training_data_version == b.training_data_version  # same data, same id, in any store
    assert version.record_count == a.n_train and version.selection.topics == ["_training.demo-risk.1"]
    assert ModelCard.load(tmp_path / "m1").training_data_version == version.id
    assert snapshot(store, Selection())[0].record_count == 0  # internal topics stay out of stream snapshots


def test_s3_data_store_url_is_refused(tmp_path):
    from typer.testing import CliRunner

    from streams.cli.main import app

    result = CliRunner().invoke(app, ["data", "versions"], env={"STREAMSCORE_DATA_STORE_URL": "s3://bucket/x",
                                                                 "STREAMSCORE_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 2 and "not implemented" in result.output
    with pytest.raises(Exception, match="not implemented"):
        from streams.archive.service import register_archiver

        # the store is opened before the app is touched
        register_archiver(None, Settings(state_dir=tmp_path, data_store_url="s3://bucket/x"))  # type: ignore[arg-type]


def test_archived_rows_read_back_validate_against_the_pydantic_twins(tmp_path):
    from datastore.canonical import SourceRecord
    from datastore.segment import read_segment
    from schemas.archive import ArchivedEvent, ArchivedLabel, ArchivedPrediction
    from schemas.labels import Label, encode_label

    store = LocalStorage(tmp_path)
    prediction = {"event_id": "e1", "entity_id": "u", "event_time": 1, "model_name": "m", "model_version": "1",
                  "model_sha256": "0" * 64, "score": 0.25, "label": "legit", "probabilities": {"legit": 0.75,
                  "risky": 0.25}, "input_hash": "1" * 64, "scored_at": 2, "latency_ms": 1.5, "route": "single",
                  "worker": "w", "source_topic": "features", "source_partition": 0, "source_offset": 0,
                  "schema_version": 1}
    label = encode_label(Label(event_id="e1", label="risky", label_time=3))
    topics = {"features": TopicSpec("event"), "predictions": TopicSpec("prediction"), "labels": TopicSpec("label")}
    arc: Archive[int] = Archive(store, topics, 100, 60.0)
    recs = records(n=2, partitions=1) + [
        SourceRecord("features", 0, 2, None, b"bad", b"not json", []),
        SourceRecord("predictions", 0, 0, 5, b"e1", orjson.dumps(prediction), [("model_version", b"1")]),
        SourceRecord("labels", 0, 0, 6, b"e1", label, []),
        SourceRecord("labels", 0, 1, 7, b"e2", b'{"event_id": "e2"}', [])]
    arc.add([(r, i) for i, r in enumerate(recs)])
    arc.seal_all()
    arc.close()
    twin = {"event": ArchivedEvent, "prediction": ArchivedPrediction, "label": ArchivedLabel}
    rows = {m.kind: list(read_segment(store, m.key, m.sha256)) for m in list_manifests(store)}
    for kind, kind_rows in rows.items():
        for row in kind_rows:
            twin[kind].model_validate(row)
    assert [r["invalid_reason"] for r in rows["event"]] == [None, None, "not_json"]
    assert rows["prediction"][0]["prediction"] == prediction
    assert [r["invalid_reason"] for r in rows["label"]] == [None, "schema_violation"]


def test_a_river_snapshot_links_to_the_content_addressed_labels_it_learned(tmp_path):
    from datastore.canonical import ContentHasher, SourceRecord
    from online_learning.snapshots import SnapshotStore
    from schemas.labels import Label, LearnedRange, encode_label
    from streams.archive.lineage import LabelsNotArchived, learner_data_version

    store = LocalStorage(tmp_path / "data")
    labels = [SourceRecord("labels", 0, i, 1000 + i, f"e{i}".encode(),
                           encode_label(Label(event_id=f"e{i}", label="risky" if i % 3 else "legit", label_time=i)), [])
              for i in range(30)]
    arc: Archive[int] = Archive(store, {"labels": TopicSpec("label")}, 8, 60.0)
    arc.add([(r, r.offset) for r in labels[:20]])
    arc.seal_all()
    arc.close()
    snaps = SnapshotStore(tmp_path / "snapshots", "logreg")
    common = {"worker": "w", "feature_names": ["x"], "classes": ["legit", "risky"]}
    for v, parent, first, last in ((1, None, 0, 11), (2, 1, 12, 19), (3, 2, 20, 29)):
        snaps.write(b"model", version=v, parent=parent, kind="learned", **common,
                    offsets=[LearnedRange(topic="labels", partition=0, first_offset=first, last_offset=last)])
    snaps.rollback(1, worker="cli")  # v4 serves v1's model again

    v1, created = learner_data_version(store, snaps, 1)
    v2, _ = learner_data_version(store, snaps, 2)
    again, created_again = learner_data_version(store, snaps, 1)
    assert created and not created_again and again.id == v1.id
    assert (v1.record_count, v2.record_count, v2.parent) == (12, 8, v1.id)
    hasher = ContentHasher()
    for rec in labels[:12]:
        hasher.add(rec)
    assert v1.id == hasher.hexdigest()  # exactly the label records v1 learned
    assert learner_data_version(store, snaps, 4)[0].id == v1.id  # a rollback learned nothing new
    assert verify_version(store, v2) == []
    with pytest.raises(LabelsNotArchived, match=r"labels\[0\]@20..29"):
        learner_data_version(store, snaps, 3)  # its labels are not sealed yet
