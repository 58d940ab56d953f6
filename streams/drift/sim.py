"""Measure the drift monitor offline: detection delay after a known shift, false alarms without one, and
ADWIN/Page-Hinkley delay after a known concept change. The numbers in docs/drift.md come from

    python -m streams.drift.sim --model-dir artifacts/models/demo-risk/1

Feature drift runs the worker's own ``DriftMonitor`` (JSON decode -> window -> ``evaluate``) on
``models.demo`` events, evaluating every ``step`` events instead of every ``drift_interval_s``, so the
delay is in events and independent of the event rate.

>>> import tempfile
>>> from models.train_demo import train_demo_model
>>> with tempfile.TemporaryDirectory() as d:
...     _ = train_demo_model(d, seed=7, n=5000)
...     run = shift_run(Settings(model_dir=d), seed=1, shift=2.0, n_before=2000, n_after=2000, step=250)
>>> run.alert_before_shift, run.delay is not None and run.delay <= 1000
(False, True)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from models.card import ModelCard
from models.demo import risk_probability, sample_events, sample_features
from models.onnx_scorer import OnnxScorer
from streams.drift.detectors import ConceptDriftMonitor
from streams.drift.lane import DriftMonitor, load_reference
from streams.settings import Settings

__all__ = ["ShiftRun", "concept_labels", "concept_run", "false_alarms", "monitor_for", "shift_run"]

PARTITIONS = 4


@dataclass(frozen=True)
class ShiftRun:
    delay: int | None  # shifted events in the window at the first alert; None = never alerted
    alert_before_shift: bool  # any alert on a window without shifted events
    evaluations: int


def monitor_for(settings: Settings) -> DriftMonitor:
    scorer = OnnxScorer.from_dir(settings.model_dir)
    reference = load_reference(settings.model_dir, ModelCard.load(settings.model_dir))
    if reference is None:
        raise ValueError(f"{settings.model_dir} has no reference profile")
    return DriftMonitor(settings, scorer, *reference, worker="sim")


def _feed(monitor: DriftMonitor, events: list[dict], start: int) -> None:
    for i, event in enumerate(events, start):
        monitor.add("features", i % PARTITIONS, i // PARTITIONS, orjson.dumps(event))


def shift_run(settings: Settings, seed: int, shift: float, n_before: int = 3000, n_after: int = 3000,
              step: int = 100, monitor: DriftMonitor | None = None) -> ShiftRun:
    """Undrifted events, then events drawn with ``shift``; evaluate every ``step`` events."""
    monitor = monitor or monitor_for(settings)
    stream = sample_events(seed, n_before, start_ms=0) + sample_events(seed + 10_000, n_after, start_ms=0, shift=shift)
    delay, before, evaluations = None, False, 0
    for start in range(0, len(stream), step):
        _feed(monitor, stream[start:start + step], start)
        if not monitor.due():
            continue
        record, _ = monitor.evaluate(monitor.snapshot(), now_ms=start)
        evaluations += 1
        shifted = max(0, min(len(monitor.window), start + step - n_before))
        if record.status == "alert":
            if shifted == 0:
                before = True
            elif delay is None:
                delay = shifted
    return ShiftRun(delay, before, evaluations)


def false_alarms(settings: Settings, n_windows: int, seed: int = 50_000) -> dict[str, int]:
    """Statuses of ``n_windows`` independent, undrifted, full windows."""
    monitor = monitor_for(settings)
    counts = {"ok": 0, "warn": 0, "alert": 0}
    for k in range(n_windows):
        _feed(monitor, sample_events(seed + k, settings.drift_window, start_ms=0), 0)
        record, _ = monitor.evaluate(monitor.snapshot(), now_ms=k)
        counts[record.status] += 1
    return counts


def concept_labels(rng: np.random.Generator, X: np.ndarray, changed_from: int | None = None) -> np.ndarray:
    """True (risky) / False outcomes of the rows ``X``; from row ``changed_from`` on, under the changed rule."""
    p = risk_probability(X)
    if changed_from is not None:
        changed = X[changed_from:].copy()
        changed[:, 7] = 1.0 - changed[:, 7]  # device_score's effect reversed
        p[changed_from:] = risk_probability(changed)
    return rng.random(len(p)) < p


def concept_run(scorer: OnnxScorer, seed: int, n_before: int = 3000, n_after: int = 3000,
                change: bool = True) -> dict[str, int | None]:
    """Labels from the true rule, then (``change``) from a rule where untrusted devices stop mattering and
    trusted ones become risky: same features, different outcome. First detection index per detector,
    relative to the change (negative = a false alarm before it)."""
    rng = np.random.default_rng(seed)
    X = sample_features(rng, n_before + n_after)
    labels = concept_labels(rng, X, changed_from=n_before if change else None)
    scores = scorer.predict_many(X.astype(np.float32)).scores
    monitor = ConceptDriftMonitor()
    first: dict[str, int | None] = {"adwin": None, "page_hinkley": None}
    for detection in monitor.update_many(scores, labels):
        if first[detection.detector] is None:
            first[detection.detector] = detection.index - n_before
    return first


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.drift.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Settings().model_dir)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--windows", type=int, default=3000)
    args = parser.parse_args(argv)
    settings = Settings(model_dir=args.model_dir)
    print(f"model {args.model_dir}, window {settings.drift_window}, thresholds {settings.drift_thresholds}")
    for shift in (0.25, 0.5, 1.0, 2.0):
        runs = [shift_run(settings, seed, shift, step=50) for seed in range(args.seeds)]
        delays = np.array([r.delay for r in runs if r.delay is not None])
        print(f"shift {shift}: detected {len(delays)}/{len(runs)}, alerts before the shift "
              f"{sum(r.alert_before_shift for r in runs)}, delay (shifted events in the window at the first alert, "
              f"evaluated every 50) median {np.median(delays):.0f} p95 {np.percentile(delays, 95):.0f} "
              f"max {delays.max()}" if len(delays) else f"shift {shift}: never detected")
    counts = false_alarms(settings, args.windows)
    print(f"undrifted full windows: {counts}")
    scorer = OnnxScorer.from_dir(args.model_dir)
    for change in (True, False):
        runs = [concept_run(scorer, seed, change=change) for seed in range(args.seeds)]
        for name in ("adwin", "page_hinkley"):
            hits = [r[name] for r in runs if r[name] is not None]
            early = sum(h < 0 for h in hits)
            late = np.array([h for h in hits if h >= 0])
            what = "concept change" if change else "no change"
            summary = (f"median {np.median(late):.0f} p95 {np.percentile(late, 95):.0f} max {late.max()}"
                       if len(late) else "-")
            print(f"{what}: {name} detected after the change in {len(late)}/{len(runs)} runs ({summary} labels), "
                  f"false alarm before it in {early}/{len(runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
