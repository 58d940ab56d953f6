"""What the archive holds: sealed segments (by their manifests), their offset coverage, and recovery.

>>> import tempfile
>>> from datastore.storage import LocalStorage
>>> with tempfile.TemporaryDirectory() as d:
...     store = LocalStorage(d)
...     store.put_bytes(segment_key("t", 0, 0, 9, "a" * 64).replace(".avro", ".manifest.json"), b"{}")
...     cov = coverage_of(store, "t", 0)
...     cov.contains(5), cov.contains(10), coverage_of(store, "t", 0, epoch=1).contains(5)
(True, False, False)
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any

from datastore.bloom import BloomFilter
from datastore.epochs import current_epoch
from datastore.manifest import (
    MANIFEST_SUFFIX,
    SEGMENTS_PREFIX,
    SegmentManifest,
    manifest_key,
    parse_segment_key,
    partition_prefix,
    segment_key,
    segment_of_manifest,
)
from datastore.records import row_event_ids
from datastore.segment import manifest_from_file, read_segment
from datastore.spool import sweep_dead_spools
from datastore.storage import Storage

__all__ = ["Coverage", "RecoveryReport", "archived_row", "coverage_of", "find_rows", "list_manifests", "load_manifest",
           "recover", "segment_key"]

log = logging.getLogger(__name__)


def load_manifest(storage: Storage, key: str) -> SegmentManifest:
    return SegmentManifest.model_validate_json(storage.get_bytes(key))


def list_manifests(storage: Storage, topics: list[str] | None = None) -> list[SegmentManifest]:
    """Manifests of every sealed segment (of ``topics`` only, when given), by (topic, partition, epoch, first)."""
    prefixes = [f"{SEGMENTS_PREFIX}{t}/" for t in topics] if topics else [SEGMENTS_PREFIX]
    keys = [k for p in prefixes for k in storage.list(p) if k.endswith(MANIFEST_SUFFIX)]
    manifests = [load_manifest(storage, k) for k in keys]
    return sorted(manifests, key=lambda m: (m.topic, m.partition, m.epoch, m.first_offset, m.last_offset, m.sha256))


@dataclass
class Coverage:
    """Sealed offset intervals of one partition, merged; answers "is this offset archived?" in O(log n)."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def add(self, first: int, last: int) -> None:
        spans = sorted([*zip(self.starts, self.ends, strict=True), (first, last)])
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def contains(self, offset: int) -> bool:
        i = bisect.bisect_right(self.starts, offset) - 1
        return i >= 0 and offset <= self.ends[i]

    def contains_range(self, first: int, last: int) -> bool:
        """Whether every offset first..last is archived (one merged interval holds them all)."""
        i = bisect.bisect_right(self.starts, first) - 1
        return i >= 0 and last <= self.ends[i]


def coverage_of(storage: Storage, topic: str, partition: int, epoch: int | None = None) -> Coverage:
    """Offsets of (topic, partition) in ``epoch`` (None: the newest) held by sealed segments, read from manifest
    names only (no file opened)."""
    if epoch is None:
        epoch = current_epoch(storage, topic, partition).epoch
    cov = Coverage()
    spans = []
    for key in storage.list(partition_prefix(topic, partition, epoch)):
        name = parse_segment_key(key)
        if name is not None and name.epoch == epoch and key.endswith(MANIFEST_SUFFIX):
            spans.append((name.first_offset, name.last_offset))
    for first, last in sorted(spans):
        cov.add(first, last)
    return cov


def archived_row(storage: Storage, topic: str, partition: int, epoch: int, offset: int) -> dict[str, Any] | None:
    """The archived row at that position (None when no sealed segment of the epoch holds that offset)."""
    for key in storage.list(partition_prefix(topic, partition, epoch)):
        name = parse_segment_key(key)
        if (name is None or name.epoch != epoch or not key.endswith(MANIFEST_SUFFIX)
                or not name.first_offset <= offset <= name.last_offset):
            continue
        m = load_manifest(storage, key)
        for row in read_segment(storage, m.key, expected_sha256=m.sha256):
            if row["offset"] >= offset:
                if row["offset"] == offset:
                    return row
                break
    return None


def find_rows(storage: Storage, event_id: str, opened: list[str] | None = None,
              ) -> list[tuple[SegmentManifest, dict[str, Any]]]:
    """Every archived row whose event id (decoded, or key) is ``event_id``, of every epoch, newest epoch first.

    Only segments whose Bloom filter may hold the id are opened (their keys are appended to ``opened``).
    """
    found = []
    manifests = sorted(list_manifests(storage), key=lambda m: (-m.epoch, m.topic, m.partition, m.first_offset))
    for m in manifests:
        if event_id not in BloomFilter.from_text(m.event_ids):
            continue
        if opened is not None:
            opened.append(m.key)
        found += [(m, row) for row in read_segment(storage, m.key, expected_sha256=m.sha256)
                  if event_id in row_event_ids(row)]
    return found


@dataclass
class RecoveryReport:
    discarded_temp_files: list[str] = field(default_factory=list)
    completed_manifests: list[str] = field(default_factory=list)
    removed_dangling_manifests: list[str] = field(default_factory=list)


def recover(storage: Storage) -> RecoveryReport:
    """Bring the archive to a clean state after crashes; safe to run while other writers are alive.

    * unsealed temp files of dead processes are deleted (their records were never acked);
    * a published segment without manifest (writer died between the two steps) gets its manifest, rebuilt
      from the file, which was fsynced before it was published;
    * a manifest whose file is gone (a retention run died between the two deletions) is removed.
    """
    report = RecoveryReport()
    report.discarded_temp_files = [str(p) for p in sweep_dead_spools(storage.spool_dir())]
    keys = set(storage.list(SEGMENTS_PREFIX))
    for key in sorted(keys):
        if key.endswith(".avro") and manifest_key(key) not in keys and parse_segment_key(key) is not None:
            manifest = manifest_from_file(storage, key)
            storage.put_bytes(manifest_key(key), manifest.to_json())
            report.completed_manifests.append(key)
        elif key.endswith(MANIFEST_SUFFIX) and segment_of_manifest(key) not in keys:
            storage.delete(key)
            report.removed_dangling_manifests.append(key)
    for what, items in vars(report).items():
        if items:
            log.warning("archive recovery: %s: %d (%s)", what.replace("_", " "), len(items), ", ".join(items[:5]))
    return report
