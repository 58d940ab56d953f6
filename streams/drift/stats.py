"""Two-sample drift statistics as pure numpy functions: PSI, KS, Wasserstein-1, chi-square, missing rate.

Each function compares a *reference* (the training data, see ``streams.drift.profile``) with a *current*
window of the live stream. None of them keeps state, so they are easy to test against scipy and to
run on any thread.

>>> rng = np.random.default_rng(0)
>>> ref, cur = rng.normal(0, 1, 5000), rng.normal(0.5, 1, 2000)
>>> edges = quantile_edges(ref, 10)
>>> round(psi(bin_proportions(ref, edges), bin_proportions(cur, edges)), 3)
0.253
>>> d, p = ks_2samp(ref, cur)
>>> round(d, 3), p < 1e-30
(0.22, True)
>>> round(wasserstein_1(ref, cur), 3)
0.517
>>> stat, dof, p = chi2_homogeneity(np.array([940, 60]), np.array([880, 120]))
>>> round(stat, 1), dof, round(p, 6)
(22.0, 1, 3e-06)
>>> missing_rate(np.array([1.0, np.nan, 3.0, np.nan]))
0.5
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "PSI_EPSILON",
    "bin_counts",
    "bin_proportions",
    "chi2_homogeneity",
    "chi2_sf",
    "kolmogorov_sf",
    "ks_2samp",
    "missing_rate",
    "psi",
    "quantile_edges",
    "total_variation",
    "wasserstein_1",
]

# Added to every bin proportion before the log ratio: an empty bin would otherwise make PSI infinite.
PSI_EPSILON = 1e-4


def quantile_edges(reference: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Interior bin edges at the reference's ``1/n_bins .. (n_bins-1)/n_bins`` quantiles, deduplicated.

    Discrete features (an hour, a count) repeat quantiles; duplicates are dropped, so such a feature
    gets fewer, unequal bins rather than empty ones. Bins are ``(-inf, e0), [e0, e1), ..., [e_last, inf)``.

    >>> quantile_edges(np.arange(100.0), 4)
    array([24.75, 49.5 , 74.25])
    >>> quantile_edges(np.array([0.0] * 50 + [1.0] * 50), 10)  # 9 quantiles, 3 distinct
    array([0. , 0.5, 1. ])
    """
    x = _finite(reference)
    if x.size == 0:
        raise ValueError("reference has no finite values")
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    return np.unique(np.quantile(x, np.arange(1, n_bins) / n_bins))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of the finite ``values`` in the ``len(edges) + 1`` bins of ``quantile_edges``.

    >>> bin_counts(np.array([0.0, 1.0, 1.0, 5.0, np.nan]), np.array([1.0, 2.0]))
    array([1, 2, 1])
    """
    x = _finite(values)
    # side="right": a value equal to an edge belongs to the bin that starts at that edge.
    return np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)


def bin_proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``bin_counts`` normalised to sum to 1 (all zeros when there is no finite value)."""
    counts = bin_counts(values, edges)
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def psi(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index ``sum((c - r) * ln(c / r))`` of two proportion vectors over the same bins.

    Both vectors get ``epsilon`` added to every bin and are renormalised, so an empty bin costs a large but
    finite amount. Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.

    >>> psi(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    0.0
    >>> round(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 4)
    0.8784
    """
    r, c = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    if r.shape != c.shape:
        raise ValueError(f"proportions over different bins: {r.shape} vs {c.shape}")
    r = (r + epsilon) / (r.sum() + epsilon * r.size)
    c = (c + epsilon) / (c.sum() + epsilon * c.size)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_2samp(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value.

    D is exact, ties included (evaluated at every distinct value of the pooled sample). The p-value
    uses Kolmogorov's limit distribution with Stephens' small-sample correction
    ``lambda = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * D``, ``ne = n*m/(n+m)``; it is conservative for
    discrete data (ties make large D rarer than for continuous data).

    >>> ks_2samp(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    (0.0, 1.0)
    >>> d, p = ks_2samp(np.arange(100.0), np.arange(50.0, 150.0))
    >>> d, p < 1e-10
    (0.5, True)
    """
    a, b = np.sort(_finite(reference)), np.sort(_finite(current))
    n, m = a.size, b.size
    if n == 0 or m == 0:
        raise ValueError("both samples need at least one finite value")
    pooled = np.concatenate([a, b])
    cdf_a, cdf_b = np.searchsorted(a, pooled, side="right") / n, np.searchsorted(b, pooled, side="right") / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    ne = n * m / (n + m)
    root = math.sqrt(ne)
    return d, kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: ``2 * sum_{k>=1} (-1)^(k-1) exp(-2 k^2 lam^2)``.

    >>> round(kolmogorov_sf(1.3581), 4)
    0.05
    """
    if lam <= 0:
        return 1.0
    if lam < 0.2:  # the alternating series converges slowly here; its value is 1 to double precision
        return 1.0
    k = np.arange(1, 101)
    terms = 2.0 * (-1.0) ** (k - 1) * np.exp(-2.0 * k**2 * lam**2)
    return float(min(1.0, max(0.0, terms.sum())))


def wasserstein_1(reference: np.ndarray, current: np.ndarray) -> float:
    """Earth mover's distance between the two empirical distributions, in the data's units.

    Unlike KS it grows with how *far* mass moved, not only with how sure we are that it moved, so it
    stays meaningful on large windows where every p-value is tiny. Equals
    ``scipy.stats.wasserstein_distance(reference, current)``.

    >>> wasserstein_1(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    2.0
    """
    a, b = np.sort(_finite(reference)), np.sort(_finite(current))
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples need at least one finite value")
    pooled = np.sort(np.concatenate([a, b]))
    widths = np.diff(pooled)
    cdf_a = np.searchsorted(a, pooled[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, pooled[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def chi2_homogeneity(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, int, float]:
    """Pearson chi-square test that two count vectors over the same categories share one distribution.

    Returns ``(statistic, degrees_of_freedom, p_value)``; categories empty in both samples are dropped.
    Equals ``scipy.stats.chi2_contingency([ref, cur], correction=False)``.

    >>> chi2_homogeneity(np.array([50, 50]), np.array([50, 50]))
    (0.0, 1, 1.0)
    """
    table = np.vstack([reference_counts, current_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 0, 1.0  # one category (or an empty sample): nothing can differ
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return stat, dof, chi2_sf(stat, dof)


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution for an integer number of degrees of freedom.

    Closed forms (no scipy): for even ``dof`` a Poisson tail sum, for odd ``dof`` ``erfc`` plus a sum;
    terms are computed in log space so large statistics neither overflow nor lose the tail.

    >>> round(chi2_sf(3.841458820694124, 1), 6), round(chi2_sf(5.991464547107979, 2), 6)
    (0.05, 0.05)
    """
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"dof must be a positive integer, got {dof}")
    if x <= 0:
        return 1.0
    half = x / 2.0
    log_half = math.log(half)
    if dof % 2 == 0:
        total = sum(math.exp(-half + i * log_half - math.lgamma(i + 1)) for i in range(dof // 2))
    else:
        total = math.erfc(math.sqrt(half))
        total += sum(math.exp(-half + (i + 0.5) * log_half - math.lgamma(i + 1.5)) for i in range((dof - 1) // 2))
    return float(min(1.0, max(0.0, total)))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Half the L1 distance between two proportion vectors: the largest difference in any event's probability.

    For a binary feature it equals the KS statistic, which is why it serves as the chi-square test's
    effect size.

    >>> total_variation(np.array([0.94, 0.06]), np.array([0.88, 0.12]))
    0.06
    """
    return round(float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum()), 12)


def missing_rate(values: np.ndarray) -> float:
    """Fraction of entries that are NaN (a feature absent from the event); 0.0 for an empty array."""
    x = np.asarray(values, np.float64)
    return float(np.isnan(x).mean()) if x.size else 0.0


def _finite(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, np.float64).ravel()
    return x[np.isfinite(x)]
