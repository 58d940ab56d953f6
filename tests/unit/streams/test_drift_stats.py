"""The drift statistics (streams/drift/stats.py): scipy.stats where scipy has the test (asserted equal to direct
scipy calls on random data, ties, tiny samples, empty bins), PSI and bins against values worked out by hand."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import scipy.stats as ss

from streams.drift import stats as drift_stats
from streams.drift.check import check_window
from streams.drift.profile import build_profile
from streams.drift.stats import (
    KS_METHOD,
    bin_counts,
    bin_proportions,
    chi2_homogeneity,
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


# --- KS: scipy.stats.ks_2samp -------------------------------------------------------------------------
def _random_pairs(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs the lane meets (2000-value reference vs windows of equal and unequal size, drifted or not),
    heavy ties, and tiny samples."""
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)),
        (rng.normal(0, 1, 2000), rng.normal(0.3, 1, 1999)),
        (rng.lognormal(3.6, 1.1, 2000), rng.lognormal(4.0, 1.1, 500)),
        (rng.poisson(2.5, 2000).astype(float), rng.poisson(3.0, 1990).astype(float)),  # heavy ties
        (np.round(rng.random(800), 1), np.round(rng.random(1200) ** 1.3, 1)),  # 11 distinct values
        (rng.normal(0, 1, 7), rng.normal(0.5, 1, 3)),
        (rng.normal(0, 1, 1), rng.normal(0, 1, 2)),
        (np.full(5, 1.0), np.full(4, 1.0)),  # one value in both
    ]


SEEDS = [0, 1, 2, 20261123, 99]
PAIRS = [pytest.param(a, b, id=f"seed{seed}-pair{i}") for seed in SEEDS for i, (a, b) in enumerate(_random_pairs(seed))]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_ks_equals_scipy_asymptotic(a: np.ndarray, b: np.ndarray) -> None:
    d, p = ks_2samp(a, b)
    expected = ss.ks_2samp(a, b, method="asymp")
    assert (d, p) == (float(expected.statistic), float(expected.pvalue))
    # D does not depend on the p-value method (the exact path rounds it to a multiple of 1/lcm(n, m): last bits)
    assert d == pytest.approx(ss.ks_2samp(a, b).statistic, abs=1e-15)
    assert KS_METHOD == "asymp"


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_ks_leaves_out_missing_values(a: np.ndarray, b: np.ndarray) -> None:
    holes = np.concatenate([a, [np.nan, np.inf]]), np.concatenate([[np.nan], b, [-np.inf]])
    assert ks_2samp(*holes) == ks_2samp(a, b)


def test_ks_asymptotic_p_is_close_to_exact_at_window_sizes() -> None:
    # Why asymp is allowed (stats.ks_2samp docstring): at 2000 vs 1500-2000 values it is within 6.5 %
    # of the exact p-value and on the same side of 0.01. 5 seeds here (40 were measured for the docs).
    worst, flips = 0.0, 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        for m in (2000, 1999, 1500):
            for shift in (0.0, 0.05, 0.1, 0.15):
                a, b = rng.normal(size=2000), rng.normal(shift, 1, m)
                exact, asymp = ss.ks_2samp(a, b, method="exact").pvalue, ks_2samp(a, b)[1]
                flips += (exact < 0.01) != (asymp < 0.01)
                if exact > 1e-6:
                    worst = max(worst, abs(asymp - exact) / exact)
    assert flips == 0
    assert 0.0 < worst < 0.1


def test_ks_p_value_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(7)
    p = np.array([ks_2samp(rng.normal(size=500), rng.normal(size=400))[1] for _ in range(2000)])
    assert 0.003 < (p < 0.01).mean() < 0.02  # ~1 % false positives at alpha 0.01
    assert 0.03 < (p < 0.05).mean() < 0.07


def test_ks_refuses_empty_samples() -> None:
    with pytest.raises(ValueError, match="at least one finite value"):
        ks_2samp(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="at least one finite value"):
        ks_2samp(np.array([1.0]), np.array([]))


# --- Wasserstein: scipy.stats.wasserstein_distance ------------------------------------------------------
@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_wasserstein_equals_scipy(a: np.ndarray, b: np.ndarray) -> None:
    assert wasserstein_1(a, b) == float(ss.wasserstein_distance(a, b))
    assert wasserstein_1(np.append(a, np.nan), b) == wasserstein_1(a, b)


def test_wasserstein_of_a_shift_is_the_shift() -> None:
    x = RNG.normal(size=1000)
    assert wasserstein_1(x, x + 2.5) == pytest.approx(2.5, rel=1e-12)
    with pytest.raises(ValueError, match="at least one finite value"):
        wasserstein_1(x, np.array([np.nan]))


