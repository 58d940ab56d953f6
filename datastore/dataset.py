"""Dataset versions: content-addressed, immutable selections of sealed segments (like a commit).

A version is created by ``snapshot`` from the segments sealed at that moment, optionally restricted to
some topics and to a Kafka-timestamp window. It lists the segments it uses and its id is

    id = content hash (datastore.canonical) of its records, de-duplicated and in (topic, partition, epoch,
         offset) order

So the id depends on the data only: two archives that cut the same records into different segments (other
sizes, a time-based seal, a rebalance, a record archived twice after a crash) give the same id, and any
changed byte of any record gives another. The epoch (incarnation, datastore.epochs) of a record is part
of it: records of two incarnations at the same offsets are different data, and both are in a version that
selects them (epoch-0 records hash as before epochs existed, so older ids stay valid). Segments are read
and their sha256 checked while the id is computed, so a version never enshrines a corrupt segment. The
same content snapshotted twice is the same version (the second snapshot returns the first); ``parent`` is
the previous version with the same topic selection, which makes a history of a stream's snapshots. The
epoch of each record enters the id on purpose, and is numbered per archive: the same incarnation is epoch 0
in an archive that only ever saw it, and epoch 1 in one that saw the incarnation before it.

Stored as ``versions/<id>.json``. Retention never deletes a segment a version lists.

>>> sel = Selection(topics=["features"], since_ms=None, until_ms=1000)
>>> sel.matches_topic("features"), sel.matches_topic("predictions"), sel.matches_time(999), sel.matches_time(None)
(True, False, True, False)
>>> Selection().matches_topic("_training.demo-risk.1")  # internal topics only when named
False
"""

from __future__ import annotations

import getpass
import heapq
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from datastore.canonical import ContentHasher, encode
from datastore.catalog import list_manifests
from datastore.manifest import Kind, SegmentManifest
from datastore.records import source_of
from datastore.segment import SegmentCorrupt, read_segment
from datastore.storage import Storage

VERSIONS_PREFIX = "versions/"
DATASET_FORMAT = "streamscore.dataset/1"


class DatasetConflict(RuntimeError):
    """Two segments hold different bytes for the same (topic, partition, offset): the archive is inconsistent."""


class OffsetRange(BaseModel):
    """Offsets first..last (both included) of one topic partition, in one epoch (None: the newest archived when
    the version is made)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    epoch: int | None = None


class Selection(BaseModel):
    """Which archived records a version holds: topics (None = every topic not starting with '_'), a time window,
    and optionally offset ranges (e.g. the labels a River snapshot learned)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topics: list[str] | None = None
    since_ms: int | None = Field(None, description="Kafka timestamp >= since_ms (inclusive).")
    until_ms: int | None = Field(None, description="Kafka timestamp < until_ms (exclusive).")
    offsets: list[OffsetRange] | None = Field(None, description="Only records within these ranges (None = all).")

    def matches_topic(self, topic: str) -> bool:
        return topic in self.topics if self.topics is not None else not topic.startswith("_")

    def matches_time(self, timestamp_ms: int | None) -> bool:
        if self.since_ms is None and self.until_ms is None:
            return True
        if timestamp_ms is None:
            return False
        return (self.since_ms is None or timestamp_ms >= self.since_ms) and (
            self.until_ms is None or timestamp_ms < self.until_ms)

    def matches_offset(self, topic: str, partition: int, offset: int, epoch: int | None = None) -> bool:
        """Whether a range holds the position (a range without epoch holds every epoch's: the newest is picked
        when segments are chosen, ``build_version``)."""
        return self.offsets is None or any(
            r.topic == topic and r.partition == partition and r.first_offset <= offset <= r.last_offset
            and (r.epoch is None or epoch is None or r.epoch == epoch) for r in self.offsets)

    @property
    def branch(self) -> tuple[str, ...] | None:
        return tuple(sorted(self.topics)) if self.topics is not None else None


