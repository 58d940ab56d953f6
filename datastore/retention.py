"""Retention and compaction: delete old sealed segments and merge small ones, never touching one a version lists.

Two limits (``Settings.data_retention_max_age_s`` / ``data_retention_max_bytes``): segments sealed longer
ago than the age, then the oldest remaining while the archive is larger than the byte limit. A segment
listed by any dataset version is kept whatever its age, so every version stays verifiable and replayable;
delete the version first (there is no command for that on purpose: versions are the audit trail).

Runs under the store lock, so a concurrent ``snapshot`` never lists a segment being deleted. The file is
deleted before its manifest; a run dying in between leaves a dangling manifest that
``datastore.catalog.recover`` removes. ``compact`` merges small segments (see its docstring).

>>> import tempfile
>>> from datastore.archive import Archive, TopicSpec
>>> from datastore.canonical import SourceRecord
>>> from datastore.storage import LocalStorage
>>> with tempfile.TemporaryDirectory() as d:
...     store = LocalStorage(d)
...     arc = Archive(store, {"t": TopicSpec("event")}, segment_records=2, segment_seconds=60, codec="null")
...     _ = arc.add([(SourceRecord("t", 0, o, None, None, b"x", []), o) for o in range(4)])
...     arc.close()
...     report = apply_retention(store, max_age_s=None, max_bytes=1)
...     len(report.deleted), report.kept_referenced, len(store.list("segments/"))
(2, 0, 0)
>>> with tempfile.TemporaryDirectory() as d:
...     store = LocalStorage(d)
...     arc = Archive(store, {"t": TopicSpec("event")}, segment_records=2, segment_seconds=60, codec="null")
...     _ = arc.add([(SourceRecord("t", 0, o, None, None, b"x", []), o) for o in range(6)])
...     arc.close()
...     report = compact(store, below_records=3, target_records=100)
...     len(report.replaced), [(m.first_offset, m.last_offset) for m in list_manifests(store)]
(3, [(0, 5)])
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from datastore.catalog import list_manifests
from datastore.dataset import list_versions
from datastore.manifest import SegmentManifest, manifest_key
from datastore.records import source_of
from datastore.segment import SegmentWriter, read_segment
from datastore.spool import WriterSpool
from datastore.storage import Storage


@dataclass
class RetentionReport:
    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    kept_referenced: int = 0
    remaining_bytes: int = 0


def referenced_segments(storage: Storage) -> set[str]:
    """Keys of every segment some dataset version lists."""
    return {ref.key for v in list_versions(storage) for ref in v.segments}


def apply_retention(storage: Storage, max_age_s: float | None, max_bytes: int | None,
                    now_ms: int | None = None, dry_run: bool = False) -> RetentionReport:
    """Delete unreferenced segments beyond the limits (oldest sealed first); returns what was (or would be) deleted."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    report = RetentionReport()
    with storage.lock():
        referenced = referenced_segments(storage)
        manifests = sorted(list_manifests(storage), key=lambda m: (m.sealed_at, m.key))
        total = sum(m.bytes for m in manifests)
        for m in manifests:
            too_old = max_age_s is not None and now_ms - m.sealed_at > max_age_s * 1000
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                continue
            if m.key in referenced:
                report.kept_referenced += 1
                continue
            if not dry_run:
                storage.delete(m.key)
                storage.delete(manifest_key(m.key))
            report.deleted.append(m.key)
            report.deleted_bytes += m.bytes
            total -= m.bytes
        report.remaining_bytes = total
    return report


@dataclass
class CompactionReport:
    merged: list[str] = field(default_factory=list)  # new segments
    replaced: list[str] = field(default_factory=list)  # segments they replace (deleted)


def compact(storage: Storage, below_records: int, target_records: int, dry_run: bool = False) -> CompactionReport:
    """Merge runs of small sealed segments of one partition and epoch into segments of up to ``target_records``.

    Small segments come from time-based sealing of a slow stream. Only segments no dataset version lists
    are merged (versions pin segments by sha256), and dataset ids do not change: they are defined over
    records, not segments. The merged segment is sealed before the ones it replaces are deleted, so a
    crash in between leaves duplicates that readers drop (same bytes), never a gap.
    """
    report = CompactionReport()
    with storage.lock():
        referenced = referenced_segments(storage)
        runs: list[list[SegmentManifest]] = []
        by_tp: dict[tuple[str, int, int], list[SegmentManifest]] = {}
        for m in list_manifests(storage):  # an epoch's segments are merged with its own only
            by_tp.setdefault((m.topic, m.partition, m.epoch), []).append(m)
        for segments in by_tp.values():
            run: list[SegmentManifest] = []
            for m in segments:  # in offset order
                small = m.record_count < below_records and m.key not in referenced
                fits = sum(r.record_count for r in run) + m.record_count <= target_records
                follows = not run or m.first_offset > run[-1].last_offset
                if small and fits and follows:
                    run.append(m)
                    continue
                runs.append(run)
                run = [m] if small else []
            runs.append(run)
        runs = [r for r in runs if len(r) >= 2]
        if dry_run or not runs:
            report.replaced = [m.key for r in runs for m in r]
            return report
        spool = WriterSpool(storage.spool_dir(), "compaction")
        try:
            for run in runs:
                first = run[0]
                writer = SegmentWriter(storage, spool.dir, first.kind, first.topic, first.partition, first.wire_format,
                                       first.codec, writer="compaction", epoch=first.epoch)
                for m in run:
                    for row in read_segment(storage, m.key, expected_sha256=m.sha256):
                        writer.append(source_of(row), row)
                report.merged.append(writer.seal("compaction").key)
                for m in run:
                    storage.delete(m.key)
                    storage.delete(manifest_key(m.key))
                    report.replaced.append(m.key)
        finally:
            spool.close()
    return report
