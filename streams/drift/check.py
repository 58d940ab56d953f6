"""Compare one window of live data with a model's reference profile: every statistic, its thresholds, a status.

Per feature, by the kind the profile gave it:

* numeric: ``psi`` (on the reference quantile bins), ``ks`` (D, p-value against the reference sample),
  ``wasserstein`` (W1 in reference standard deviations) and ``missing_rate``;
* categorical: ``psi`` (on the categories, plus one bin for values the reference never had), ``chi2``
  (statistic, p-value; total variation distance as the effect size) and ``missing_rate``;

and for the model's scores (``kind="prediction"``, feature ``"score"``): ``psi`` and ``ks`` against the
held-out scores. Pure computation: no Kafka, no clock; the drift agent calls it on a worker thread.

>>> from streams.drift.profile import build_profile
>>> rng = np.random.default_rng(0)
>>> X = np.column_stack([rng.normal(size=5000), (rng.random(5000) < 0.1).astype(float)])
>>> profile = build_profile(X, ["x", "flag"], rng.random(2000), model_name="m", model_version="1", source="ex")
>>> window = np.column_stack([rng.normal(1.0, 1, 1000), (rng.random(1000) < 0.1).astype(float)])
>>> stats = check_window(profile, window, rng.random(1000))
>>> [(s.feature, s.statistic, s.status) for s in stats if s.status != "ok"]
[('x', 'psi', 'alert'), ('x', 'ks', 'alert'), ('x', 'wasserstein', 'alert')]
>>> worst_status(stats)
'alert'
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from schemas.drift import STATUS_LEVEL, DriftStatistic, DriftStatus, DriftSubject, Histogram
from schemas.drift_thresholds import DriftThresholds, status_of
from streams.drift.profile import FeatureProfile, ReferenceProfile
from streams.drift.stats import (
    bin_proportions,
    chi2_homogeneity,
    ks_2samp,
    missing_rate,
    psi,
    total_variation,
    wasserstein_1,
)

__all__ = ["check_column", "check_window", "worst_status"]


def check_window(
    profile: ReferenceProfile,
    X: np.ndarray,
    scores: np.ndarray | None = None,
    thresholds: DriftThresholds | None = None,
) -> list[DriftStatistic]:
    """All statistics of a window ``X`` (n, k) whose columns are ``profile.feature_names``; NaN = missing.

    ``scores`` are the model's scores of the window's complete rows; None skips prediction drift.
    """
    t = thresholds or DriftThresholds()
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[1] != len(profile.features):
        raise ValueError(f"window has shape {X.shape}, the profile has {len(profile.features)} features")
    out: list[DriftStatistic] = []
    for j, feature in enumerate(profile.features):
        out.extend(check_column(feature, X[:, j], t, "feature"))
    if scores is not None and len(scores):
        out.extend(check_column(profile.prediction, np.asarray(scores, np.float64), t, "prediction"))
    return out


def check_column(
    ref: FeatureProfile, values: np.ndarray, t: DriftThresholds, kind: DriftSubject = "feature"
) -> list[DriftStatistic]:
    """Statistics of one column against its reference summary (see the module docstring for which)."""
    finite = values[np.isfinite(values)]
    out: list[DriftStatistic] = []
    if finite.size:
        if ref.kind == "categorical":
            out.extend(_categorical(ref, finite, t, kind))
        else:
            out.extend(_numeric(ref, finite, t, kind))
    if kind == "feature":
        rate = missing_rate(values)
        excess = max(0.0, rate - ref.missing_rate)
        out.append(_stat(kind, ref.name, "missing_rate", rate, t.missing_warn, t.missing_alert, effect=excess))
    return out


def _numeric(ref: FeatureProfile, x: np.ndarray, t: DriftThresholds, kind: DriftSubject) -> list[DriftStatistic]:
    current = bin_proportions(x, ref.edges_array)
    reference = ref.proportions
    histogram = Histogram(edges=ref.edges, categories=[], reference=reference.tolist(), current=current.tolist())
    d, p = ks_2samp(ref.sample_array, x)
    stats = [
        _stat(kind, ref.name, "psi", psi(reference, current), t.psi_warn, t.psi_alert, histogram=histogram),
        _stat(kind, ref.name, "ks", d, t.ks_warn, t.ks_alert, p_value=p, p_threshold=t.ks_p),
    ]
    if kind == "feature":
        # In reference standard deviations, so one threshold fits amounts in currency and scores in [0, 1].
        scale = ref.std if ref.std > 0 else 1.0
        w1 = wasserstein_1(ref.sample_array, x) / scale
        stats.append(_stat(kind, ref.name, "wasserstein", w1, t.wasserstein_warn, t.wasserstein_alert))
    return stats


def _categorical(ref: FeatureProfile, x: np.ndarray, t: DriftThresholds, kind: DriftSubject) -> list[DriftStatistic]:
    categories = np.asarray(ref.categories, np.float64)
    known = np.isin(x, categories)
    # One extra bin for values the reference never had: new categories are drift, not noise to drop.
    cur_counts = np.append(np.bincount(np.searchsorted(categories, x[known]), minlength=categories.size),
                           int((~known).sum()))
    ref_counts = np.append(np.asarray(ref.counts, np.int64), 0)
    reference, current = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    histogram = Histogram(edges=[], categories=ref.categories, reference=reference.tolist(), current=current.tolist())
    stat, _, p = chi2_homogeneity(ref_counts, cur_counts)
    return [
        _stat(kind, ref.name, "psi", psi(reference, current), t.psi_warn, t.psi_alert, histogram=histogram),
        _stat(kind, ref.name, "chi2", stat, t.chi2_warn, t.chi2_alert, p_value=p, p_threshold=t.chi2_p,
              effect=total_variation(reference, current)),
    ]


def _stat(
    kind: DriftSubject,
    feature: str,
    statistic: str,
    value: float,
    warn: float | None,
    alert: float | None,
    *,
    p_value: float | None = None,
    p_threshold: float | None = None,
    effect: float | None = None,
    histogram: Histogram | None = None,
) -> DriftStatistic:
    x = effect if effect is not None else value
    return DriftStatistic(
        kind=kind, feature=feature, statistic=statistic, value=float(value),
        p_value=None if p_value is None else float(p_value), effect=None if effect is None else float(effect),
        warn_threshold=warn, alert_threshold=alert, p_threshold=p_threshold,
        status=status_of(x, warn=warn, alert=alert, p_value=p_value, p_threshold=p_threshold),  # type: ignore[arg-type]
        histogram=histogram,
    )


def worst_status(statistics: Iterable[DriftStatistic]) -> DriftStatus:
    """The most severe status among ``statistics`` ('ok' for none)."""
    worst = max((STATUS_LEVEL[s.status] for s in statistics), default=0)
    return next(name for name, level in STATUS_LEVEL.items() if level == worst)  # type: ignore[return-value]
