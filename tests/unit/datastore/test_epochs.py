"""Epochs: a broker that reuses offsets (memory-only restart, topic re-created) never makes new records look archived.

faults issue #4: after a restart the archiver skipped 4912 new records as "already archived". These tests
replay that with two incarnations of the same partition whose records differ at the same offsets.
"""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil

import orjson
import pytest

import datastore
from datastore.archive import Archive, TopicSpec
from datastore.canonical import ContentHasher, SourceRecord
from datastore.catalog import archived_row, coverage_of, find_rows, list_manifests
from datastore.dataset import OffsetRange, Selection, build_version, snapshot, verify_version
from datastore.epochs import list_epochs
from datastore.manifest import manifest_key
from datastore.retention import compact
from datastore.storage import LocalStorage

TOPICS = {"features": TopicSpec("event", "json")}


def incarnation(tag: str, n: int, start: int = 0, partition: int = 0) -> list[SourceRecord]:
    """n FeatureEvent records at offsets start.. of one incarnation; ``tag`` makes their bytes differ."""
    out = []
    for off in range(start, start + n):
        eid = f"{tag}-{off}"
        value = orjson.dumps({"event_id": eid, "entity_id": "u", "event_time": off, "schema_version": 1,
                              "features": {"x": float(off)}})
        out.append(SourceRecord("features", partition, off, 1_700_000_000_000 + off, eid.encode(), value, []))
    return out


def run(store: LocalStorage, recs: list[SourceRecord], segment_records: int = 10, **kw: object) -> Archive:
    """One archiver life: records in, everything sealed, closed (like a worker that stops gracefully)."""
    arc: Archive[int] = Archive(store, TOPICS, segment_records, 60.0, codec="null", writer="test", **kw)
    acked = arc.add([(r, r.offset) for r in recs]) + arc.seal_all()
    arc.close()
    arc.acked = acked  # type: ignore[attr-defined]
    return arc


def epochs_of(store: LocalStorage) -> list[tuple[int, int, int]]:
    return [(m.epoch, m.first_offset, m.last_offset) for m in list_manifests(store)]


def test_a_restarted_memory_broker_gives_a_new_epoch_and_every_new_record_is_archived(tmp_path):
    store = LocalStorage(tmp_path)
    old, new = incarnation("a", 49), incarnation("b", 37)
    run(store, old)
    before, _ = snapshot(store, Selection())
    arc = run(store, new)  # the broker restarted empty: offsets 0.. again, other records
    assert (arc.stats["records_written"], arc.stats["records_skipped"], arc.stats["epochs_started"]) == (37, 0, 1)
    assert sorted(arc.acked) == list(range(37))  # acked to the new incarnation: all of its records, once
    assert [(e.epoch, e.reason, e.first_offset) for e in list_epochs(store, "features", 0)] == [
        (0, "initial", None), (1, "record_differs", 0)]
    assert "value" in list_epochs(store, "features", 0)[1].evidence
    assert {e for e, _, _ in epochs_of(store)} == {0, 1}
    assert coverage_of(store, "features", 0).contains_range(0, 36)  # the newest epoch by default
    assert not coverage_of(store, "features", 0, epoch=1).contains(40)
    assert archived_row(store, "features", 0, 1, 5)["key"] == b"b-5"
    assert archived_row(store, "features", 0, 0, 5)["key"] == b"a-5"
    # both incarnations are data: a version holds 49 + 37 records, hashed with their epoch
    after, created = snapshot(store, Selection())
    expected = ContentHasher()
    for rec in old:
        expected.add(rec)
    for rec in new:
        expected.add(rec, epoch=1)
    assert created and after.id == expected.hexdigest() and after.record_count == 86
    assert after.topics["features"].partitions[0].epochs[1].records == 37
    assert verify_version(store, after) == [] and verify_version(store, before) == []
    assert before.holds("features", 0, 5, 1_700_000_000_005, epoch=0)
    assert not before.holds("features", 0, 5, 1_700_000_000_005, epoch=1)
    # a third life of the same new incarnation (a redelivery) writes nothing and starts no epoch
    again = run(store, new[10:])
    assert (again.stats["records_written"], again.stats["records_skipped"], again.stats["epochs_started"]) == (
        0, 27, 0)


def test_lineage_finds_records_of_every_epoch_newest_first(tmp_path):
    store = LocalStorage(tmp_path)
    old = incarnation("a", 20)
    new = [r._replace(value=r.value.replace(b'"x":', b'"y":')) for r in old]  # same keys, other features
    run(store, old)
    run(store, new)
    hits = find_rows(store, "a-7")
    assert [(m.epoch, row["offset"]) for m, row in hits] == [(1, 7), (0, 7)]
    assert orjson.loads(hits[0][1]["value"])["features"] == {"y": 7.0}


