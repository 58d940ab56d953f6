"""One segment: an Avro container file of consecutive records of one topic partition, sealed once.

Writing goes to a temp file in the writer's spool directory; ``seal`` then

    1. flushes the last Avro block, flushes and fsyncs the file,
    2. publishes it atomically under a key naming its offset range and sha256 (``os.replace`` locally),
    3. writes its manifest (atomically too).

Only after step 3 is the segment part of the archive, and only then may the caller ack its records. A
crash before step 2 leaves an unsealed temp file that is discarded at restart; a crash between 2 and 3
leaves a complete file without manifest, which ``datastore.catalog.recover`` completes.

The bytes are deterministic: the sync marker is derived from (topic, partition, [epoch,] first offset)
instead of being random, the header carries only fixed metadata, and blocks are cut by fastavro's byte threshold
only. The same records therefore always give the same file and the same sha256.

>>> import tempfile
>>> from datastore.storage import LocalStorage
>>> from datastore.canonical import SourceRecord
>>> from datastore.records import event_row
>>> with tempfile.TemporaryDirectory() as d:
...     store = LocalStorage(d)
...     w = SegmentWriter(store, store.spool_dir(), "event", "features", 0, "json", "null", writer="doc")
...     for off in (3, 4):
...         rec = SourceRecord("features", 0, off, None, b"k", b"not json", [])
...         _ = w.append(rec, event_row(rec, "json"))
...     m = w.seal("size")
...     rows = list(read_segment(store, m.key))
...     (m.first_offset, m.last_offset, m.record_count), [r["offset"] for r in rows], verify_segment(store, m)
((3, 4, 2), [3, 4], [])
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fastavro
from fastavro.write import Writer

from datastore.bloom import BloomFilter
from datastore.canonical import ContentHasher, SourceRecord
from datastore.manifest import SCHEMA_OF_KIND, SEGMENT_FORMAT, SegmentManifest, manifest_key, segment_key
from datastore.records import row_event_ids, source_of
from datastore.storage import Storage
from schemas.archive import archive_schema, parsed_archive_schema

SYNC_INTERVAL = 64 * 1024  # bytes per Avro block before compression


def schema_sha256(schema_name: str) -> str:
    """sha256 of the standalone archive schema as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(archive_schema(schema_name), sort_keys=True, separators=(",", ":"))  # type: ignore[arg-type]
    return hashlib.sha256(text.encode()).hexdigest()


def sync_marker(topic: str, partition: int, first_offset: int, epoch: int = 0) -> bytes:
    name = f"{topic}/{partition}/{first_offset}" if not epoch else f"{topic}/{partition}/e{epoch}/{first_offset}"
    return hashlib.sha256(name.encode()).digest()[:16]


