"""A dataset version as flat Parquet tables, for DuckDB, pandas and polars with no Avro reader and offline.

The segments stay Avro (the archiver's format, bit-for-bit replay); a version is *exported* to one Parquet
file per kind of record, ``events.parquet``, ``predictions.parquet``, ``labels.parquet``, in
``<out_dir>`` (by default ``<data_dir>/parquet/<version id>/``). Every file has the Kafka envelope

    topic, partition, epoch, offset, timestamp_ms, timestamp (UTC, ms), key, value, headers, invalid_reason

and the decoded fields as plain columns: a map becomes one column per entry, so no reader meets a map
type (polars panicked on the Avro map of features): ``features_<name>`` (float64, null where a record lacks
the feature), ``probabilities_<class>``; ``metadata`` maps are JSON text. A label is ``label`` (a class
name) or ``label_value`` (a regression target).

Content addressing is kept: rows are in the version's canonical order, the raw key, value and headers are
there byte for byte, and ``content_id`` recomputes the version id from the Parquet files alone. The bytes
are deterministic (same version, same pyarrow: same files), and the version id is in each file's metadata
(``streamscore.version_id``).

>>> import tempfile
>>> from datastore.archive import Archive, TopicSpec
>>> from datastore.canonical import SourceRecord
>>> from datastore.dataset import Selection, snapshot
>>> from datastore.storage import LocalStorage
>>> value = b'{"event_id":"e1","entity_id":"u","event_time":0,"schema_version":1,"features":{"a":1,"b":2}}'
>>> with tempfile.TemporaryDirectory() as d:
...     store = LocalStorage(d)
...     arc = Archive(store, {"features": TopicSpec("event")}, 100, 60.0, codec="null")
...     _ = arc.add([(SourceRecord("features", 0, 0, 1_700_000_000_000, b"e1", value, []), 0)])
...     _ = arc.seal_all(); arc.close()
...     version, _ = snapshot(store, Selection())
...     paths = export_version(store, version)
...     [p.name for p in paths], content_id(paths) == version.id, tables(store, version)["events"].num_columns
(['events.parquet'], True, 17)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from datastore.canonical import ContentHasher, SourceRecord
from datastore.dataset import DatasetVersion, version_rows
from datastore.storage import Storage

TABLE_OF_KIND = {"event": "events", "prediction": "predictions", "label": "labels"}
ROW_GROUP_ROWS = 65_536

_HEADER = pa.struct([("key", pa.string()), ("value", pa.binary())])
_ENVELOPE: list[tuple[str, pa.DataType]] = [
    ("topic", pa.string()), ("partition", pa.int32()), ("epoch", pa.int32()), ("offset", pa.int64()),
    ("timestamp_ms", pa.int64()), ("timestamp", pa.timestamp("ms")), ("key", pa.binary()), ("value", pa.binary()),
    ("headers", pa.list_(_HEADER)), ("invalid_reason", pa.string())]
# Decoded scalar fields per kind (schemas/records.py, schemas/labels.py), then the maps flattened into columns.
_FIELDS: dict[str, list[tuple[str, pa.DataType]]] = {
    "event": [("event_id", pa.string()), ("entity_id", pa.string()), ("event_time", pa.int64()),
              ("schema_version", pa.int32()), ("metadata", pa.string())],
    "prediction": [("event_id", pa.string()), ("entity_id", pa.string()), ("event_time", pa.int64()),
                   ("model_name", pa.string()), ("model_version", pa.string()), ("model_sha256", pa.string()),
                   ("score", pa.float64()), ("label", pa.string()), ("input_hash", pa.string()),
                   ("scored_at", pa.int64()), ("latency_ms", pa.float64()), ("route", pa.string()),
                   ("worker", pa.string()), ("source_topic", pa.string()), ("source_partition", pa.int32()),
                   ("source_offset", pa.int64()), ("schema_version", pa.int32())],
    "label": [("event_id", pa.string()), ("label", pa.string()), ("label_value", pa.float64()),
              ("reward", pa.float64()), ("label_time", pa.int64()), ("metadata", pa.string())],
}
_MAPS = {"event": "features", "prediction": "probabilities"}
_DECODED = {"event": "event", "prediction": "prediction", "label": "label"}


def _flat(kind: str, row: dict[str, Any], epoch: int) -> dict[str, Any]:
    out = {"topic": row["topic"], "partition": row["partition"], "epoch": epoch, "offset": row["offset"],
           "timestamp_ms": row["timestamp_ms"], "timestamp": row["timestamp_ms"], "key": row["key"],
           "value": row["value"], "headers": row["headers"], "invalid_reason": row["invalid_reason"]}
    decoded = row.get(_DECODED[kind])
    if decoded is None:
        return out
    for name, _type in _FIELDS[kind]:
        value = decoded.get(name)
        out[name] = json.dumps(value, sort_keys=True) if name == "metadata" and value is not None else value
    if kind == "label" and not isinstance(decoded["label"], str):
        out["label"], out["label_value"] = None, float(decoded["label"])
    if kind in _MAPS:
        for name, value in (decoded.get(_MAPS[kind]) or {}).items():
            out[f"{_MAPS[kind]}_{name}"] = value
    return out


def tables(storage: Storage, version: DatasetVersion) -> dict[str, pa.Table]:
    """The version's records as Arrow tables, {"events" | "predictions" | "labels": table}, kinds present only.

    Rows stay in the version's canonical order; one pass over the segments (verified as they are read), with
    the table in memory (about 1 KB per record before Arrow packs it).
    """
    rows: dict[str, list[dict[str, Any]]] = {}
    mapped: dict[str, set[str]] = {}
    for seg, row in version_rows(storage, version):
        flat = _flat(seg.kind, row, seg.epoch)
        rows.setdefault(seg.kind, []).append(flat)
        if seg.kind in _MAPS:
            mapped.setdefault(seg.kind, set()).update(k for k in flat if k.startswith(_MAPS[seg.kind] + "_"))
    out = {}
    for kind in ("event", "prediction", "label"):
        if kind not in rows:
            continue
        columns = _ENVELOPE + _FIELDS[kind] + [(name, pa.float64()) for name in sorted(mapped.get(kind, ()))]
        taken = [name for name, _ in columns]
        if len(set(taken)) != len(taken):
            raise ValueError(f"{kind}: a map entry collides with a column name ({sorted(taken)})")
        schema = pa.schema(columns, metadata={"streamscore.version_id": version.id, "streamscore.kind": kind})
        out[TABLE_OF_KIND[kind]] = pa.Table.from_pylist(rows[kind], schema=schema)
    return out


def default_export_dir(storage: Storage, version: DatasetVersion) -> Path:
    root = getattr(storage, "root", None)
    if root is None:
        raise ValueError("this storage has no local directory: give out_dir")
    return Path(root) / "parquet" / version.id


def export_version(storage: Storage, version: DatasetVersion, out_dir: Path | None = None) -> list[Path]:
    """Write the version as ``<table>.parquet`` files (zstd) into ``out_dir``; returns their paths, sorted.

    Files are written to a temp name and renamed, so a reader never sees half a file; an export that
    exists is rewritten with the same bytes.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_export_dir(storage, version)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in sorted(tables(storage, version).items()):
        path = out_dir / f"{name}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        tmp.replace(path)
        paths.append(path)
    return paths


def content_id(paths: Iterable[Path]) -> str:
    """The dataset version id of the records in exported Parquet files (datastore.canonical), from them alone."""
    keyed = []
    for path in paths:
        table = pq.read_table(path, columns=["topic", "partition", "epoch", "offset", "timestamp_ms", "key", "value",
                                             "headers"])
        for r in table.to_pylist():
            rec = SourceRecord(r["topic"], r["partition"], r["offset"], r["timestamp_ms"], r["key"], r["value"],
                               [(h["key"], h["value"]) for h in r["headers"]])
            keyed.append(((rec.topic, rec.partition, r["epoch"], rec.offset), rec, r["epoch"]))
    hasher = ContentHasher()
    for _key, rec, epoch in sorted(keyed, key=lambda item: item[0]):
        hasher.add(rec, epoch)
    return hasher.hexdigest()


def exported_files(root: Path, names: Sequence[str] = tuple(TABLE_OF_KIND.values())) -> dict[str, list[Path]]:
    """{table: files} of the exports found under ``root`` (recursively), for querying several at once."""
    found = {name: sorted(Path(root).rglob(f"{name}.parquet")) for name in names}
    return {name: files for name, files in found.items() if files}

