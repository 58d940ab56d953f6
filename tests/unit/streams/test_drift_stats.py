"""The drift statistics (streams/drift/stats.py) against scipy and against values worked out by hand."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import scipy.stats as ss

from streams.drift import stats as drift_stats
from streams.drift.stats import (
    bin_counts,
    bin_proportions,
    chi2_homogeneity,
    chi2_sf,
    kolmogorov_sf,
    ks_2samp,
    missing_rate,
    psi,
    quantile_edges,
    total_variation,
    wasserstein_1,
)

RNG = np.random.default_rng(20261123)
SAMPLE_PAIRS = [
    (RNG.normal(0, 1, 3000), RNG.normal(0, 1, 2000)),
    (RNG.normal(0, 1, 3000), RNG.normal(0.15, 1.2, 2000)),
    (RNG.lognormal(3.6, 1.1, 2000), RNG.lognormal(4.0, 1.1, 500)),
    (RNG.poisson(2.5, 2000).astype(float), RNG.poisson(3.0, 2000).astype(float)),  # heavy ties
    (np.round(RNG.random(800), 1), np.round(RNG.random(1200) ** 1.3, 1)),
    (RNG.normal(0, 1, 40), RNG.normal(0.3, 1, 60)),
]


# --- PSI ------------------------------------------------------------------------------------------------
def test_psi_by_hand() -> None:
    r, c = np.array([0.25, 0.25, 0.5]), np.array([0.5, 0.25, 0.25])
    expected = (0.5 - 0.25) * math.log(0.5 / 0.25) + 0 + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert psi(r, c, epsilon=0.0) == pytest.approx(expected, rel=1e-12)
    assert psi(r, r) == 0.0
    assert psi(r, c) == pytest.approx(psi(c, r), rel=1e-12)  # PSI is symmetric


def test_psi_epsilon_keeps_empty_bins_finite() -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        assert not math.isfinite(psi(np.array([0.5, 0.5]), np.array([1.0, 0.0]), epsilon=0.0))
    smoothed = psi(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    # (1+e)/(1+2e) vs (0.5+e)/(1+2e) etc. with e = 1e-4
    e = 1e-4
    r = np.array([0.5 + e, 0.5 + e]) / (1 + 2 * e)
    c = np.array([1 + e, e]) / (1 + 2 * e)
    assert smoothed == pytest.approx(float(np.sum((c - r) * np.log(c / r))), rel=1e-12)
    assert 4.0 < smoothed < 5.0
    with pytest.raises(ValueError, match="different bins"):
        psi(np.array([1.0]), np.array([0.5, 0.5]))


def test_quantile_bins_give_equal_reference_mass_and_handle_ties() -> None:
    x = RNG.normal(size=10_000)
    edges = quantile_edges(x, 10)
    assert len(edges) == 9
    np.testing.assert_allclose(bin_proportions(x, edges), 0.1, atol=1e-3)
    counts = RNG.poisson(2.5, 5000).astype(float)
    edges = quantile_edges(counts, 10)
    assert len(edges) < 9 and np.all(np.diff(edges) > 0)  # duplicates dropped, still increasing
    assert bin_counts(counts, edges).sum() == 5000
    # NaN (missing) values are not counted in any bin
    assert bin_counts(np.array([np.nan, 0.0, 5.0]), np.array([1.0])).tolist() == [1, 1]
    with pytest.raises(ValueError):
        quantile_edges(np.array([np.nan]))


# --- KS -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b"), SAMPLE_PAIRS)
def test_ks_statistic_equals_scipy(a: np.ndarray, b: np.ndarray) -> None:
    d, _ = ks_2samp(a, b)
    assert d == pytest.approx(ss.ks_2samp(a, b).statistic, abs=1e-12)


@pytest.mark.parametrize(("a", "b"), SAMPLE_PAIRS[:5])
def test_ks_p_value_close_to_scipy_asymptotic(a: np.ndarray, b: np.ndarray) -> None:
    # scipy's "asymp" uses the finite-n distribution of D; ours the limit with Stephens' correction.
    _, p = ks_2samp(a, b)
    ref = ss.ks_2samp(a, b, method="asymp").pvalue
    if ref > 1e-4:
        assert p == pytest.approx(ref, rel=0.15, abs=2e-3)
    else:
        assert p < 1e-3  # both far below any threshold we use


def test_ks_p_value_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(7)
    p = np.array([ks_2samp(rng.normal(size=500), rng.normal(size=400))[1] for _ in range(2000)])
    assert 0.003 < (p < 0.01).mean() < 0.02  # ~1 % false positives at alpha 0.01
    assert 0.03 < (p < 0.05).mean() < 0.07


def test_kolmogorov_sf_equals_scipy_kstwobign() -> None:
    for lam in (0.1, 0.3, 0.5, 0.8, 1.0, 1.2241, 1.3581, 1.6276, 2.0, 3.0):
        assert kolmogorov_sf(lam) == pytest.approx(ss.kstwobign.sf(lam), abs=1e-10)
    assert kolmogorov_sf(0.0) == 1.0


def test_ks_refuses_empty_samples() -> None:
    with pytest.raises(ValueError):
        ks_2samp(np.array([np.nan]), np.array([1.0]))


# --- Wasserstein ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b"), SAMPLE_PAIRS)
def test_wasserstein_equals_scipy(a: np.ndarray, b: np.ndarray) -> None:
    assert wasserstein_1(a, b) == pytest.approx(ss.wasserstein_distance(a, b), rel=1e-10, abs=1e-12)


def test_wasserstein_of_a_shift_is_the_shift() -> None:
    x = RNG.normal(size=1000)
    assert wasserstein_1(x, x + 2.5) == pytest.approx(2.5, rel=1e-12)


# --- chi-square -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ref", "cur"),
    [([940, 60], [880, 120]), ([500, 300, 200], [480, 330, 190]), ([14101, 899, 0], [1750, 240, 10]),
     ([10, 0, 5], [12, 0, 9]), ([300, 200, 100, 50, 25], [250, 260, 90, 40, 35])],
)
def test_chi2_homogeneity_equals_scipy(ref: list[int], cur: list[int]) -> None:
    stat, dof, p = chi2_homogeneity(np.array(ref), np.array(cur))
    table = np.array([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    expected = ss.chi2_contingency(table, correction=False)
    assert stat == pytest.approx(expected.statistic, rel=1e-10)
    assert dof == expected.dof
    assert p == pytest.approx(expected.pvalue, rel=1e-8, abs=1e-300)


def test_chi2_sf_equals_scipy() -> None:
    for dof in (1, 2, 3, 4, 5, 9, 10, 31):
        for x in (0.01, 0.5, 1.0, 3.84, 7.5, 20.0, 80.0, 400.0):
            assert chi2_sf(x, dof) == pytest.approx(ss.chi2.sf(x, dof), rel=1e-9, abs=1e-300)
    assert chi2_sf(0.0, 3) == 1.0
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)


def test_chi2_degenerate_tables() -> None:
    assert chi2_homogeneity(np.array([10, 0]), np.array([5, 0])) == (0.0, 0, 1.0)  # one category
    assert chi2_homogeneity(np.array([10, 3]), np.array([0, 0])) == (0.0, 0, 1.0)  # empty sample


# --- small ones -----------------------------------------------------------------------------------------
def test_total_variation_and_missing_rate() -> None:
    assert total_variation(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == 0.0
    assert total_variation(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
    # for a binary feature TVD is the KS statistic
    a = (RNG.random(2000) < 0.06).astype(float)
    b = (RNG.random(2000) < 0.12).astype(float)
    tvd = total_variation(bin_proportions(a, np.array([1.0])), bin_proportions(b, np.array([1.0])))
    assert tvd == pytest.approx(ks_2samp(a, b)[0], abs=1e-12)
    assert missing_rate(np.array([])) == 0.0
    assert missing_rate(np.array([np.nan, 1.0, np.nan, np.nan])) == 0.75


def test_docstring_examples() -> None:
    result = doctest.testmod(drift_stats)
    assert result.attempted > 10 and result.failed == 0
