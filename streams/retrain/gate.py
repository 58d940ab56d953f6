"""The promotion gate: champion vs challenger on the same labelled events, paired bootstrap on log loss.

Both models score every event while the challenger is in shadow (the champion's prediction on the prediction
topic, the challenger's on the shadow topic). Once ``min_samples`` events carry a label and both scores, the
gate looks at exactly the first ``min_samples`` of them (in label order) and decides once:

* ``d_i = logloss(champion_i) - logloss(challenger_i)``: the challenger's improvement on event i (> 0 = better);
* the improvement is ``mean(d)``; ``resamples`` bootstrap means of ``d`` (indices drawn with replacement,
  ``numpy.random.default_rng(seed)``) estimate its sampling distribution; ``p = share of means <= 0``;
* **pass** when ``mean(d) >= min_improvement`` and ``p <= alpha``; otherwise **fail**, with the reason.

A fixed sample, decided once: looking again after every label and stopping at the first pass would inflate the
false-promotion rate (optional stopping). ``simulate`` measures that rate with no real improvement
(docs/closed_loop.md).

>>> rng = np.random.default_rng(0)
>>> y = rng.random(400) < 0.3
>>> good, bad = np.where(y, 0.8, 0.2), np.full(400, 0.3)
>>> cfg = GateConfig(min_samples=300, min_improvement=0.01, alpha=0.05, resamples=1000, seed=1)
>>> r = evaluate(bad, good, y, cfg)
>>> r.passed, r.n, r.improvement > 0.1
(True, 300, True)
>>> evaluate(good, bad, y, cfg).passed
False
>>> evaluate(bad[:10], good[:10], y[:10], cfg).decided
False
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["GateConfig", "GateResult", "evaluate", "log_losses", "simulate"]

EPS = 1e-15  # as sklearn.metrics.log_loss: a score of exactly 0 or 1 costs ~34.5, not infinity


@dataclass(frozen=True)
class GateConfig:
    min_samples: int = 300
    min_improvement: float = 0.005
    alpha: float = 0.05
    resamples: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class GateResult:
    decided: bool  # False: fewer than min_samples paired labelled events so far
    passed: bool
    n: int
    champion_log_loss: float
    challenger_log_loss: float
    improvement: float  # mean(d): log loss the challenger saves per event
    ci_low: float  # alpha-quantile of the bootstrap means
    ci_high: float  # (1 - alpha)-quantile
    p_value: float  # share of bootstrap means <= 0
    reason: str

    def as_dict(self) -> dict[str, float | int | bool | str]:
        return asdict(self)


def log_losses(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-event binary log loss of P(positive) ``scores`` against 0/1 outcomes ``y``."""
    s = np.clip(np.asarray(scores, np.float64), EPS, 1 - EPS)
    y = np.asarray(y, np.float64)
    return -(y * np.log(s) + (1 - y) * np.log(1 - s))


def evaluate(champion: np.ndarray, challenger: np.ndarray, y: np.ndarray, cfg: GateConfig) -> GateResult:
    """The gate on paired scores (same events, same order); only the first ``cfg.min_samples`` are used."""
    n_avail = len(y)
    if n_avail < cfg.min_samples:
        return GateResult(False, False, n_avail, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"),
                          float("nan"), f"waiting: {n_avail} of {cfg.min_samples} paired labelled events")
    n = cfg.min_samples
    lc, lk = log_losses(champion[:n], y[:n]), log_losses(challenger[:n], y[:n])
    d = lc - lk
    rng = np.random.default_rng(cfg.seed)
    means = d[rng.integers(0, n, size=(cfg.resamples, n))].mean(axis=1)
    improvement = float(d.mean())
    p = float((means <= 0).mean())
    lo, hi = (float(q) for q in np.quantile(means, [cfg.alpha, 1 - cfg.alpha]))
    if improvement < cfg.min_improvement:
        passed, reason = False, (f"improvement {improvement:+.4f} log loss per event < minimum {cfg.min_improvement} "
                                 f"(champion {lc.mean():.4f}, challenger {lk.mean():.4f}, n={n})")
    elif p > cfg.alpha:
        passed, reason = False, (f"improvement {improvement:+.4f} is not significant: bootstrap p={p:.3f} > "
                                 f"alpha {cfg.alpha} (n={n})")
    else:
        passed, reason = True, (f"improvement {improvement:+.4f} log loss per event >= {cfg.min_improvement}, "
                                f"bootstrap p={p:.3f} <= {cfg.alpha}, {1 - 2 * cfg.alpha:.0%} interval "
                                f"[{lo:+.4f}, {hi:+.4f}] (champion {lc.mean():.4f}, challenger {lk.mean():.4f}, n={n})")
    return GateResult(True, passed, n, float(lc.mean()), float(lk.mean()), improvement, lo, hi, p, reason)


def simulate(cfg: GateConfig, runs: int, *, noise: float = 0.6, challenger_noise: float | None = None,
             first_seed: int = 0) -> list[GateResult]:
    """Gate decisions over ``runs`` seeded worlds of ``cfg.min_samples`` demo transactions.

    Outcomes are drawn from the demo's true risk (``models.demo.risk_probability``); each model's score is that
    probability with Gaussian noise of sd ``noise`` (champion) / ``challenger_noise`` (challenger; default the
    same: no real improvement) added on the logit, drawn independently. Each run uses a new bootstrap seed too.
    """
    from models.demo import risk_probability, sample_features  # numpy only; kept out of the service's import path

    challenger_noise = noise if challenger_noise is None else challenger_noise
    out = []
    for seed in range(first_seed, first_seed + runs):
        rng = np.random.default_rng([seed, 7])
        X = sample_features(rng, cfg.min_samples)
        p = risk_probability(X)
        y = rng.random(len(p)) < p
        logit = np.log(np.clip(p, EPS, 1 - EPS) / np.clip(1 - p, EPS, 1))
        champion, challenger = (1 / (1 + np.exp(-(logit + rng.normal(0, sd, len(p)))))
                                for sd in (noise, challenger_noise))
        out.append(evaluate(champion, challenger, y, GateConfig(**{**asdict(cfg), "seed": seed})))
    return out