class _HashingFile:
    """Write-through file wrapper that hashes every byte, so sealing needs no second read of the file."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def seekable(self) -> bool:  # fastavro asks, to decide whether it is appending to an existing file
        return False


class SegmentWriter:
    """Appends rows of one (topic, partition) in offset order; ``seal`` publishes file + manifest."""

    def __init__(self, storage: Storage, spool: Path, kind: str, topic: str, partition: int, wire_format: str,
                 codec: str, writer: str = "", epoch: int = 0) -> None:
        self.storage = storage
        self.epoch = epoch
        self.spool = spool
        self.kind = kind
        self.schema_name = SCHEMA_OF_KIND[kind]
        # The row's decoded form and its named type: the ["null", <record>] union each row's Avro encoding must
        # pick a branch of. Named, fastavro writes the same bytes 6-10 us faster per row (of 16-26 us, null codec).
        self._decoded_field, self._decoded_type = _DECODED_BRANCH[kind]
        self.topic = topic
        self.partition = partition
        self.wire_format = wire_format
        self.codec = codec
        self.writer_name = writer
        self.first_offset: int | None = None
        self.last_offset: int | None = None
        self.count = 0
        self.invalid = 0
        self.min_ts: int | None = None
        self.max_ts: int | None = None
        self.opened_at: float | None = None  # monotonic time of the first append, for sealing by age
        self.content = ContentHasher()
        self._ids: list[str] = []
        self._path: Path | None = None
        self._fh: BinaryIO | None = None
        self._file: _HashingFile | None = None
        self._avro: Writer | None = None

    @property
    def temp_path(self) -> Path | None:
        return self._path

    def _open(self, first_offset: int) -> None:
        self._path = self.spool / f"{self.topic}-{self.partition}-e{self.epoch}-{first_offset:020d}.avro.part"
        self._fh = open(self._path, "wb")  # noqa: SIM115 - closed by seal/abort
        self._file = _HashingFile(self._fh)
        metadata = {"streamscore.segment": SEGMENT_FORMAT, "streamscore.kind": self.kind,
                    "streamscore.topic": self.topic, "streamscore.partition": str(self.partition),
                    "streamscore.wire_format": self.wire_format}
        if self.epoch:  # epoch-0 files stay byte-identical to those written before epochs existed
            metadata["streamscore.epoch"] = str(self.epoch)
        self._avro = Writer(self._file, parsed_archive_schema(self.schema_name), codec=self.codec,  # type: ignore
                            sync_interval=SYNC_INTERVAL, metadata=metadata, validator=False,
                            sync_marker=sync_marker(self.topic, self.partition, first_offset, self.epoch))
        self.first_offset = first_offset
        self.opened_at = time.monotonic()

    def append(self, rec: SourceRecord, row: dict[str, Any]) -> bytes:
        """Add one record; offsets must increase (the caller skips redeliveries). Returns its canonical bytes
        (``datastore.canonical.encode(rec, epoch)``)."""
        if self.last_offset is not None and rec.offset <= self.last_offset:
            raise ValueError(f"{self.topic}[{self.partition}]: offset {rec.offset} after {self.last_offset}")
        if self._avro is None:
            self._open(rec.offset)
        decoded = row[self._decoded_field]
        # Name the union's branch: fastavro no longer validates the whole record to find it.
        self._avro.write(row if decoded is None else  # type: ignore[union-attr]
                         {**row, self._decoded_field: (self._decoded_type, decoded)})
        canonical = self.content.add(rec, self.epoch)
        self.last_offset = rec.offset
        self.count += 1
        if row["invalid_reason"] is not None:
            self.invalid += 1
        ts = rec.timestamp_ms
        if ts is not None:
            self.min_ts = ts if self.min_ts is None else min(self.min_ts, ts)
            self.max_ts = ts if self.max_ts is None else max(self.max_ts, ts)
        self._ids.extend(row_event_ids(row))
        return canonical

    def seal(self, sealed_by: str) -> SegmentManifest:
        """fsync, publish atomically, write the manifest; returns it. The writer is spent afterwards."""
        if self._avro is None or self._fh is None or self._file is None or self._path is None:
            raise ValueError("nothing to seal")
        self._avro.flush()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        sha = self._file.sha.hexdigest()
        key = segment_key(self.topic, self.partition, self.first_offset, self.last_offset, sha,  # type: ignore
                          self.epoch)
        if self.storage.exists(key):  # same name = same offsets and same bytes: already sealed elsewhere
            self._path.unlink()
        else:
            self.storage.publish(self._path, key)
        bloom = BloomFilter.for_count(len(self._ids))
        for eid in self._ids:
            bloom.add(eid)
        manifest = SegmentManifest(
            key=key, kind=self.kind, schema_name=self.schema_name,  # type: ignore[arg-type]
            schema_sha256=schema_sha256(self.schema_name), topic=self.topic, partitions=[self.partition],
            epoch=self.epoch,
            first_offset=self.first_offset, last_offset=self.last_offset, record_count=self.count,  # type: ignore
            wire_format=self.wire_format, codec=self.codec, bytes=self._file.size, sha256=sha,
            content_sha256=self.content.hexdigest(), min_timestamp_ms=self.min_ts, max_timestamp_ms=self.max_ts,
            invalid_count=self.invalid, event_ids=bloom.to_text(), sealed_at=time.time_ns() // 1_000_000,
            sealed_by=sealed_by, writer=self.writer_name,  # type: ignore[arg-type]
        )
        self.storage.put_bytes(manifest_key(key), manifest.to_json())
        self._avro = self._fh = None
        return manifest

    def abort(self) -> None:
        """Drop the unsealed temp file (its records were never acked, so they will be consumed again)."""
        if self._fh is not None:
            self._fh.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self._avro = self._fh = None


# kind -> (row field of the decoded form, its named type in schemas/archived_*.avsc)
_DECODED_BRANCH = {"event": ("event", "streamscore.FeatureEvent"),
                   "prediction": ("prediction", "streamscore.Prediction"),
                   "label": ("label", "streamscore.Label")}


def _rows(data: bytes) -> Iterator[dict[str, Any]]:
    reader = fastavro.reader(io.BytesIO(data))
    yield from reader  # type: ignore[misc]


def read_segment(storage: Storage, key: str, expected_sha256: str | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a segment, in offset order; with ``expected_sha256`` the bytes are verified first."""
    data = storage.get_bytes(key)
    if expected_sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != expected_sha256:
            raise SegmentCorrupt(f"{key}: sha256 of the file is {got}, its manifest says {expected_sha256}")
    return _rows(data)


