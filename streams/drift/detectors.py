"""Concept drift: River's ADWIN and Page-Hinkley on the model's error stream, with their statistics.

Feature drift says the inputs changed; concept drift says the *relation* between inputs and outcome
changed, which only labels reveal. Each (score, true label) pair gives an error ``|y - score|`` in
[0, 1] (y = 1 for the positive class): ADWIN keeps an adaptive window of errors and cuts it when two
sub-windows have different means; Page-Hinkley accumulates deviations of the error above its running
mean and fires when they exceed a threshold (``mode="up"``: only a *worse* model is drift).

River detectors only say ``drift_detected``; ``DetectorState`` also carries the statistic, its
threshold and the window, which is what an operator needs to judge an alarm.

>>> import numpy as np
>>> rng = np.random.default_rng(3)
>>> monitor = ConceptDriftMonitor()
>>> scores = rng.random(4000)
>>> labels = np.where(np.arange(4000) < 2000, rng.random(4000) < scores, rng.random(4000) < 1 - scores)
>>> detections = monitor.update_many(scores, labels)
>>> sorted({d.detector for d in detections}), all(d.index >= 2000 for d in detections)
(['adwin', 'page_hinkley'], True)
>>> [(s.detector, s.window > 0, s.n_detections >= 1) for s in monitor.state()]
[('adwin', True, True), ('page_hinkley', True, True)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from online_learning.river_import import river_without_sklearn
from schemas.drift import DriftStatistic

with river_without_sklearn():  # 7.5 MB instead of 75 in a worker (online_learning/river_import.py)
    from river import drift

__all__ = ["ConceptDriftMonitor", "DetectorState"]


@dataclass(frozen=True)
class DetectorState:
    """One detector after one update (or at a query).

    ``statistic``: ADWIN's mean error over its window (its cut test compares means of sub-windows);
    Page-Hinkley's test value ``max_t(m_t) - m_n`` of the cumulated deviations. ``threshold``: ADWIN's
    confidence ``delta`` / Page-Hinkley's lambda. ``window``: errors the detector currently weighs (ADWIN's
    width; Page-Hinkley's updates since its last reset). ``index``: position in the label stream.
    """

    detector: str
    drift_detected: bool
    statistic: float
    threshold: float
    window: int
    mean_error: float
    n_detections: int
    last_detection: int | None
    index: int


class ConceptDriftMonitor:
    """Feed (score, label) pairs; read detections and the detectors' statistics.

    ``hold`` is how many labels after a detection ``statistics`` still reports status ``alert``: a
    detection is a moment, an alert a state someone must see.
    """

    def __init__(
        self,
        adwin_delta: float = 0.002,
        ph_threshold: float = 50.0,
        ph_delta: float = 0.005,
        ph_min_instances: int = 30,
        hold: int = 1000,
    ) -> None:
        self.adwin = drift.ADWIN(delta=adwin_delta)
        self.page_hinkley = drift.PageHinkley(
            min_instances=ph_min_instances, delta=ph_delta, threshold=ph_threshold, mode="up"
        )
        self.hold = hold
        self.n = 0
        self._ph_window = 0
        self._ph_sum = 0.0
        self._detections = {"adwin": 0, "page_hinkley": 0}
        self._last = {"adwin": None, "page_hinkley": None}
        self._reported = {"adwin": 0, "page_hinkley": 0}  # detections already shown by statistics()

    def update(self, score: float, label: bool | int) -> list[DetectorState]:
        """Add one pair; return the states of the detectors that detected drift on it (usually none)."""
        error = abs(float(bool(label)) - float(score))
        # River resets Page-Hinkley on the update after a detection; mirror that for its window and mean.
        if self.page_hinkley.drift_detected:
            self._ph_window, self._ph_sum = 0, 0.0
        self.adwin.update(error)
        self.page_hinkley.update(error)
        self._ph_window += 1
        self._ph_sum += error
        index, self.n = self.n, self.n + 1
        fired = []
        for name, detector in (("adwin", self.adwin), ("page_hinkley", self.page_hinkley)):
            if detector.drift_detected:
                self._detections[name] += 1
                self._last[name] = index
                fired.append(name)
        return [s for s in self.state() if s.detector in fired]

    def update_many(self, scores: Iterable[float], labels: Iterable[bool | int]) -> list[DetectorState]:
        """``update`` for each pair; return every detection."""
        out: list[DetectorState] = []
        for score, label in zip(scores, labels, strict=True):
            out.extend(self.update(score, label))
        return out

    def _ph_statistic(self) -> float:
        # PageHinkley keeps the cumulated deviation and its running minimum but not their difference,
        # which is its test value (River computes it inside update() and drops it).
        ph = self.page_hinkley
        if ph._x_mean.n < ph.min_instances:
            return 0.0
        return float(ph._sum_increase - ph._min_increase)

    def state(self) -> list[DetectorState]:
        """Both detectors now."""
        index = self.n - 1
        adwin, ph = self.adwin, self.page_hinkley
        return [
            DetectorState("adwin", adwin.drift_detected, float(adwin.estimation), adwin.delta, int(adwin.width),
                          float(adwin.estimation), self._detections["adwin"], self._last["adwin"], index),
            DetectorState("page_hinkley", ph.drift_detected, self._ph_statistic(), ph.threshold, self._ph_window,
                          self._ph_sum / self._ph_window if self._ph_window else 0.0,
                          self._detections["page_hinkley"], self._last["page_hinkley"], index),
        ]

    def statistics(self) -> list[DriftStatistic]:
        """The detectors as drift-record statistics (kind ``concept``, feature ``error``).

        Status ``alert`` while the last detection is at most ``hold`` labels old, and at least once for any
        detection since the previous call (a batch of labels may hold a detection older than ``hold``);
        Page-Hinkley's value is its test statistic with lambda as the alert threshold, ADWIN's is its
        window's mean error.
        """
        out = []
        for s in self.state():
            unreported = s.n_detections > self._reported[s.detector]
            self._reported[s.detector] = s.n_detections
            recent = unreported or (s.last_detection is not None and self.n - 1 - s.last_detection < self.hold)
            out.append(DriftStatistic(
                kind="concept", feature="error", statistic=s.detector, value=s.statistic,
                alert_threshold=s.threshold if s.detector == "page_hinkley" else None,
                status="alert" if recent else "ok",
            ))
        return out
