"""Segment manifests and segment keys: what a sealed segment holds, written right after it is sealed.

A segment holds consecutive records of ONE topic partition, in offset order. Its key spells out what it
covers and pins its bytes, so listing keys is enough to know the sealed offset ranges:

    segments/<topic>/<partition>/<first offset:020d>-<last offset:020d>-<sha256[:16]>.avro
    segments/<topic>/<partition>/<same stem>.manifest.json
    segments/<topic>/<partition>/e<epoch:06d>/<same layout>          (epoch > 0, datastore.epochs)

Epoch 0 (the first incarnation of a partition, and everything archived before epochs existed) keeps the
plain layout, so old archives read unchanged; a later incarnation, whose offsets start again, gets its own
folder, so the offset ranges of two incarnations never meet in one listing.

A segment counts as sealed (part of the archive) only once its manifest exists; the manifest is written
after the segment file, so a manifest always describes a complete file.

>>> key = segment_key("features", 2, 100, 199, "ab" * 32)
>>> key
'segments/features/2/00000000000000000100-00000000000000000199-abababababababab.avro'
>>> manifest_key(key)
'segments/features/2/00000000000000000100-00000000000000000199-abababababababab.manifest.json'
>>> parse_segment_key(manifest_key(key))
SegmentName(topic='features', partition=2, first_offset=100, last_offset=199, sha_prefix='abababababababab', epoch=0)
>>> parse_segment_key(segment_key("features", 2, 0, 9, "ab" * 32, epoch=3))
SegmentName(topic='features', partition=2, first_offset=0, last_offset=9, sha_prefix='abababababababab', epoch=3)
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

SEGMENT_FORMAT = "streamscore.segment/1"
SEGMENTS_PREFIX = "segments/"
MANIFEST_SUFFIX = ".manifest.json"
Kind = Literal["event", "prediction", "label"]
SCHEMA_OF_KIND: dict[str, str] = {"event": "archived_event", "prediction": "archived_prediction",
                                  "label": "archived_label"}

_NAME = re.compile(r"^segments/(?P<topic>[^/]+)/(?P<partition>\d+)/(?:e(?P<epoch>\d{6})/)?"
                   r"(?P<first>\d{20})-(?P<last>\d{20})-(?P<sha>[0-9a-f]{16})(?:\.avro|\.manifest\.json)$")


class SegmentName(NamedTuple):
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    sha_prefix: str
    epoch: int = 0


def partition_prefix(topic: str, partition: int, epoch: int | None = None) -> str:
    """Key prefix of a partition's segments: of every epoch (None), of epoch 0 (plain layout), or of epoch e."""
    base = f"{SEGMENTS_PREFIX}{topic}/{partition}/"
    return base if not epoch else f"{base}e{epoch:06d}/"


def segment_key(topic: str, partition: int, first: int, last: int, sha256: str, epoch: int = 0) -> str:
    return f"{partition_prefix(topic, partition, epoch)}{first:020d}-{last:020d}-{sha256[:16]}.avro"


def manifest_key(segment: str) -> str:
    return segment.removesuffix(".avro") + MANIFEST_SUFFIX


def segment_of_manifest(manifest: str) -> str:
    return manifest.removesuffix(MANIFEST_SUFFIX) + ".avro"


def parse_segment_key(key: str) -> SegmentName | None:
    """The identity spelled by a segment or manifest key; None for any other key."""
    m = _NAME.match(key)
    if m is None:
        return None
    return SegmentName(m["topic"], int(m["partition"]), int(m["first"]), int(m["last"]), m["sha"],
                       int(m["epoch"] or 0))


class SegmentManifest(BaseModel):
    """Everything needed to find, trust and select a sealed segment without opening it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["streamscore.segment/1"] = SEGMENT_FORMAT
    key: str = Field(description="Storage key of the segment file.")
    kind: Kind
    schema_name: str = Field(description="archived_event or archived_prediction (schemas/*.avsc).")
    schema_version: int = 1
    schema_sha256: str = Field(description="sha256 of the standalone schema JSON in the file header.")
    topic: str
    partitions: list[int] = Field(description="Partitions held: always one, a segment never spans partitions.")
    epoch: int = Field(0, ge=0, description="Incarnation of the partition (datastore.epochs); 0 in manifests "
                       "written before epochs existed.")
    first_offset: int
    last_offset: int
    record_count: int = Field(ge=1, description="Records held; fewer than the offset span when offsets have gaps.")
    wire_format: str = Field(description="How values were decoded: json, avro or auto (inputs); json (predictions).")
    codec: str
    bytes: int
    sha256: str = Field(description="sha256 of the segment file: any changed byte fails verification.")
    content_sha256: str = Field(description="Content hash of its records (datastore.canonical): the id a "
                                "dataset made of exactly these records gets.")
    min_timestamp_ms: int | None = None
    max_timestamp_ms: int | None = None
    invalid_count: int = Field(0, description="Records whose value did not decode (kept byte for byte).")
    event_ids: str = Field(description="Bloom filter of the event ids in the segment (datastore.bloom).")
    sealed_at: int = Field(description="Epoch ms when sealed.")
    sealed_by: Literal["size", "time", "flush", "recovery", "import", "compaction"] = "size"
    writer: str = ""

    @property
    def partition(self) -> int:
        return self.partitions[0]

    @property
    def offset_range(self) -> tuple[int, int]:
        return (self.first_offset, self.last_offset)

    def covers(self, topic: str, partition: int, offset: int, epoch: int | None = None) -> bool:
        """Whether the segment's range holds that position (of ``epoch``; None: of any epoch)."""
        return topic == self.topic and partition == self.partition and (epoch is None or epoch == self.epoch) \
            and self.first_offset <= offset <= self.last_offset

    def overlaps_time(self, since_ms: int | None, until_ms: int | None) -> bool:
        """Whether any record may have since_ms <= timestamp < until_ms (no timestamps: only an open window)."""
        if since_ms is None and until_ms is None:
            return True
        if self.min_timestamp_ms is None or self.max_timestamp_ms is None:
            return False
        return (since_ms is None or self.max_timestamp_ms >= since_ms) and (
            until_ms is None or self.min_timestamp_ms < until_ms)

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=1) + "\n").encode()
