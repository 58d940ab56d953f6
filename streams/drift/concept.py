"""Concept drift where labels flow: join labels to the drift window's inputs, feed the error stream to
River's ADWIN and Page-Hinkley (``streams.drift.detectors``).

The drift lane sees every input message of its partitions and, when a labels topic exists, the labels.
``ConceptTracker`` keeps each input's feature row by event id (``online_learning.join.JoinStore``: bounded
by size and age), pairs it with the event's label whichever comes first, and hands the complete rows to
the next drift evaluation, which scores them with the worker's model in one ONNX call (off the hot path)
and feeds ``|y - score|`` to the detectors in label order.

With several workers the labels partition belongs to one of them, which sees the inputs of its own
partitions only: its detectors then run on a random sample of the labelled events (inputs are keyed by
event id), which slows detection but does not bias it (docs/drift.md).

>>> import orjson
>>> t = ConceptTracker(positive_class="risky", join_ttl_s=3600, join_size=100)
>>> t.add_features("e1", [0.1, 0.2])  # ts_ms: the Kafka timestamp (default now)
>>> t.add_label(orjson.dumps({"event_id": "e1", "label": "risky", "label_time": 2_000}))
>>> t.add_label(orjson.dumps({"event_id": "e2", "label": 0.0, "label_time": 2_000}))  # before its event
>>> t.add_features("e2", [0.3, 0.4])
>>> rows, ys = t.take_pending()
>>> rows.tolist(), ys.tolist(), t.counts["labels"]
([[0.1, 0.2], [0.3, 0.4]], [1.0, 0.0], 2)
>>> _ = t.update(np.array([0.9, 0.2]), ys)
>>> [(s.statistic, s.status) for s in t.statistics()]
[('adwin', 'ok'), ('page_hinkley', 'ok')]
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from online_learning.join import JoinStore
from schemas.drift import DriftStatistic
from schemas.labels import InvalidLabel, Label, decode_label

if TYPE_CHECKING:
    from streams.drift.detectors import ConceptDriftMonitor, DetectorState

__all__ = ["ConceptTracker"]


class ConceptTracker:
    """Label join + concept detectors of one model; no Kafka client, not thread-safe (the caller locks)."""

    def __init__(self, positive_class: str, join_ttl_s: float, join_size: int, hold: int = 1000) -> None:
        self.positive_class = positive_class
        self.rows = JoinStore(ttl_s=join_ttl_s, max_size=join_size)
        # Labels that came before their event (another topic, another partition: no order between them).
        self.early: OrderedDict[str, float] = OrderedDict()
        self.join_size = join_size
        self.pending_rows: list[list[float]] = []
        self.pending_ys: list[float] = []
        self.hold = hold
        self._detectors: ConceptDriftMonitor | None = None  # built on the first labelled row (see ``detectors``)
        self.counts = {"labels": 0, "invalid": 0, "unmatched": 0, "incomplete": 0}

    @property
    def detectors(self) -> ConceptDriftMonitor:
        """River's detectors, built when first needed: ``river.drift`` (7.5 MB of RSS in a worker, it was 75 MB
        with the scikit-learn River loads for nothing: online_learning/river_import.py) is imported only then."""
        if self._detectors is None:
            from streams.drift.detectors import ConceptDriftMonitor  # heavy: river.drift

            self._detectors = ConceptDriftMonitor(hold=self.hold)
        return self._detectors

    @property
    def labels_evaluated(self) -> int:
        """Labelled events fed to the detectors so far."""
        return 0 if self._detectors is None else self._detectors.n

    def target(self, label: Label) -> float:
        """1.0 for the positive class (or a numeric label >= 0.5), 0.0 otherwise."""
        if isinstance(label.label, str):
            return 1.0 if label.label == self.positive_class else 0.0
        return 1.0 if label.label >= 0.5 else 0.0

    def add_features(self, event_id: str, row: list[float], ts_ms: int | None = None) -> None:
        y = self.early.pop(event_id, None)
        if y is not None:
            self._pair(row, y)
        else:
            self.rows.add_features(event_id, row, ts_ms)

    def add_many_features(self, event_ids: Sequence[str], rows: Sequence[list[float]],
                          ts_ms: Sequence[int | None]) -> None:
        """``add_features`` for a batch (the drift lane's sample of a scored batch)."""
        if self.early:  # some labels came first: pair those one by one
            for event_id, row, ts in zip(event_ids, rows, ts_ms, strict=True):
                self.add_features(event_id, row, ts)
        else:
            self.rows.add_many_features(event_ids, rows, ts_ms)

    def add_label(self, value: bytes | None) -> None:
        try:
            label = decode_label(value)
        except InvalidLabel:
            self.counts["invalid"] += 1
            return
        y = self.target(label)
        self.counts["labels"] += 1
        entry = self.rows.take(label.event_id)
        if entry is not None and entry.row is not None:
            self._pair(entry.row, y)
            return
        if self.rows.miss_reason(label.event_id) == "unknown":
            self.early[label.event_id] = y
            if len(self.early) > self.join_size:
                self.early.popitem(last=False)
                self.counts["unmatched"] += 1
        else:
            self.counts["unmatched"] += 1

    def _pair(self, row: list[float], y: float) -> None:
        if any(math.isnan(v) for v in row):  # the model could not score it, so it has no error
            self.counts["incomplete"] += 1
            return
        self.pending_rows.append(row)
        self.pending_ys.append(y)

    def take_pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Labelled rows since the last call, in label order, as (rows, targets)."""
        rows = np.asarray(self.pending_rows, np.float64) if self.pending_rows else np.empty((0, 0))
        ys = np.asarray(self.pending_ys, np.float64)
        self.pending_rows, self.pending_ys = [], []
        return rows, ys

    def update(self, scores: np.ndarray, ys: np.ndarray) -> list[DetectorState]:
        if not len(ys):  # no labelled row yet: the detectors stay unbuilt (and river.drift unimported)
            return []
        return self.detectors.update_many(scores, ys)

    def statistics(self) -> list[DriftStatistic]:
        """The detectors' statistics for the drift record; none before the first labelled event."""
        return self.detectors.statistics() if self.labels_evaluated else []