class SegmentRef(BaseModel):
    """A segment a version uses, pinned by its sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    sha256: str
    kind: Kind
    topic: str
    partition: int
    epoch: int = 0
    first_offset: int
    last_offset: int
    records: int = Field(description="Records this segment contributes to the version (after filter and de-dup).")

    def covers(self, topic: str, partition: int, offset: int, epoch: int | None = None) -> bool:
        return topic == self.topic and partition == self.partition and (epoch is None or epoch == self.epoch) \
            and self.first_offset <= offset <= self.last_offset


class EpochSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    first_offset: int
    last_offset: int
    records: int


class PartitionSummary(BaseModel):
    """Offsets of a partition; ``epochs`` splits them by incarnation when it holds more than epoch 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_offset: int
    last_offset: int
    records: int
    epochs: dict[int, EpochSummary] = Field(default_factory=dict)


class TopicSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    records: int
    invalid: int
    partitions: dict[int, PartitionSummary]


class DatasetVersion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["streamscore.dataset/1"] = DATASET_FORMAT
    id: str = Field(description="Content hash of the records (see the module docstring).")
    created_at: int
    created_by: str
    parent: str | None = None
    description: str = ""
    selection: Selection
    record_count: int
    duplicates_dropped: int = Field(description="Records present in more than one segment, counted once.")
    min_timestamp_ms: int | None = None
    max_timestamp_ms: int | None = None
    topics: dict[str, TopicSummary]
    segments: list[SegmentRef]

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def holds(self, topic: str, partition: int, offset: int, timestamp_ms: int | None,
              epoch: int | None = None) -> bool:
        """Whether this version contains the record at that position (with that timestamp; of ``epoch``, None:
        of any epoch)."""
        sel = self.selection
        return sel.matches_topic(topic) and sel.matches_time(timestamp_ms) and sel.matches_offset(
            topic, partition, offset, epoch) and any(
            s.covers(topic, partition, offset, epoch) for s in self.segments)


# --- reading records in canonical order -------------------------------------------------------------
SegmentLike = SegmentManifest | SegmentRef


def _clusters(segments: list[SegmentLike]) -> Iterator[list[SegmentLike]]:
    """Segments of one partition grouped so that only overlapping ones are ever open at the same time."""
    cluster: list[SegmentLike] = []
    reach = -1
    for seg in sorted(segments, key=lambda s: (s.first_offset, s.last_offset)):
        if cluster and seg.first_offset > reach:
            yield cluster
            cluster = []
        cluster.append(seg)
        reach = max(reach, seg.last_offset)
    if cluster:
        yield cluster


def merged_rows(storage: Storage, segments: Iterable[SegmentLike], selection: Selection | None = None,
                stats: dict[str, Any] | None = None) -> Iterator[tuple[SegmentLike, dict[str, Any]]]:
    """Rows of ``segments`` in (topic, partition, epoch, offset) order, each position once, ``selection`` applied.

    Every segment's sha256 is checked as it is read (``SegmentCorrupt`` otherwise). A position held by
    several segments must hold the same record in each (``DatasetConflict`` otherwise); it is yielded once,
    from the first segment, and counted in ``stats["duplicates"]``.
    """
    selection = selection or Selection()
    stats = stats if stats is not None else {}
    stats.setdefault("duplicates", 0)
    by_tp: dict[tuple[str, int, int], list[SegmentLike]] = {}
    for seg in segments:
        if selection.matches_topic(seg.topic):
            by_tp.setdefault((seg.topic, seg.partition, seg.epoch), []).append(seg)

    def rows_of(seg: SegmentLike, rank: int) -> Iterator[tuple[int, int, SegmentLike, dict[str, Any]]]:
        for row in read_segment(storage, seg.key, expected_sha256=seg.sha256):
            yield row["offset"], rank, seg, row

    for tp in sorted(by_tp):
        for cluster in _clusters(by_tp[tp]):
            previous: tuple[int, bytes] | None = None
            streams = [rows_of(seg, rank) for rank, seg in enumerate(cluster)]
            topic, partition, epoch = tp
            for offset, _rank, seg, row in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
                if previous is not None and previous[0] == offset:
                    if encode(source_of(row)) != previous[1]:
                        raise DatasetConflict(f"{topic}[{partition}]@{offset} (epoch {epoch}): segments disagree "
                                              f"({seg.key})")
                    stats["duplicates"] += 1
                    continue
                previous = (offset, encode(source_of(row))) if len(cluster) > 1 else (offset, b"")
                if selection.matches_time(row["timestamp_ms"]) and selection.matches_offset(
                        topic, partition, offset, epoch):
                    yield seg, row


