"""The archive writer, free of any transport: records in, sealed segments out, and which records may be acked.

One open segment per (topic, partition). Each consumed record comes with an opaque *token* (a Faust event,
an offset, anything); ``add``, ``seal_due`` and ``seal_all`` return the tokens that may be acknowledged
now - exactly those whose record is in a sealed segment:

* a new record is appended to its partition's open segment; its token waits there until the segment
  is sealed (by size here, by age in ``seal_due``, or by ``seal_all`` on shutdown or rebalance);
* a record whose offset a sealed segment of the current epoch already holds, with the same bytes
  (consumed again after a restart or a rebalance), is not written twice: its token is returned at once;
* a redelivered record already in the open segment waits with it.

Incarnations (datastore.epochs): offsets identify a record only within one incarnation of a partition.
So the first record of a partition in a session (after construction, ``seal_all`` or ``reset``), and any
record consumed at or below an offset seen before (a rewind), is compared with the archived copy at its
offset; a different record (or a record in a gap of a sealed range, or another Kafka topic id given to
``check_incarnation``/``topic_ids``) starts a new epoch, and the records are archived there. The
comparison reads at most one sealed segment per check. Without a topic id only a record at an offset the
epoch already holds can reveal a new incarnation: a recreated topic whose consumer starts beyond every
archived offset continues the current epoch.

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
...     reborn = arc.add([(recs[0]._replace(value=b"[]"), "new-t0")])  # same offset, other record: epoch 1
...     reborn += arc.seal_all()
...     arc.close()
...     first, again, rest, reborn, arc.stats["epochs_started"], arc.epoch_of("features", 0)
(['t0', 't1'], ['t0-again'], ['t2'], ['new-t0'], 1, 1)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from datastore.canonical import SourceRecord, encode
from datastore.catalog import Coverage, archived_row, coverage_of
from datastore.epochs import Epoch, Reason, current_epoch, record_topic_id, start_epoch
from datastore.manifest import Kind, SegmentManifest
from datastore.records import event_row, event_rows, label_row, prediction_row, source_of
from datastore.segment import SegmentWriter
from datastore.spool import WriterSpool
from datastore.storage import Storage

log = logging.getLogger(__name__)
T = TypeVar("T")
TP = tuple[str, int]


@dataclass(frozen=True)
class TopicSpec:
    """How records of a topic are archived: ``event`` (decoded with ``wire_format``), ``prediction`` or ``label``."""

    kind: Kind
    wire_format: str = "json"


class _Open(Generic[T]):
    def __init__(self, writer: SegmentWriter, undecided: bool) -> None:
        self.writer = writer
        self.tokens: list[T] = []
        # offset -> digest of the record's canonical bytes, to compare a redelivery with the open copy. Not the
        # record itself: 10k open records per partition (inputs and predictions, 8 partitions) held ~80 MB of
        # consumed records in the archiver (docs/side-lanes-cost.md); a 16-byte digest is ~150 B per record.
        self.held: dict[int, bytes] = {}
        # Opened while the incarnation was still undecided: its records move to a new epoch if one starts.
        self.undecided = undecided
        self.records: list[tuple[SourceRecord, T]] = []


@dataclass
class _Session:
    """What the archive knows of a partition since it was (re)assigned."""

    epoch: Epoch
    verified: bool = False  # a record was compared, or none can be (beyond everything the epoch holds)
    pending: bool = False  # below what the epoch holds but not comparable (a retention hole): keep checking
    last_seen: int | None = None


def _differences(new: SourceRecord, old: SourceRecord) -> str:
    fields = [f for f in ("key", "value", "timestamp_ms", "headers") if getattr(new, f) != getattr(old, f)]
    return f"offset {new.offset}: {', '.join(fields) or 'encoding'} differ"


def _digest(canonical: bytes) -> bytes:
    return hashlib.blake2b(canonical, digest_size=16).digest()


@dataclass
class _Verdict:
    outcome: str  # same | differs | gap | unknown
    evidence: str = ""


class Archive(Generic[T]):
    """Records in, sealed segments out (see the module docstring).

    ``stats``: records_written, records_skipped (duplicates of records the epoch already holds),
    epochs_started, incarnation_checks, old_epoch_tokens (tokens of an incarnation that ended, sealed but not
    returned: acknowledging them to the new one would skip its records), segments_sealed, bytes_sealed.
    ``drain_counts()`` gives the per-topic written/skipped counts since its last call, for metrics.
    """

    def __init__(self, storage: Storage, topics: dict[str, TopicSpec], segment_records: int, segment_seconds: float,
                 codec: str = "deflate", writer: str = "", max_payload_bytes: int = 65536,
                 on_sealed: Callable[[SegmentManifest], None] | None = None,
                 on_new_epoch: Callable[[Epoch], None] | None = None) -> None:
        self.storage = storage
        self.topics = topics
        self.segment_records = segment_records
        self.segment_seconds = segment_seconds
        self.codec = codec
        self.writer = writer
        self.max_payload_bytes = max_payload_bytes
        self.on_sealed = on_sealed
        self.on_new_epoch = on_new_epoch
        self.topic_ids: dict[str, str] = {}  # Kafka topic id per topic, when the broker gives one
        self.spool = WriterSpool(storage.spool_dir(), writer or "archive")
        self._open: dict[TP, _Open[T]] = {}
        self._coverage: dict[tuple[str, int, int], Coverage] = {}
        self._sessions: dict[TP, _Session] = {}
        self.epochs_started: list[Epoch] = []
        self.stats = {"records_written": 0, "records_skipped": 0, "epochs_started": 0, "incarnation_checks": 0,
                      "old_epoch_tokens": 0, "segments_sealed": 0, "bytes_sealed": 0}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._deferred: list[T] = []  # tokens sealed while records moved to a new epoch, returned by ``add``

    # --- feeding -------------------------------------------------------------------------------
    def add(self, items: Sequence[tuple[SourceRecord, T]]) -> list[T]:
        """Archive records (in consumption order); returns the tokens that may be acked now."""
        ackable: list[T] = []
        rows = self._event_rows(items)
        for i, (rec, token) in enumerate(items):
            tp = (rec.topic, rec.partition)
            session = self._session(tp)
            if not session.verified or session.pending or (
                    session.last_seen is not None and rec.offset <= session.last_seen):
                self._verify(tp, session, rec)
            session.last_seen = rec.offset
            epoch = session.epoch.epoch
            current = self._open.get(tp)
            if current is not None and current.writer.first_offset <= rec.offset <= current.writer.last_offset:
                current.tokens.append(token)  # redelivered (same bytes: checked above); the open copy will be sealed
                continue
            # The store is re-read only when a segment is about to open, not for every record.
            if self._covered(tp, epoch, rec.offset, refresh=current is None):
                ackable.append(token)
                self.stats["records_skipped"] += 1
                self._counts[(rec.topic, "skipped")] += 1
                continue
            if current is not None and rec.offset < current.writer.first_offset:  # type: ignore[operator]
                # Rewound before the open segment and not archived: keep every segment in offset order.
                ackable += self._seal(tp, "flush")
            ackable += self._append(tp, rec, token, rows.get(i))
            self.stats["records_written"] += 1
            self._counts[(rec.topic, "written")] += 1
        if self._deferred:
            ackable += self._deferred
            self._deferred = []
        return ackable

    def check_incarnation(self, topic: str, partition: int, first_records: Sequence[SourceRecord] = (),
                          topic_id: str | None = None) -> Epoch:
        """Decide which incarnation (epoch) of the partition the consumer reads; call after an assignment.

        ``first_records`` are the first records consumed (not written here: pass them to ``add`` next);
        ``topic_id`` is the broker's Kafka topic id, when it gives one. A topic id other than the one
        recorded for the current epoch, or a record that differs from the archived copy at its offset,
        starts a new epoch. Returns the epoch the partition's records go to.
        """
        if topic_id is not None:
            self.topic_ids[topic] = topic_id
        tp = (topic, partition)
        self._sessions.pop(tp, None)
        session = self._session(tp)
        if not first_records and not self._topic_id_changed(tp, session, None):
            self._adopt_topic_id(session)
        for rec in first_records:
            self._verify(tp, session, rec)
            if session.verified and not session.pending:
                break
        return session.epoch

    def epoch_of(self, topic: str, partition: int) -> int:
        """The epoch new records of the partition are archived in."""
        return self._session((topic, partition)).epoch.epoch

    def reset(self, partitions: Sequence[TP] | None = None) -> None:
        """Forget what is known of these partitions (all: None): their next record is checked again."""
        for tp in list(self._sessions) if partitions is None else partitions:
            self._sessions.pop(tp, None)

    def drain_counts(self) -> dict[tuple[str, str], int]:
        """{(topic, "written" | "skipped"): records} since the last call (for per-topic counters)."""
        counts, self._counts = dict(self._counts), Counter()
        return counts

    def seal_due(self, now: float | None = None) -> list[T]:
        """Seal segments whose first record is ``segment_seconds`` old; returns their tokens."""
        now = time.monotonic() if now is None else now
        due = [tp for tp, o in self._open.items() if now - (o.writer.opened_at or now) >= self.segment_seconds]
        return [token for tp in due for token in self._seal(tp, "time")]

    def seal_all(self, reason: str = "flush") -> list[T]:
        """Seal every open segment (shutdown, rebalance); returns all tokens held. Partitions are checked again
        when next consumed (another worker may have archived them, or started an epoch, meanwhile)."""
        tokens = [token for tp in list(self._open) for token in self._seal(tp, reason)]
        self.reset()
        return tokens

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

    # --- incarnations --------------------------------------------------------------------------
    def _session(self, tp: TP) -> _Session:
        session = self._sessions.get(tp)
        if session is None:
            session = self._sessions[tp] = _Session(current_epoch(self.storage, *tp))
        return session

    def _topic_id_changed(self, tp: TP, session: _Session, rec: SourceRecord | None) -> bool:
        """Start a new epoch if the broker's topic id differs from the epoch's; True if one was started."""
        topic_id = self.topic_ids.get(tp[0])
        if topic_id is None or session.epoch.topic_id is None or session.epoch.topic_id == topic_id:
            return False
        self._new_epoch(tp, session, "topic_id_changed", rec,
                        f"topic id {topic_id} (epoch {session.epoch.epoch}: {session.epoch.topic_id})")
        return True

    def _adopt_topic_id(self, session: _Session) -> None:
        """An epoch recorded without topic id that the broker's records match gets the broker's id."""
        topic_id = self.topic_ids.get(session.epoch.topic)
        if topic_id is not None and session.epoch.topic_id is None:
            session.epoch = record_topic_id(self.storage, session.epoch, topic_id)

    def _verify(self, tp: TP, session: _Session, rec: SourceRecord) -> None:
        self.stats["incarnation_checks"] += 1
        if self._topic_id_changed(tp, session, rec):
            return
        # While pending, every record is checked: the store's listing is re-read only for the first one.
        verdict = self._compare(tp, session.epoch.epoch, rec, refresh=not session.pending)
        if verdict.outcome in ("same", "unknown"):
            # unknown = not comparable; beyond everything the epoch holds, that is a continuation (or a new
            # incarnation no record can reveal without a topic id); below it, a hole: keep comparing.
            pending = verdict.outcome == "unknown" and rec.offset <= self._max_offset(tp, session.epoch.epoch)
            session.verified, session.pending = True, pending
            current = self._open.get(tp)
            if not pending and current is not None and current.undecided:
                current.undecided, current.records = False, []
            self._adopt_topic_id(session)
        else:
            self._new_epoch(tp, session, "record_differs" if verdict.outcome == "differs" else "gap_offset", rec,
                            verdict.evidence)

    def _compare(self, tp: TP, epoch: int, rec: SourceRecord, refresh: bool = True) -> _Verdict:
        """The record against the epoch's copy at its offset: in the open segment, else in a sealed one."""
        current = self._open.get(tp)
        if current is not None and current.writer.epoch == epoch and \
                current.writer.first_offset <= rec.offset <= current.writer.last_offset:  # type: ignore[operator]
            held = current.held.get(rec.offset)
            if held is None:
                return _Verdict("gap", f"offset {rec.offset}: in a gap of the open segment")
            if held == _digest(encode(rec, epoch)):
                return _Verdict("same")
            return _Verdict("differs", f"offset {rec.offset}: differs from the open segment's copy")
        if not self._covered(tp, epoch, rec.offset, refresh=refresh):
            return _Verdict("unknown")
        row = archived_row(self.storage, *tp, epoch, rec.offset)
        if row is None:
            return _Verdict("gap", f"offset {rec.offset}: in a gap of a sealed segment")
        old = source_of(row)
        return _Verdict("same") if encode(old) == encode(rec) else _Verdict("differs", _differences(rec, old))

    def _max_offset(self, tp: TP, epoch: int) -> int:
        cov = self._coverage.get((*tp, epoch))
        top = cov.ends[-1] if cov is not None and cov.ends else -1
        current = self._open.get(tp)
        if current is not None and current.writer.epoch == epoch and current.writer.last_offset is not None:
            top = max(top, current.writer.last_offset)
        return top

    def _new_epoch(self, tp: TP, session: _Session, reason: Reason, rec: SourceRecord | None, evidence: str) -> None:
        moved: list[tuple[SourceRecord, T]] = []
        current = self._open.pop(tp, None)
        if current is not None:
            if current.undecided:  # its records were consumed from the new incarnation: they move with it
                current.writer.abort()
                moved = current.records
            else:  # the end of the old incarnation: sealed, but its tokens name offsets that no longer exist
                self._open[tp] = current
                tokens = self._seal(tp, "flush")
                self.stats["old_epoch_tokens"] += len(tokens)
        while True:
            epoch, started = start_epoch(self.storage, *tp, after=session.epoch.epoch, reason=reason,
                                         first_offset=None if rec is None else rec.offset,
                                         topic_id=self.topic_ids.get(tp[0]), evidence=evidence,
                                         started_by=self.writer)
            session.epoch, session.verified, session.pending = epoch, True, False
            if started:
                self.stats["epochs_started"] += 1
                self.epochs_started.append(epoch)
                log.warning("%s[%d]: new incarnation, archiving into epoch %d (%s: %s)", *tp, epoch.epoch, reason,
                            evidence)
                if self.on_new_epoch is not None:
                    self.on_new_epoch(epoch)
                break
            # Another writer moved the partition to a newer epoch meanwhile: join it unless this record differs
            # from that epoch's copy too.
            if rec is None or self._compare(tp, epoch.epoch, rec).outcome not in ("differs", "gap"):
                break
        for r, token in moved:
            self._deferred += self._append(tp, r, token)

    # --- internals -----------------------------------------------------------------------------
    def _event_rows(self, items: Sequence[tuple[SourceRecord, T]]) -> dict[int, dict[str, Any]]:
        """Rows of the batch's input records, decoded in bulk (``event_rows``), by position in ``items``.

        Also for records that turn out to be skipped (already archived): rare, and cheaper than a second pass.
        """
        by_topic: dict[str, list[int]] = {}
        for i, (rec, _) in enumerate(items):
            by_topic.setdefault(rec.topic, []).append(i)
        rows: dict[int, dict[str, Any]] = {}
        for topic, where in by_topic.items():
            spec = self._spec(topic)
            if spec.kind == "event":
                decoded = event_rows([items[i][0] for i in where], spec.wire_format, self.max_payload_bytes)
                rows.update(zip(where, decoded, strict=True))
        return rows

    def _append(self, tp: TP, rec: SourceRecord, token: T, row: dict[str, Any] | None = None) -> list[T]:
        session = self._session(tp)
        current = self._open.get(tp)
        if current is None:
            writer = self._new_writer(rec.topic, rec.partition, session.epoch.epoch)
            current = self._open[tp] = _Open(writer, undecided=session.pending)
        canonical = current.writer.append(rec, row if row is not None else self._row(rec))
        current.tokens.append(token)
        current.held[rec.offset] = _digest(canonical)
        if current.undecided:
            current.records.append((rec, token))
        if current.writer.count >= self.segment_records:
            return self._seal(tp, "size")
        return []

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

    def _new_writer(self, topic: str, partition: int, epoch: int) -> SegmentWriter:
        spec = self._spec(topic)
        return SegmentWriter(self.storage, self.spool.dir, spec.kind, topic, partition, spec.wire_format,
                             self.codec, writer=self.writer, epoch=epoch)

    def _covered(self, tp: TP, epoch: int, offset: int, refresh: bool) -> bool:
        key = (*tp, epoch)
        cov = self._coverage.get(key)
        if cov is None or (refresh and not cov.contains(offset)):
            # Re-read from the store: another worker sharing data_dir may have sealed it (partition moved).
            cov = self._coverage[key] = coverage_of(self.storage, *tp, epoch=epoch)
        return cov.contains(offset)

    def _seal(self, tp: TP, reason: str) -> list[T]:
        current = self._open.pop(tp)
        manifest = current.writer.seal(reason)
        session = self._sessions.get(tp)
        if session is not None and current.undecided and session.pending:
            # Sealed before any record could be compared: they stay in this epoch even if the next comparable
            # record reveals a new incarnation (checking goes on: the records after them would move).
            log.warning("%s[%d]: sealed %d records not yet compared with the archive into epoch %d", *tp,
                        manifest.record_count, manifest.epoch)
        self._coverage.setdefault((*tp, manifest.epoch), Coverage()).add(manifest.first_offset, manifest.last_offset)
        self.stats["segments_sealed"] += 1
        self.stats["bytes_sealed"] += manifest.bytes
        if self.on_sealed is not None:
            self.on_sealed(manifest)
        return current.tokens

