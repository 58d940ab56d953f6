"""The archiver's cheap paths give the archive exactly what the per-record paths gave: input rows decoded in
bulk (msgspec) equal ``event_row``'s for every kind of input, and an open record is compared by digest."""

from __future__ import annotations

import subprocess
import sys

import orjson

from datastore.archive import Archive, TopicSpec
from datastore.canonical import SourceRecord
from datastore.catalog import list_manifests
from datastore.records import event_row, event_rows
from datastore.segment import read_segment
from datastore.storage import LocalStorage
from models.demo import sample_events

GOOD = orjson.dumps({"event_id": "e1", "entity_id": "u1", "event_time": 5, "schema_version": 1,
                     "features": {"a": 1, "b": 2.5}})


def variants() -> list[bytes | None]:
    """Valid, invalid and unusual JSON values (every branch of the fast path and its fallbacks)."""
    good = GOOD.decode()
    return [
        GOOD,
        GOOD.replace(b'"a":1', b'"a":1,"a":2'),  # duplicate key
        GOOD.replace(b'"u1"', b'"u:1"'),  # a colon inside a string
        GOOD.replace(b'"u1"', b'"u\\"1"'),  # an escape
        GOOD.replace(b'"a":1', b'"a":1e400'),  # inf once parsed
        GOOD.replace(b'"a":1', b'"a":true'),  # bool is not a float (strict)
        GOOD.replace(b'"schema_version":1', b'"schema_version":99'),  # unsupported version
        GOOD.replace(b'"e1"', b'""'),  # empty event id
        GOOD[:-1] + b',"metadata":{"src":"x"}}',
        GOOD[:-1] + b',"metadata":null}',
        GOOD[:-1] + b',"extra":1}',  # unknown field
        good.replace('"features":{"a":1,"b":2.5}', '"features":{}').encode(),
        b"not json", b"", None, b"[]", b"\x00\x00\x00\x00\x01", b"x" * 70_000,
        *[orjson.dumps(e) for e in sample_events(3, 50)],
    ]


def records(values: list[bytes | None], topic: str = "features") -> list[SourceRecord]:
    return [SourceRecord(topic, 0, i, 1_000 + i, b"k%d" % i, v, [("h", b"1")]) for i, v in enumerate(values)]


def test_bulk_input_rows_equal_the_per_record_rows_for_every_kind_of_value() -> None:
    recs = records(variants())
    for fmt in ("json", "auto"):
        assert event_rows(recs, fmt) == [event_row(r, fmt) for r in recs]
    reasons = [row["invalid_reason"] for row in event_rows(recs, "json")[:18]]
    assert reasons[0] is None and reasons[1] is not None and reasons[2] is None and reasons[12] == "not_json"


def test_archive_rows_written_are_those_of_the_per_record_path(tmp_path) -> None:
    recs = records(variants())
    arc: Archive[int] = Archive(LocalStorage(tmp_path), {"features": TopicSpec("event", "json")}, 1000, 60,
                                codec="null", writer="t")
    acked = arc.add([(r, r.offset) for r in recs]) + arc.seal_all()
    arc.close()
    rows = [row for m in list_manifests(LocalStorage(tmp_path)) for row in read_segment(LocalStorage(tmp_path), m.key)]
    assert sorted(acked) == list(range(len(recs)))
    assert rows == [event_row(r, "json") for r in recs]


def test_a_redelivered_open_record_is_recognised_by_its_digest_and_a_changed_one_is_a_new_epoch(tmp_path) -> None:
    recs = records([orjson.dumps(e) for e in sample_events(4, 20)])
    arc: Archive[str] = Archive(LocalStorage(tmp_path), {"features": TopicSpec("event", "json")}, 1000, 60,
                                codec="null", writer="t")
    assert arc.add([(r, f"a{r.offset}") for r in recs]) == []  # open: nothing ackable yet
    assert arc.add([(recs[3], "again")]) == []  # same bytes, rewound: waits with the open copy
    assert arc.stats["epochs_started"] == 0 and arc.open_records == 20
    changed = recs[3]._replace(value=recs[3].value.replace(b"acct", b"ACCT"))
    arc.add([(changed, "changed")])  # same offset, other bytes: another incarnation
    assert arc.stats["epochs_started"] == 1 and "open segment" in arc.epochs_started[0].evidence
    arc.seal_all()
    arc.close()


def test_the_archiver_child_decodes_without_numpy_faust_or_aiohttp() -> None:
    # What `python -m streams.archive.lane` loads to archive inputs and predictions: numpy is 20 MB of its RSS
    # (schemas.event_struct holds the struct numpy-free), Faust + aiohttp 13 MB (streams/archive/service.py).
    code = ("import sys, orjson\n"
            "from streams.archive.lane import run_archiver\n"
            "from datastore.canonical import SourceRecord\n"
            "from datastore.records import event_rows, prediction_row\n"
            f"rec = SourceRecord('features', 0, 5, None, b'e1', {GOOD!r}, [])\n"
            "assert event_rows([rec], 'json')[0]['event']['features'] == {'a': 1.0, 'b': 2.5}\n"
            "assert prediction_row(rec._replace(value=b'{}'))['invalid_reason']\n"
            "print(sorted(m for m in ('numpy', 'faust', 'aiohttp', 'mode') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