# --- chi-square: scipy.stats.chi2_contingency -----------------------------------------------------------
def _random_tables(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    ref = rng.multinomial(15000, [0.94, 0.06])  # a binary flag (dof 1)
    tables = [(ref, rng.multinomial(2000, [0.92, 0.08]))]
    p = rng.dirichlet(np.ones(5))
    ref5, cur5 = rng.multinomial(15000, p), rng.multinomial(2000, p)
    tables.append((ref5, cur5))
    # an empty category in both samples, and the lane's extra "never seen" bin (reference count 0)
    tables.append((np.append(np.insert(ref5, 2, 0), 0), np.append(np.insert(cur5, 2, 0), rng.integers(1, 30))))
    tables.append((rng.multinomial(12, [0.5, 0.3, 0.2]), rng.multinomial(5, [0.2, 0.3, 0.5])))  # tiny
    return tables


TABLES = [pytest.param(r, c, id=f"seed{seed}-table{i}")
          for seed in SEEDS for i, (r, c) in enumerate(_random_tables(seed))]
TABLES += [pytest.param(np.array(r), np.array(c), id=f"fixed{i}") for i, (r, c) in enumerate(
    [([940, 60], [880, 120]), ([14101, 899, 0], [1750, 240, 10]), ([10, 0, 5], [12, 0, 9]), ([1, 0], [0, 1])])]


@pytest.mark.parametrize(("ref", "cur"), TABLES)
def test_chi2_homogeneity_equals_scipy(ref: np.ndarray, cur: np.ndarray) -> None:
    stat, dof, p = chi2_homogeneity(ref, cur)
    table = np.array([ref, cur])
    kept = table[:, table.sum(axis=0) > 0]  # scipy refuses a category empty in both (expected frequency 0)
    expected = ss.chi2_contingency(kept, correction=False)
    assert (stat, dof, p) == (float(expected.statistic), int(expected.dof), float(expected.pvalue))
    if (table.sum(axis=0) == 0).any():
        with pytest.raises(ValueError, match="zero element"):
            ss.chi2_contingency(table, correction=False)


def test_chi2_degenerate_tables() -> None:
    assert chi2_homogeneity(np.array([10, 0]), np.array([5, 0])) == (0.0, 0, 1.0)  # one category
    assert chi2_homogeneity(np.array([10, 3]), np.array([0, 0])) == (0.0, 0, 1.0)  # empty sample


# --- check.py hands scipy the right samples -------------------------------------------------------------
def test_check_window_statistics_are_scipy_on_the_reference_sample() -> None:
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.normal(10, 4, 5000), (rng.random(5000) < 0.1).astype(float)])
    profile = build_profile(X, ["x", "flag"], rng.random(2000), model_name="m", model_version="1", source="t")
    window = np.column_stack([rng.normal(11, 4, 2000), (rng.random(2000) < 0.13).astype(float)])
    window[:7, 0] = np.nan  # missing values: 1993 finite, not 2000
    scores = rng.random(1990) ** 1.2
    got = {(s.kind, s.feature, s.statistic): s for s in check_window(profile, window, scores)}
    x_ref, x_cur = profile.feature("x").sample_array, window[7:, 0]
    ks = ss.ks_2samp(x_ref, x_cur, method="asymp")
    assert (got["feature", "x", "ks"].value, got["feature", "x", "ks"].p_value) == (ks.statistic, ks.pvalue)
    w1 = ss.wasserstein_distance(x_ref, x_cur) / profile.feature("x").std  # in reference standard deviations
    assert got["feature", "x", "wasserstein"].value == pytest.approx(w1, rel=1e-15)
    ks = ss.ks_2samp(profile.prediction.sample_array, scores, method="asymp")
    assert (got["prediction", "score", "ks"].value, got["prediction", "score", "ks"].p_value) == (ks.statistic,
                                                                                                  ks.pvalue)
    flag = profile.feature("flag")
    ref_counts = np.array(flag.counts + [0])  # + the never-seen bin, empty here: dropped before scipy
    cur_counts = np.array([int((window[:, 1] == 0).sum()), int((window[:, 1] == 1).sum())])
    chi2 = ss.chi2_contingency(np.array([ref_counts[:2], cur_counts]), correction=False)
    assert (got["feature", "flag", "chi2"].value, got["feature", "flag", "chi2"].p_value) == (chi2.statistic,
                                                                                              chi2.pvalue)
    assert got["feature", "x", "ks"].status == "alert"  # a 0.25 sigma shift at 2000 events: D ~ 0.1


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
