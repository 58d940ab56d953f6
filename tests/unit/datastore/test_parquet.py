"""Queryable archive (ecosystem issue #2): Parquet exports of dataset versions, DuckDB SQL, pandas and polars loads."""

from __future__ import annotations

import collections
import statistics
from datetime import datetime, timezone

import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datastore.archive import Archive, TopicSpec
from datastore.canonical import SourceRecord
from datastore.dataset import Selection, snapshot
from datastore.parquet import content_id, export_version, tables
from datastore.sql import QueryError, query
from datastore.storage import LocalStorage
from schemas.labels import Label, encode_label
from schemas.records import FeatureEvent, Prediction

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
HOUR = 3_600_000
TOPICS = {"features": TopicSpec("event"), "features-b": TopicSpec("event"), "predictions": TopicSpec("prediction"),
          "labels": TopicSpec("label")}


def flow(n: int = 60) -> list[SourceRecord]:
    """Inputs on two topics and partitions (some invalid, feature sets differ), predictions of two model
    versions, labels of both kinds, over three hours."""
    out = []
    for i in range(n):
        topic, partition = ("features" if i % 3 else "features-b"), i % 2
        ts = T0 + i * (3 * HOUR // n)
        features = {"amount": float(i), "age": 20.0 + i % 7} | ({"extra": 1.5} if i % 4 == 0 else {})
        value = orjson.dumps({"event_id": f"e{i}", "entity_id": f"u{i % 5}", "event_time": ts, "schema_version": 1,
                              "features": features, "metadata": {"src": "t"}})
        if i % 5 == 0:
            value = b"not json" if i % 10 == 0 else b'{"event_id": "x"}'
        out.append(SourceRecord(topic, partition, i // 6, ts, f"e{i}".encode(), value, [("traceparent", b"00-x")]))
        if i % 5:
            version = "1" if i < n // 2 else "2"
            score = (i % 10) / 10
            prediction = {"event_id": f"e{i}", "entity_id": f"u{i % 5}", "event_time": ts, "model_name": "demo-risk",
                          "model_version": version, "model_sha256": version * 64, "score": score,
                          "label": "risky" if score > 0.5 else "legit",
                          "probabilities": {"legit": 1 - score, "risky": score}, "input_hash": "1" * 64,
                          "scored_at": ts + 5, "latency_ms": 1.5, "route": "single", "worker": "w",
                          "source_topic": topic, "source_partition": partition, "source_offset": i // 6,
                          "schema_version": 1}
            out.append(SourceRecord("predictions", 0, len([r for r in out if r.topic == "predictions"]), ts + 5,
                                    f"e{i}".encode(), orjson.dumps(prediction), []))
    for i in range(6):
        label = Label(event_id=f"e{i + 1}", label="risky" if i % 2 else 0.25 * i, label_time=T0 + i)
        out.append(SourceRecord("labels", 0, i, T0 + i, f"e{i + 1}".encode(), encode_label(label), []))
    return out


def archive(store: LocalStorage, recs: list[SourceRecord], segment_records: int) -> None:
    arc: Archive[int] = Archive(store, TOPICS, segment_records, 60.0, codec="deflate")
    arc.add([(r, i) for i, r in enumerate(recs)])
    arc.seal_all()
    arc.close()


@pytest.fixture
def archived(tmp_path):
    store = LocalStorage(tmp_path / "data")
    recs = flow()
    archive(store, recs, 7)
    version, _ = snapshot(store, Selection())
    return store, version, recs


def test_export_is_flat_deterministic_and_keeps_the_version_id(archived, tmp_path):
    store, version, recs = archived
    paths = export_version(store, version)
    assert [p.name for p in paths] == ["events.parquet", "labels.parquet", "predictions.parquet"]
    assert paths[0].parent == store.root / "parquet" / version.id
    for path in paths:
        schema = pq.read_schema(path)
        assert not any(pa.types.is_map(f.type) for f in schema)  # polars panicked on the Avro map
        assert schema.metadata[b"streamscore.version_id"] == version.id.encode()
    assert content_id(paths) == version.id  # the files alone give the version id
    events = pq.read_table(paths[0]).to_pylist()
    assert len(events) == sum(r.topic.startswith("features") for r in recs)
    assert {c for c in events[0] if c.startswith("features_")} == {"features_age", "features_amount", "features_extra"}
    # the same records cut into other segments: same version id, byte-identical Parquet
    other = LocalStorage(tmp_path / "other")
    archive(other, recs, 1000)
    again, _ = snapshot(other, Selection())
    assert again.id == version.id and len(again.segments) != len(version.segments)
    other_paths = export_version(other, again, tmp_path / "export")
    assert [p.read_bytes() for p in other_paths] == [p.read_bytes() for p in paths]


def test_every_decoded_field_has_a_column(archived):
    store, version, _ = archived
    t = tables(store, version)
    assert set(FeatureEvent.model_fields) - {"features"} <= set(t["events"].column_names)
    assert set(Prediction.model_fields) - {"probabilities"} <= set(t["predictions"].column_names)
    assert {"probabilities_legit", "probabilities_risky"} <= set(t["predictions"].column_names)
    assert set(Label.model_fields) <= set(t["labels"].column_names)
    labels = t["labels"].to_pylist()
    assert [(r["label"], r["label_value"]) for r in labels[:2]] == [(None, 0.0), ("risky", None)]


def test_duckdb_dead_letter_reasons_per_hour(archived):
    store, version, recs = archived
    columns, rows = query(version, "SELECT date_trunc('hour', timestamp) AS hour, invalid_reason, count(*) AS n "
                                   "FROM dead_letters GROUP BY ALL ORDER BY hour, invalid_reason", storage=store)
    expected = collections.Counter()
    for r in recs:
        if r.topic.startswith("features") and not r.value.startswith(b'{"event_id":"'):
            hour = datetime.fromtimestamp(r.timestamp_ms // HOUR * HOUR / 1000, timezone.utc).replace(tzinfo=None)
            expected[(hour, "not_json" if r.value == b"not json" else "schema_violation")] += 1
    assert columns == ["hour", "invalid_reason", "n"]
    assert rows == [(*k, n) for k, n in sorted(expected.items())] and len({h for h, _, _ in rows}) == 3


def test_duckdb_score_distribution_per_model_version_and_counts_per_topic(archived, tmp_path):
    store, version, recs = archived
    sql = ("SELECT model_version, count(*), avg(score), max(probabilities_risky) FROM predictions "
           "GROUP BY model_version ORDER BY model_version")
    _, rows = query(version, sql, storage=store)
    scores: dict[str, list[float]] = collections.defaultdict(list)
    for r in recs:
        if r.topic == "predictions":
            p = orjson.loads(r.value)
            scores[p["model_version"]].append(p["score"])
    assert [(v, n) for v, n, _, _ in rows] == [(v, len(s)) for v, s in sorted(scores.items())]
    assert [avg for _, _, avg, _ in rows] == pytest.approx([statistics.fmean(s) for _, s in sorted(scores.items())])
    per_topic = collections.Counter(r.topic for r in recs if r.topic.startswith("features"))
    count_sql = "SELECT topic, count(*) FROM events GROUP BY topic ORDER BY topic"
    assert query(version, count_sql, storage=store)[1] == sorted(per_topic.items())
    # the same SQL over the exported files (what `duckdb -c "... 'parquet/**/*.parquet'"` reads)
    export_version(store, version, tmp_path / "exports" / version.id)
    assert query(tmp_path / "exports", sql)[1] == rows


def test_pandas_and_polars_load_an_export_in_one_line(archived):
    store, version, recs = archived
    path = export_version(store, version)[0]
    valid = [orjson.loads(r.value) for r in recs
             if r.topic.startswith("features") and r.value.startswith(b'{"event_id":"')]
    df = pd.read_parquet(path)
    assert len(df) == version.topics["features"].records + version.topics["features-b"].records
    assert df["features_amount"].sum() == pytest.approx(sum(e["features"]["amount"] for e in valid))
    pf = pl.read_parquet(path)
    assert pf.height == len(df) and pf["features_extra"].null_count() == len(df) - sum(
        "extra" in e["features"] for e in valid)
    assert pf.filter(pl.col("invalid_reason").is_not_null()).height == version.topics["features"].invalid + \
        version.topics["features-b"].invalid


def test_a_bad_query_is_one_line(archived):
    store, version, _ = archived
    with pytest.raises(QueryError) as err:
        query(version, "SELECT nope FROM events", storage=store)
    assert "nope" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(QueryError, match="no events/predictions/labels"):
        query(store.root / "segments", "SELECT 1")


def test_a_version_with_a_complete_export_is_queried_from_it(archived):
    store, version, _ = archived
    sql = "SELECT topic, count(*) FROM events GROUP BY topic ORDER BY topic"
    from_segments = query(version, sql, storage=store)
    export_version(store, version)
    for ref in version.segments:  # the export alone must answer now
        store.delete(ref.key)
    assert query(version, sql, storage=store) == from_segments