# --- building, storing, finding versions ------------------------------------------------------------
def _overlaps_offsets(selection: Selection, seg: SegmentManifest, newest: dict[tuple[str, int], int]) -> bool:
    """Whether a range holds some of the segment's offsets, in the range's epoch (or the newest, for None)."""
    return selection.offsets is None or any(
        r.topic == seg.topic and r.partition == seg.partition and r.first_offset <= seg.last_offset
        and seg.first_offset <= r.last_offset
        and seg.epoch == (r.epoch if r.epoch is not None else newest[(seg.topic, seg.partition)])
        for r in selection.offsets)


def build_version(storage: Storage, selection: Selection, segments: list[SegmentManifest] | None = None,
                  description: str = "", parent: str | None = None) -> DatasetVersion:
    """Read and verify the selected sealed segments and describe the version they make (not saved)."""
    if segments is None:
        segments = list_manifests(storage, selection.topics)
    newest: dict[tuple[str, int], int] = {}
    for s in segments:
        newest[(s.topic, s.partition)] = max(s.epoch, newest.get((s.topic, s.partition), 0))
    segments = [s for s in segments if selection.matches_topic(s.topic)
                and s.overlaps_time(selection.since_ms, selection.until_ms) and _overlaps_offsets(selection, s, newest)]
    hasher = ContentHasher()
    stats: dict[str, Any] = {}
    contributed: dict[str, int] = {}
    parts: dict[str, dict[int, dict[int, list[int]]]] = {}
    topic_info: dict[str, dict[str, Any]] = {}
    lo = hi = None
    for seg, row in merged_rows(storage, segments, selection, stats):
        rec = source_of(row)
        hasher.add(rec, seg.epoch)
        contributed[seg.key] = contributed.get(seg.key, 0) + 1
        span = parts.setdefault(rec.topic, {}).setdefault(rec.partition, {}).setdefault(
            seg.epoch, [rec.offset, rec.offset, 0])
        span[1] = rec.offset
        span[2] += 1
        info = topic_info.setdefault(rec.topic, {"kind": seg.kind, "records": 0, "invalid": 0})
        info["records"] += 1
        info["invalid"] += row["invalid_reason"] is not None
        if rec.timestamp_ms is not None:
            lo = rec.timestamp_ms if lo is None else min(lo, rec.timestamp_ms)
            hi = rec.timestamp_ms if hi is None else max(hi, rec.timestamp_ms)
    refs = [SegmentRef(key=s.key, sha256=s.sha256, kind=s.kind, topic=s.topic, partition=s.partition, epoch=s.epoch,
                       first_offset=s.first_offset, last_offset=s.last_offset, records=contributed[s.key])
            for s in segments if s.key in contributed]
    topics = {t: TopicSummary(kind=i["kind"], records=i["records"], invalid=i["invalid"], partitions={
        p: _partition_summary(spans) for p, spans in sorted(parts[t].items())}) for t, i in sorted(topic_info.items())}
    return DatasetVersion(
        id=hasher.hexdigest(), created_at=time.time_ns() // 1_000_000, created_by=_who(), parent=parent,
        description=description, selection=selection, record_count=hasher.count,
        duplicates_dropped=stats["duplicates"], min_timestamp_ms=lo, max_timestamp_ms=hi, topics=topics,
        segments=refs)