def test_a_changed_topic_id_starts_an_epoch_even_beyond_every_archived_offset(tmp_path):
    store = LocalStorage(tmp_path)
    arc: Archive[int] = Archive(store, TOPICS, 10, 60.0, codec="null")
    assert arc.check_incarnation("features", 0, [], topic_id="id-1").epoch == 0  # adopted by epoch 0
    arc.add([(r, r.offset) for r in incarnation("a", 20)])
    arc.seal_all()
    # re-created topic; the consumer's position survived, so it reads offsets no record can be compared at
    later = incarnation("b", 5, start=20)
    assert arc.check_incarnation("features", 0, later[:1], topic_id="id-2").epoch == 1
    arc.add([(r, r.offset) for r in later])
    arc.seal_all()
    arc.close()
    assert [(e.epoch, e.topic_id, e.reason) for e in list_epochs(store, "features", 0)] == [
        (0, "id-1", "initial"), (1, "id-2", "topic_id_changed")]
    assert epochs_of(store) == [(0, 0, 9), (0, 10, 19), (1, 20, 24)]
    # the same id again: same epoch, redelivered records skipped
    arc2: Archive[int] = Archive(store, TOPICS, 10, 60.0, codec="null")
    assert arc2.check_incarnation("features", 0, later, topic_id="id-2").epoch == 1
    assert arc2.add([(r, r.offset) for r in later]) == [20, 21, 22, 23, 24]
    assert arc2.stats["records_skipped"] == 5 and arc2.stats["epochs_started"] == 0
    arc2.close()


def test_a_rewind_within_a_session_seals_the_old_incarnation_without_acking_it(tmp_path):
    """The broker restarted under a running consumer (no rebalance): offsets jump back to 0."""
    store = LocalStorage(tmp_path)
    started = []
    arc: Archive[int] = Archive(store, TOPICS, 100, 60.0, codec="null", on_new_epoch=started.append)
    assert arc.add([(r, r.offset) for r in incarnation("a", 15)]) == []  # all in the open segment
    assert arc.add([(r, 1000 + r.offset) for r in incarnation("b", 4)]) == []
    assert arc.stats["old_epoch_tokens"] == 15 and [e.epoch for e in started] == [1]
    assert arc.open_first_offset("features", 0) == 0 and arc.epoch_of("features", 0) == 1
    assert arc.seal_all() == [1000, 1001, 1002, 1003]
    arc.close()
    assert epochs_of(store) == [(0, 0, 14), (1, 0, 3)]  # the old incarnation's records are sealed, not dropped


def test_a_redelivery_into_the_open_segment_is_compared_too(tmp_path):
    store = LocalStorage(tmp_path)
    arc: Archive[int] = Archive(store, TOPICS, 100, 60.0, codec="null")
    a = incarnation("a", 6)
    arc.add([(r, r.offset) for r in a])
    assert arc.add([(a[2], 2), (a[3], 3)]) == [] and arc.stats["epochs_started"] == 0  # same bytes: they wait
    arc.add([(incarnation("b", 1, start=2)[0], 102)])  # other bytes at an open offset: a new incarnation
    assert arc.stats["epochs_started"] == 1 and arc.seal_all() == [102]
    arc.close()
    assert epochs_of(store) == [(0, 0, 5), (1, 2, 2)]


@pytest.mark.parametrize("second", ["a", "b"])
def test_records_below_a_retention_hole_wait_for_the_first_comparable_record(tmp_path, second):
    """Archive retention deleted offsets 0..9; a consumer reset to the earliest offset reads them again."""
    store = LocalStorage(tmp_path)
    run(store, incarnation("a", 20))
    first = list_manifests(store)[0]
    store.delete(first.key)
    store.delete(manifest_key(first.key))
    arc = run(store, incarnation(second, 20), segment_records=100)
    if second == "a":  # the same incarnation: 0..9 archived again in epoch 0, 10..19 skipped
        assert (arc.stats["epochs_started"], arc.stats["records_written"], arc.stats["records_skipped"]) == (0, 10, 10)
        assert epochs_of(store) == [(0, 0, 9), (0, 10, 19)]
    else:  # offset 10 differs: 0..9, written while undecided, move to the new epoch with the rest
        assert (arc.stats["epochs_started"], arc.stats["records_written"], arc.stats["records_skipped"]) == (1, 20, 0)
        assert epochs_of(store) == [(0, 10, 19), (1, 0, 19)]
    assert sorted(arc.acked) == list(range(20))


def test_two_writers_seeing_the_same_new_incarnation_start_one_epoch(tmp_path):
    store = LocalStorage(tmp_path)
    run(store, incarnation("a", 20))
    new = incarnation("b", 20)
    one: Archive[int] = Archive(store, TOPICS, 10, 60.0, codec="null", writer="w1")
    two: Archive[int] = Archive(store, TOPICS, 10, 60.0, codec="null", writer="w2")
    one.add([(r, r.offset) for r in new[:10]])  # w1 starts epoch 1 and seals 0..9 there
    two.add([(r, r.offset) for r in new[5:15]])  # w2 (partition moved) finds epoch 1 and joins it
    assert (one.stats["epochs_started"], two.stats["epochs_started"]) == (1, 0)
    assert two.stats["records_skipped"] == 5 and two.epoch_of("features", 0) == 1
    for arc in (one, two):
        arc.seal_all()
        arc.close()
    assert len(list_epochs(store, "features", 0)) == 2
    assert coverage_of(store, "features", 0, epoch=1).contains_range(0, 14)


