"""Synthetic "transaction risk" data: features, a hidden labelling rule and feature events.

Everything is driven by an explicit seed so that training, tests and demos are reproducible.
``sample_events(seed, n)`` draws its features exactly like ``make_dataset(seed, n)``, so a stream
produced from a seed can be checked row for row against the matching dataset.

>>> X, y = make_dataset(seed=1, n=1000)
>>> X.shape, X.dtype, y.dtype
((1000, 8), dtype('float64'), dtype('int64'))
>>> bool(0.10 < y.mean() < 0.20)
True
>>> events = sample_events(seed=1, n=2, start_ms=1_700_000_000_000)
>>> events[0]["event_id"], events[0]["schema_version"], list(events[0]["features"]) == list(FEATURE_NAMES)
('evt-1-0', 1, True)
>>> events[0]["features"]["amount"] == float(X[0, 0])
True
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "amount",  # transaction amount, currency units (cents precision)
    "hour_of_day",  # local hour 0..23
    "merchant_risk",  # 0..1 risk prior of the merchant
    "account_age_days",  # days since the account was opened
    "txn_count_24h",  # transactions by the account in the previous 24 h
    "distance_km",  # distance from the account's usual location
    "is_foreign",  # 1.0 when the merchant is abroad, else 0.0
    "device_score",  # 0..1 device trust score, higher = more trusted
)
N_FEATURES = len(FEATURE_NAMES)
# Index 1 is the positive class, matching sklearn's sorted integer labels (0, 1).
CLASS_NAMES: tuple[str, str] = ("legit", "risky")

# Hourly activity profile: quiet at night, peaks around lunch and early evening.
_HOUR_WEIGHTS = np.array([2, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 9, 10, 9, 8, 8, 9, 10, 10, 9, 8, 6, 4, 3], dtype=np.float64)
_HOUR_P = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
# Calibrated so that make_dataset() yields ~15 % positives at shift=0.
_INTERCEPT = -6.5


def sample_features(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Draw ``n`` transactions as a float64 array of shape (n, 8), columns in FEATURE_NAMES order.

    ``shift`` > 0 drifts the population towards larger amounts, riskier merchants, busier
    accounts and more foreign transactions (for drift demos); 0 is the training distribution.

    >>> X = sample_features(np.random.default_rng(0), 5)
    >>> X.shape
    (5, 8)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    amount = np.round(np.clip(rng.lognormal(3.6 + 0.4 * shift, 1.1, n), 0.5, 25_000.0), 2)
    hour = rng.choice(24, size=n, p=_HOUR_P).astype(np.float64)
    merchant_risk = rng.beta(2.0 + 1.5 * shift, 9.0, n)
    account_age = np.floor(np.clip(rng.gamma(1.4, 420.0, n), 0.0, 3650.0))
    txn_count = rng.poisson(2.5 + 1.5 * shift, n).astype(np.float64)
    is_foreign = (rng.random(n) < np.clip(0.06 + 0.06 * shift, 0.0, 1.0)).astype(np.float64)
    # Foreign transactions happen far away; domestic ones mostly near home.
    distance = np.round(rng.lognormal(1.4 + 3.2 * is_foreign, 1.0, n), 1)
    device_score = rng.beta(7.0, 2.0, n)
    return np.column_stack([amount, hour, merchant_risk, account_age, txn_count, distance, is_foreign, device_score])


def risk_probability(X: np.ndarray) -> np.ndarray:
    """The hidden ground-truth probability that each transaction is risky (nonlinear in X)."""
    amount, hour, merchant_risk, account_age, txn_count, distance, is_foreign, device = X.T
    night = (hour <= 4.0) | (hour >= 23.0)
    new_account = account_age < 45.0
    logit = (
        _INTERCEPT
        + 2.2 * np.maximum(np.log(amount) - 4.5, 0.0)  # only large amounts matter
        + 3.2 * night
        + 30.0 * merchant_risk**2  # convex: risky merchants are very risky
        + 3.5 * new_account
        + 1.1 * np.maximum(txn_count - 4.0, 0.0)  # bursts of activity
        + 0.9 * np.log1p(distance) * (1.0 - is_foreign)
        + 5.5 * is_foreign * (device < 0.6)  # foreign on an untrusted device
        + 7.5 * (0.75 - device)
        + 3.0 * night * new_account  # interaction
    )
    return 1.0 / (1.0 + np.exp(-logit))


def sample_labels(rng: np.random.Generator, X: np.ndarray) -> np.ndarray:
    """Bernoulli draws from ``risk_probability`` (the noise), as int64 0/1."""
    return (rng.random(X.shape[0]) < risk_probability(X)).astype(np.int64)


def make_dataset(seed: int, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(X, y)``: float64 features (n, 8) and int64 labels (n,), 1 = risky."""
    rng = np.random.default_rng(seed)
    X = sample_features(rng, n, shift)  # drawn first, so sample_events() sees the same rows
    return X, sample_labels(rng, X)


def sample_events(
    seed: int,
    n: int,
    start_ms: int | None = None,
    *,
    shift: float = 0.0,
    n_entities: int = 300,
    mean_gap_ms: float = 20.0,
) -> list[dict[str, Any]]:
    """Feature events as plain dicts, ready to serialise to the ``features`` topic.

    Features equal the rows of ``make_dataset(seed, n, shift)[0]``. Event times start at
    ``start_ms`` (epoch ms; now when None, so only then is the output time-dependent) and advance
    by exponential gaps. Entities are Zipf-skewed: a few accounts are much busier than the rest.

    >>> [e["event_time"] for e in sample_events(3, 3, start_ms=0)] == sorted(
    ...     e["event_time"] for e in sample_events(3, 3, start_ms=0))
    True
    """
    X = sample_features(np.random.default_rng(seed), n, shift)
    # A separate stream for metadata keeps the features identical to make_dataset().
    meta = np.random.default_rng([seed, 1])
    weights = 1.0 / np.arange(1, n_entities + 1) ** 0.8
    entities = meta.choice(n_entities, size=n, p=weights / weights.sum())
    gaps = np.floor(meta.exponential(mean_gap_ms, n)).astype(np.int64)
    start = int(time.time() * 1000) if start_ms is None else int(start_ms)
    times = start + np.cumsum(gaps) - gaps[0] if n else gaps  # first event at exactly start
    rows = X.tolist()  # one bulk conversion to Python floats
    return [
        {
            "event_id": f"evt-{seed}-{i}",
            "entity_id": f"acct-{int(entities[i])}",
            "event_time": int(times[i]),
            "schema_version": 1,
            "features": dict(zip(FEATURE_NAMES, rows[i], strict=True)),
        }
        for i in range(n)
    ]