def _partition_summary(spans: dict[int, list[int]]) -> PartitionSummary:
    epochs = {e: EpochSummary(first_offset=a, last_offset=b, records=n) for e, (a, b, n) in sorted(spans.items())}
    return PartitionSummary(first_offset=min(e.first_offset for e in epochs.values()),
                            last_offset=max(e.last_offset for e in epochs.values()),
                            records=sum(e.records for e in epochs.values()),
                            epochs={} if list(epochs) == [0] else epochs)


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def version_key(version_id: str) -> str:
    return f"{VERSIONS_PREFIX}{version_id}.json"


def list_versions(storage: Storage) -> list[DatasetVersion]:
    """Every dataset version, oldest first."""
    versions = [DatasetVersion.model_validate_json(storage.get_bytes(k))
                for k in storage.list(VERSIONS_PREFIX) if k.endswith(".json")]
    return sorted(versions, key=lambda v: (v.created_at, v.id))


def load_version(storage: Storage, ref: str) -> DatasetVersion:
    """A version by full id or unique id prefix (at least 4 characters), like git."""
    if storage.exists(version_key(ref)):
        return DatasetVersion.model_validate_json(storage.get_bytes(version_key(ref)))
    if len(ref) < 4:
        raise KeyError(f"dataset version {ref!r}: give at least 4 characters of the id")
    ids = [k.removeprefix(VERSIONS_PREFIX).removesuffix(".json") for k in storage.list(VERSIONS_PREFIX)]
    found = [i for i in ids if i.startswith(ref)]
    if len(found) != 1:
        what = "no dataset version" if not found else f"ambiguous ({', '.join(f[:12] for f in found)})"
        raise KeyError(f"dataset version {ref!r}: {what}")
    return DatasetVersion.model_validate_json(storage.get_bytes(version_key(found[0])))


def snapshot(storage: Storage, selection: Selection, description: str = "") -> tuple[DatasetVersion, bool]:
    """Create a version from the segments sealed now; returns (version, created). Same content: the existing one."""
    with storage.lock():  # retention must not delete a segment between reading it and listing it in a version
        previous = [v for v in list_versions(storage) if v.selection.branch == selection.branch]
        version = build_version(storage, selection, description=description)
        if storage.exists(version_key(version.id)):
            return load_version(storage, version.id), False
        parent = previous[-1].id if previous else None
        version = version.model_copy(update={"parent": parent})
        storage.put_bytes(version_key(version.id), (version.model_dump_json(indent=1) + "\n").encode())
        return version, True


def parent_chain(storage: Storage, version: DatasetVersion, limit: int = 50) -> list[DatasetVersion]:
    """The version, its parent, the parent's parent, ... (oldest last)."""
    chain = [version]
    while chain[-1].parent is not None and len(chain) < limit:
        try:
            chain.append(load_version(storage, chain[-1].parent))
        except KeyError:
            break
    return chain


def version_rows(storage: Storage, version: DatasetVersion) -> Iterator[tuple[SegmentRef, dict[str, Any]]]:
    """The records of a version, in canonical order (segments verified as they are read)."""
    return merged_rows(storage, version.segments, version.selection)  # type: ignore[return-value]


def verify_version(storage: Storage, version: DatasetVersion) -> list[str]:
    """Recompute the id from the listed segments; every problem found (empty = verified)."""
    try:
        hasher = ContentHasher()
        for seg, row in version_rows(storage, version):
            hasher.add(source_of(row), seg.epoch)
    except (SegmentCorrupt, DatasetConflict, FileNotFoundError) as exc:
        return [str(exc)]
    problems = []
    if hasher.hexdigest() != version.id:
        problems.append(f"content hash {hasher.hexdigest()} != version id {version.id}")
    if hasher.count != version.record_count:
        problems.append(f"{hasher.count} records != {version.record_count} recorded")
    return problems