def test_manifests_written_before_epochs_read_as_epoch_0_and_keep_their_version_id(tmp_path):
    store = LocalStorage(tmp_path)
    recs = incarnation("a", 25)
    run(store, recs)
    for m in list_manifests(store):  # strip the field, as in an archive written by the previous release
        data = json.loads(store.get_bytes(manifest_key(m.key)))
        del data["epoch"]
        store.put_bytes(manifest_key(m.key), json.dumps(data).encode())
    hasher = ContentHasher()
    for rec in recs:
        hasher.add(rec)
    assert all(m.epoch == 0 for m in list_manifests(store))
    assert build_version(store, Selection()).id == hasher.hexdigest()
    arc = run(store, recs)  # and de-duplication against them still works
    assert (arc.stats["records_written"], arc.stats["records_skipped"]) == (0, 25)


def test_offset_ranges_without_epoch_select_the_newest_epoch_and_compaction_keeps_epochs_apart(tmp_path):
    store = LocalStorage(tmp_path)
    run(store, incarnation("a", 12), segment_records=3)
    run(store, incarnation("b", 12), segment_records=3)
    newest = build_version(store, Selection(offsets=[OffsetRange(topic="features", partition=0, first_offset=0,
                                                                 last_offset=5)]))
    oldest = build_version(store, Selection(offsets=[OffsetRange(topic="features", partition=0, first_offset=0,
                                                                 last_offset=5, epoch=0)]))
    assert {s.epoch for s in newest.segments} == {1} and {s.epoch for s in oldest.segments} == {0}
    assert newest.record_count == oldest.record_count == 6 and newest.id != oldest.id
    whole = build_version(store, Selection()).id
    report = compact(store, below_records=5, target_records=100)
    assert len(report.merged) == 2 and epochs_of(store) == [(0, 0, 11), (1, 0, 11)]
    assert build_version(store, Selection()).id == whole  # ids are over records, not segments


def test_drain_counts_split_written_and_skipped_per_topic(tmp_path):
    store = LocalStorage(tmp_path)
    run(store, incarnation("a", 10))
    arc: Archive[int] = Archive(store, TOPICS, 10, 60.0, codec="null")
    arc.add([(r, r.offset) for r in incarnation("a", 15)])
    assert arc.drain_counts() == {("features", "skipped"): 10, ("features", "written"): 5}
    assert arc.drain_counts() == {}
    arc.seal_all()
    arc.close()


@pytest.mark.parametrize("name", sorted(m.name for m in pkgutil.iter_modules(datastore.__path__)))
def test_docstring_examples(name):
    module = importlib.import_module(f"datastore.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_recovery_completes_the_manifest_of_an_epoch_segment(tmp_path):
    from datastore.catalog import recover
    from datastore.segment import verify_segment

    store = LocalStorage(tmp_path)
    run(store, incarnation("a", 10))
    run(store, incarnation("b", 10))
    lost = [m for m in list_manifests(store) if m.epoch == 1][0]
    store.delete(manifest_key(lost.key))  # the writer died between publishing the file and its manifest
    assert recover(store).completed_manifests == [lost.key]
    rebuilt = [m for m in list_manifests(store) if m.key == lost.key][0]
    assert (rebuilt.epoch, rebuilt.content_sha256) == (1, lost.content_sha256) and verify_segment(store, rebuilt) == []


def test_records_sealed_before_the_first_comparable_one_stay_but_checking_goes_on(tmp_path):
    store = LocalStorage(tmp_path)
    run(store, incarnation("a", 20))
    first = list_manifests(store)[0]
    store.delete(first.key)
    store.delete(manifest_key(first.key))
    arc = run(store, incarnation("b", 20), segment_records=4)
    assert arc.stats["epochs_started"] == 1 and arc.stats["records_skipped"] == 0
    # 0..7 were sealed (size) before offset 10 revealed the new incarnation: they stay in epoch 0; 8, 9 move
    assert epochs_of(store) == [(0, 0, 3), (0, 4, 7), (0, 10, 19), (1, 8, 11), (1, 12, 15), (1, 16, 19)]
    assert sorted(arc.acked) == list(range(20))


def test_a_writer_that_finds_a_third_incarnation_after_another_started_the_second_starts_a_third(tmp_path):
    store = LocalStorage(tmp_path)
    run(store, incarnation("a", 10))
    slow: Archive[int] = Archive(store, TOPICS, 10, 60.0, codec="null", writer="slow")
    slow.epoch_of("features", 0)  # it read epoch 0 before the other writer moved on
    run(store, incarnation("b", 10))  # another writer: epoch 1
    acked = slow.add([(r, r.offset) for r in incarnation("c", 3)]) + slow.seal_all()
    slow.close()
    assert [e.epoch for e in list_epochs(store, "features", 0)] == [0, 1, 2] and acked == [0, 1, 2]
    assert archived_row(store, "features", 0, 2, 1)["key"] == b"c-1"
