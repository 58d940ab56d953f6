"""The archive writer, free of any transport: records in, sealed segments out, and which records may be acked.

One open segment per (topic, partition). Each consumed record comes with an opaque *token* (a Faust event,
an offset, anything); ``add``, ``seal_due`` and ``seal_all`` return the tokens that may be acknowledged
now - exactly those whose record is in a sealed segment:

* a new record is appended to its partition's open segment; its token waits there until the segment
  is sealed (by size here, by age in ``seal_due``, or by ``seal_all`` on shutdown or rebalance);
* a record whose offset a sealed segment already holds (consumed again after a restart or a rebalance)
  is not written twice: its token is returned at once;
* a redelivered record already in the open segment waits with it.

So an acknowledged record is always in a sealed segment, and a crash loses only unsealed, unacknowledged
records, which Kafka delivers again. Not thread-safe: one thread drives an ``Archive``.

>>> import tempfile
>>> from datastore.storage import LocalStorage
>>> with tempfile.TemporaryDirectory() as d:
...     arc = Archive(LocalStorage(d), {"features": TopicSpec("event", "json")}, segment_records=2,
...                   segment_seconds=60, codec="null", writer="doc")
...     recs = [SourceRecord("features", 0, off, None, None, b"{}", []) for off in range(3)]
...     first = arc.add([(r, f"t{r.offset}") for r in recs])
...     again = arc.add([(recs[0], "t0-again")])
...     rest = arc.seal_all()
...     arc.close()
...     first, again, rest, arc.stats["segments_sealed"]
(['t0', 't1'], ['t0-again'], ['t2'], 2)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from datastore.canonical import SourceRecord
from datastore.catalog import Coverage, coverage_of
from datastore.manifest import Kind, SegmentManifest
from datastore.records import event_row, label_row, prediction_row
from datastore.segment import SegmentWriter
from datastore.spool import WriterSpool
from datastore.storage import Storage

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class TopicSpec:
    """How records of a topic are archived: ``event`` (decoded with ``wire_format``), ``prediction`` or ``label``."""

    kind: Kind
    wire_format: str = "json"


class _Open(Generic[T]):
    def __init__(self, writer: SegmentWriter) -> None:
        self.writer = writer
        self.tokens: list[T] = []


class Archive(Generic[T]):
    def __init__(self, storage: Storage, topics: dict[str, TopicSpec], segment_records: int, segment_seconds: float,
                 codec: str = "deflate", writer: str = "", max_payload_bytes: int = 65536,
                 on_sealed: Callable[[SegmentManifest], None] | None = None) -> None:
        self.storage = storage
        self.topics = topics
        self.segment_records = segment_records
        self.segment_seconds = segment_seconds
        self.codec = codec
        self.writer = writer
        self.max_payload_bytes = max_payload_bytes
        self.on_sealed = on_sealed
        self.spool = WriterSpool(storage.spool_dir(), writer or "archive")
        self._open: dict[tuple[str, int], _Open[T]] = {}
        self._coverage: dict[tuple[str, int], Coverage] = {}
        self.stats = {"records_written": 0, "records_skipped": 0, "segments_sealed": 0, "bytes_sealed": 0}

    # --- feeding -------------------------------------------------------------------------------
    def add(self, items: Sequence[tuple[SourceRecord, T]]) -> list[T]:
        """Archive records (in consumption order); returns the tokens that may be acked now."""
        ackable: list[T] = []
        for rec, token in items:
            tp = (rec.topic, rec.partition)
            current = self._open.get(tp)
            if current is not None and current.writer.first_offset <= rec.offset <= current.writer.last_offset:
                current.tokens.append(token)  # redelivered; the open copy will be sealed
                continue
            # The store is re-read only when a segment is about to open, not for every record.
            if self._covered(tp, rec.offset, refresh=current is None):
                ackable.append(token)
                self.stats["records_skipped"] += 1
                continue
            if current is not None and rec.offset < current.writer.first_offset:  # type: ignore[operator]
                # Rewound before the open segment and not archived: keep every segment in offset order.
                ackable += self._seal(tp, "flush")
                current = None
            if current is None:
                current = self._open[tp] = _Open(self._new_writer(rec.topic, rec.partition))
            current.writer.append(rec, self._row(rec))
            current.tokens.append(token)
            self.stats["records_written"] += 1
            if current.writer.count >= self.segment_records:
                ackable += self._seal(tp, "size")
        return ackable

    def seal_due(self, now: float | None = None) -> list[T]:
        """Seal segments whose first record is ``segment_seconds`` old; returns their tokens."""
        now = time.monotonic() if now is None else now
        due = [tp for tp, o in self._open.items() if now - (o.writer.opened_at or now) >= self.segment_seconds]
        return [token for tp in due for token in self._seal(tp, "time")]

    def seal_all(self, reason: str = "flush") -> list[T]:
        """Seal every open segment (shutdown, rebalance); returns all tokens held."""
        return [token for tp in list(self._open) for token in self._seal(tp, reason)]

    def close(self) -> None:
        """Release the spool; call after ``seal_all`` (anything still open is discarded, unacked)."""
        for current in self._open.values():
            current.writer.abort()
        self._open.clear()
        self.spool.close()

    def open_first_offset(self, topic: str, partition: int) -> int | None:
        """First offset of the partition's unsealed segment (None when none is open): commits stop below it."""
        current = self._open.get((topic, partition))
        return None if current is None else current.writer.first_offset

    @property
    def open_records(self) -> int:
        return sum(o.writer.count for o in self._open.values())

    # --- internals -----------------------------------------------------------------------------
    def _spec(self, topic: str) -> TopicSpec:
        spec = self.topics.get(topic)
        if spec is None:
            raise KeyError(f"topic {topic!r} is not configured for archiving ({sorted(self.topics)})")
        return spec

    def _row(self, rec: SourceRecord) -> dict[str, Any]:
        spec = self._spec(rec.topic)
        if spec.kind == "event":
            return event_row(rec, spec.wire_format, self.max_payload_bytes)
        if spec.kind == "label":
            return label_row(rec)
        return prediction_row(rec)

    def _new_writer(self, topic: str, partition: int) -> SegmentWriter:
        spec = self._spec(topic)
        return SegmentWriter(self.storage, self.spool.dir, spec.kind, topic, partition, spec.wire_format,
                             self.codec, writer=self.writer)

    def _covered(self, tp: tuple[str, int], offset: int, refresh: bool) -> bool:
        cov = self._coverage.get(tp)
        if cov is None or (refresh and not cov.contains(offset)):
            # Re-read from the store: another worker sharing data_dir may have sealed it (partition moved).
            cov = self._coverage[tp] = coverage_of(self.storage, *tp)
        return cov.contains(offset)

    def _seal(self, tp: tuple[str, int], reason: str) -> list[T]:
        current = self._open.pop(tp)
        manifest = current.writer.seal(reason)
        self._coverage.setdefault(tp, Coverage()).add(manifest.first_offset, manifest.last_offset)
        self.stats["segments_sealed"] += 1
        self.stats["bytes_sealed"] += manifest.bytes
        if self.on_sealed is not None:
            self.on_sealed(manifest)
        return current.tokens