class SegmentCorrupt(RuntimeError):
    """A sealed segment does not match its manifest (changed bytes, truncated, wrong records)."""


def verify_segment(storage: Storage, manifest: SegmentManifest) -> list[str]:
    """Every way the segment differs from its manifest (empty list = verified)."""
    try:
        data = storage.get_bytes(manifest.key)
    except FileNotFoundError:
        return [f"{manifest.key}: file is missing"]
    problems = []
    sha = hashlib.sha256(data).hexdigest()
    if sha != manifest.sha256:
        problems.append(f"sha256 {sha} != manifest {manifest.sha256}")
    if len(data) != manifest.bytes:
        problems.append(f"{len(data)} bytes != manifest {manifest.bytes}")
    try:
        stats = scan_rows(_rows(data), manifest.epoch)
    except Exception as exc:  # fastavro raises many types on damaged input
        return [*problems, f"does not decode: {type(exc).__name__}: {exc}"]
    expected = (manifest.topic, manifest.partition, manifest.first_offset, manifest.last_offset,
                manifest.record_count, manifest.content_sha256)
    got = (stats["topic"], stats["partition"], stats["first"], stats["last"], stats["count"], stats["content"])
    for name, want, have in zip(("topic", "partition", "first offset", "last offset", "records", "content_sha256"),
                                expected, got, strict=True):
        if want != have:
            problems.append(f"{name} {have!r} != manifest {want!r}")
    if not stats["increasing"]:
        problems.append("offsets are not strictly increasing")
    return [f"{manifest.key}: {p}" for p in problems]


def scan_rows(rows: Iterator[dict[str, Any]], epoch: int = 0) -> dict[str, Any]:
    """Identity, offset range, count, content hash and timestamps of a row stream (for verify and recovery)."""
    content = ContentHasher()
    out: dict[str, Any] = {"topic": None, "partition": None, "first": None, "last": None, "count": 0,
                           "increasing": True, "min_ts": None, "max_ts": None, "invalid": 0, "ids": []}
    for row in rows:
        rec = source_of(row)
        if out["first"] is None:
            out.update(topic=rec.topic, partition=rec.partition, first=rec.offset)
        elif rec.offset <= out["last"] or (rec.topic, rec.partition) != (out["topic"], out["partition"]):
            out["increasing"] = False
        out["last"] = rec.offset
        out["count"] += 1
        content.add(rec, epoch)
        if rec.timestamp_ms is not None:
            out["min_ts"] = rec.timestamp_ms if out["min_ts"] is None else min(out["min_ts"], rec.timestamp_ms)
            out["max_ts"] = rec.timestamp_ms if out["max_ts"] is None else max(out["max_ts"], rec.timestamp_ms)
        out["invalid"] += row["invalid_reason"] is not None
        out["ids"].extend(row_event_ids(row))
    out["content"] = content.hexdigest()
    return out


def manifest_from_file(storage: Storage, key: str, sealed_by: str = "recovery") -> SegmentManifest:
    """Rebuild the manifest of a complete segment file (one whose writer died before writing it)."""
    data = storage.get_bytes(key)
    reader = fastavro.reader(io.BytesIO(data))
    meta = reader.metadata
    epoch = int(meta.get("streamscore.epoch", 0))
    stats = scan_rows(iter(reader), epoch)  # type: ignore[arg-type]
    kind = meta["streamscore.kind"]
    bloom = BloomFilter.for_count(len(stats["ids"]))
    for eid in stats["ids"]:
        bloom.add(eid)
    return SegmentManifest(
        key=key, kind=kind, schema_name=SCHEMA_OF_KIND[kind], schema_sha256=schema_sha256(SCHEMA_OF_KIND[kind]),
        topic=stats["topic"], partitions=[stats["partition"]], epoch=epoch, first_offset=stats["first"],
        last_offset=stats["last"],
        record_count=stats["count"], wire_format=meta["streamscore.wire_format"], codec=meta.get("avro.codec", "null"),
        bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), content_sha256=stats["content"],
        min_timestamp_ms=stats["min_ts"], max_timestamp_ms=stats["max_ts"], invalid_count=stats["invalid"],
        event_ids=bloom.to_text(), sealed_at=time.time_ns() // 1_000_000, sealed_by=sealed_by,  # type: ignore
        writer="recovery",
    )
