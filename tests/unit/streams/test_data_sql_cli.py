"""`streamscore data sql` and `data export` over a small archive built here (no broker): the examples of
docs/data_versioning.md, machine output, errors, and Parquet that pandas and polars read as they are."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import polars as pl
import pytest
from typer.testing import CliRunner

from datastore.archive import Archive, TopicSpec
from datastore.canonical import SourceRecord
from datastore.dataset import Selection, snapshot
from datastore.parquet import content_id
from datastore.storage import LocalStorage
from streams.cli.main import app

runner = CliRunner()
HOUR_MS = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BAD = [b"oops", b"{not json", b'{"event_id": "x"}', b"[]", b"", b'{"event_id":"y","entity_id":"u"}']

# The examples of docs/data_versioning.md, verbatim.
DEAD_LETTERS_PER_HOUR = ("SELECT date_trunc('hour', timestamp) AS hour, invalid_reason, count(*) AS n "
                         "FROM dead_letters GROUP BY ALL ORDER BY hour, invalid_reason")
SCORES_PER_MODEL = ("SELECT model_name, model_version, count(*) AS n, round(avg(score), 4) AS mean, "
                    "round(quantile_cont(score, 0.5), 4) AS p50, round(quantile_cont(score, 0.99), 4) AS p99 "
                    "FROM predictions GROUP BY ALL ORDER BY ALL")
PER_TOPIC = "SELECT topic, epoch, count(*) AS records FROM events GROUP BY ALL ORDER BY ALL"


def demo_records(n: int = 60, seed: int = 3) -> tuple[list[SourceRecord], dict]:
    """n valid events and len(BAD) invalid ones over three hours of `features`, one prediction per valid
    event on `predictions` (demo-risk@1 for the first half, @2 for the rest); and what they hold, for checking."""
    rng = random.Random(seed)
    events, preds, truth = [], [], {"bad": [], "scores": {}}
    bad_at = {n // len(BAD) * i + 1: payload for i, payload in enumerate(BAD)}
    for off in range(n + len(BAD)):
        ts = T0 + off * (3 * HOUR_MS // (n + len(BAD)))
        if off in bad_at:
            events.append(SourceRecord("features", 0, off, ts, f"bad-{off}".encode(), bad_at[off], []))
            truth["bad"].append((ts // HOUR_MS * HOUR_MS, off))
            continue
        eid = f"evt-{off}"
        body = {"event_id": eid, "entity_id": f"u{off % 7}", "event_time": ts, "schema_version": 1,
                "features": {"amount": rng.uniform(0, 500), "age_days": float(rng.randint(1, 900))}}
        events.append(SourceRecord("features", 0, off, ts, eid.encode(), orjson.dumps(body), []))
        version = "1" if off < n // 2 else "2"
        score = round(rng.random(), 6)
        truth["scores"].setdefault(version, []).append(score)
        pred = {"event_id": eid, "entity_id": body["entity_id"], "event_time": ts, "model_name": "demo-risk",
                "model_version": version, "model_sha256": "ab" * 32, "score": score,
                "label": "risky" if score >= 0.5 else "ok", "probabilities": {"ok": 1 - score, "risky": score},
                "input_hash": "cd" * 32, "scored_at": ts + 5, "latency_ms": 1.5, "route": "single", "worker": "w1",
                "source_topic": "features", "source_partition": 0, "source_offset": off, "schema_version": 1}
        preds.append(SourceRecord("predictions", 0, len(preds), ts + 5, eid.encode(), orjson.dumps(pred), []))
    return events + preds, truth


def build_archive(root: Path, records: list[SourceRecord], segment_records: int) -> str:
    """Archive the records (cut every `segment_records`), snapshot everything; the version id."""
    store = LocalStorage(root)
    arc = Archive(store, {"features": TopicSpec("event", "json"), "predictions": TopicSpec("prediction")},
                  segment_records, 60.0, codec="null", writer="test")
    arc.add([(r, i) for i, r in enumerate(records)])
    arc.seal_all()
    arc.close()
    return snapshot(store, Selection(), description="sql test")[0].id


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, str, dict, list[SourceRecord]]:
    records, truth = demo_records()
    data = tmp_path / "data"
    return data, build_archive(data, records, segment_records=25), truth, records


def cli(data: Path, *args: str):
    return runner.invoke(app, list(args), env={"STREAMSCORE_DATA_DIR": str(data)})


def json_rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_doc_examples_answer_what_the_records_hold(archive):
    data, vid, truth, records = archive
    # dead-letter reasons per hour: each invalid record in its hour, with the reason the worker would give
    rows = json_rows(cli(data, "data", "sql", DEAD_LETTERS_PER_HOUR, "--data", vid[:12], "--json"))
    assert sum(r["n"] for r in rows) == len(BAD)
    hours = Counter(hour for hour, _ in truth["bad"])
    got_hours = Counter()
    for r in rows:
        got_hours[int(pd.Timestamp(r["hour"]).timestamp() * 1000)] += r["n"]
    assert got_hours == hours
    reasons = Counter(r["invalid_reason"] for r in rows for _ in range(r["n"]))
    assert reasons["not_json"] >= 2  # b"oops" and b"{not json" are not JSON whatever else the decoder says
    assert all(reason for reason in reasons)

    # score distribution per model version: n, mean, median, p99 as numpy computes them
    rows = json_rows(cli(data, "data", "sql", SCORES_PER_MODEL, "--data", vid, "--json"))
    assert [(r["model_name"], r["model_version"]) for r in rows] == [("demo-risk", "1"), ("demo-risk", "2")]
    for r in rows:
        scores = truth["scores"][r["model_version"]]
        assert r["n"] == len(scores)
        assert r["mean"] == pytest.approx(round(statistics.fmean(scores), 4), abs=1e-4)
        assert r["p50"] == pytest.approx(round(float(np.quantile(scores, 0.5)), 4), abs=1e-4)
        assert r["p99"] == pytest.approx(round(float(np.quantile(scores, 0.99)), 4), abs=1e-4)

    # records per topic and epoch
    rows = json_rows(cli(data, "data", "sql", PER_TOPIC, "--data", vid, "--json"))
    assert rows == [{"topic": t, "epoch": 0, "records": n}
                    for t, n in sorted(Counter(r.topic for r in records if r.topic == "features").items())]


def test_table_csv_and_one_line_errors(archive):
    data, vid, _truth, records = archive
    result = cli(data, "data", "sql", PER_TOPIC, "--data", vid)
    assert result.exit_code == 0, result.output
    n_events = sum(r.topic == "features" for r in records)
    assert "records" in result.output and f"│ {n_events} " in result.output and "1 rows" in result.output
    result = cli(data, "data", "sql", "SELECT topic, count(*) AS n FROM predictions GROUP BY ALL", "--data", vid,
                 "--csv")
    assert result.exit_code == 0 and result.stdout.splitlines() == [
        "topic,n", f"predictions,{sum(r.topic == 'predictions' for r in records)}"]

    for sql in ("SELEC 1", "SELECT nope FROM events", "SELECT * FROM no_such_table"):
        result = cli(data, "data", "sql", sql, "--data", vid)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("query failed: ") and len(result.output.strip().splitlines()) == 1, \
            result.output
    for args in ([], ["--data", vid, "--parquet", str(data)], ["--data", vid, "--json", "--csv"]):
        result = cli(data, "data", "sql", PER_TOPIC, *args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    result = cli(data, "data", "sql", PER_TOPIC, "--data", "ffffffff")
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_export_loads_in_pandas_and_polars_and_same_records_same_id(archive, tmp_path):
    data, vid, truth, records = archive
    out = tmp_path / "export"
    result = cli(data, "data", "export", vid[:10], "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "content id verified" in result.output
    paths = [Path(line) for line in result.stdout.splitlines() if line.endswith(".parquet")]
    assert sorted(p.name for p in paths) == ["events.parquet", "predictions.parquet"]
    events = pd.read_parquet(out / "events.parquet")  # the one-liners of docs/data_versioning.md
    predictions = pl.read_parquet(out / "predictions.parquet")
    assert len(events) == sum(r.topic == "features" for r in records)
    assert int(events["invalid_reason"].notna().sum()) == len(BAD)
    assert predictions.height == sum(len(s) for s in truth["scores"].values())
    assert predictions.filter(pl.col("model_version") == "2").height == len(truth["scores"]["2"])
    assert sorted(predictions["score"].to_list()) == sorted(s for v in truth["scores"].values() for s in v)
    assert content_id(paths) == vid

    # the same records cut into other segments: the same version id, and the same Parquet bytes
    other = build_archive(tmp_path / "other-data", records, segment_records=7)
    assert other == vid
    out2 = tmp_path / "export2"
    assert cli(tmp_path / "other-data", "data", "export", other, "--out", str(out2)).exit_code == 0
    assert [(out2 / p.name).read_bytes() == p.read_bytes() for p in paths] == [True, True]
    # SQL over the exported files gives what SQL over the version gives
    by_files = json_rows(cli(data, "data", "sql", SCORES_PER_MODEL, "--parquet", str(out), "--json"))
    assert by_files == json_rows(cli(data, "data", "sql", SCORES_PER_MODEL, "--data", vid, "--json"))
    # re-exporting over our own export is fine; a user's file of that name is never overwritten
    assert cli(data, "data", "export", vid, "--out", str(out)).exit_code == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "events.parquet").write_bytes(b"my own file")
    result = cli(data, "data", "export", vid, "--out", str(mine))
    assert result.exit_code == 2 and "is not an export" in result.output, result.output
    assert (mine / "events.parquet").read_bytes() == b"my own file"
