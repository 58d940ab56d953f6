"""The promotion gate (streams.retrain.gate) and the loop's state (streams.retrain.lifecycle), without a broker.

False-promotion rate: seeded worlds where champion and challenger are equally good (same noise on the true
logit, drawn independently); the measured rate is the figure in docs/closed_loop.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from streams.cli.retrain import retrain_app
from streams.retrain.gate import GateConfig, evaluate, log_losses, simulate
from streams.retrain.lifecycle import LifecycleEvent, LoopState, decode, encode

CFG = GateConfig()  # the defaults of the settings: 300 samples, +0.005 minimum, alpha 0.05, 2000 resamples
RUNS = 400


def test_log_loss_matches_sklearn() -> None:
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(0)
    y, s = rng.random(500) < 0.3, rng.random(500)
    assert log_losses(s, y).mean() == pytest.approx(log_loss(y, s), rel=1e-12)


def test_false_promotion_rate_with_no_real_improvement_is_bounded() -> None:
    results = simulate(CFG, RUNS)
    promoted = sum(r.passed for r in results)
    assert all(r.decided and r.n == CFG.min_samples for r in results)
    # measured: 15 of 400 (3.75 %); over 1000 seeds 59 (5.9 %): docs/closed_loop.md. Bound: alpha + 3 binomial sd
    assert promoted == 15, promoted
    assert promoted / RUNS <= CFG.alpha + 3 * np.sqrt(CFG.alpha * (1 - CFG.alpha) / RUNS)


def test_a_larger_sample_lowers_the_false_promotion_rate() -> None:
    promoted = sum(r.passed for r in simulate(GateConfig(min_samples=1000), 200))
    assert promoted == 6, promoted  # 3 % (the bootstrap percentile interval is slightly liberal at n=300)


def test_a_real_improvement_is_promoted_and_a_worse_model_never() -> None:
    better = simulate(CFG, 100, noise=1.5, challenger_noise=0.5)
    worse = simulate(CFG, 100, noise=0.5, challenger_noise=1.5)
    assert sum(r.passed for r in better) == 87, sum(r.passed for r in better)  # the power in this world
    assert sum(r.passed for r in worse) == 0
    assert np.mean([r.improvement for r in worse]) < 0


def test_minimum_sample_size_waits_and_decides_on_the_first_min_samples_only() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(1000) < 0.2
    good, bad = np.where(y, 0.7, 0.1), np.full(1000, 0.2)
    waiting = evaluate(bad[:299], good[:299], y[:299], CFG)
    assert not waiting.decided and not waiting.passed and waiting.n == 299 and "299 of 300" in waiting.reason
    first = evaluate(bad[:300], good[:300], y[:300], CFG)
    # events after the first 300 change nothing: a fixed sample, decided once (no optional stopping)
    later = evaluate(np.r_[bad[:300], good[300:]], np.r_[good[:300], bad[300:]], y, CFG)
    assert first.decided and first.passed and first == later


def test_minimum_improvement_is_required_even_when_significant() -> None:
    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.3
    champion = np.where(y, 0.6, 0.4)
    challenger = np.where(y, 0.601, 0.399)  # better on every event, by ~0.002 log loss
    r = evaluate(champion, challenger, y, CFG)
    assert r.decided and not r.passed and r.p_value == 0.0 and "< minimum 0.005" in r.reason


def test_the_gate_is_seeded() -> None:
    rng = np.random.default_rng(8)
    y = rng.random(300) < 0.3
    a, b = rng.random(300), rng.random(300)
    assert evaluate(a, b, y, CFG) == evaluate(a, b, y, CFG)
    assert evaluate(a, b, y, CFG).p_value != evaluate(a, b, y, GateConfig(seed=1)).p_value


def event(stage: str, version: str | None = "2", request: str | None = "r1", at: int = 0) -> LifecycleEvent:
    return LifecycleEvent(stage=stage, model_name="m", model_version=version, request_id=request, at_ms=at, by="t")


def test_loop_state_in_flight_handled_approvals_and_cooldown() -> None:
    st = LoopState()
    st.apply(event("request_received", None))
    assert "r1" not in st.handled  # a crash here: the redelivered request is taken again
    st.apply(event("dataset_built", None, at=10))
    st.apply(event("candidate_trained"))
    st.apply(event("shadow_started"))
    assert st.in_flight["m"].stage == "shadow_started" and "r1" in st.handled and st.last_attempt["m"] == ("r1", 10)
    st.apply(event("awaiting_approval"))
    assert ("m", "2") not in st.approved
    st.apply(event("approved", request=None))
    assert ("m", "2") in st.approved and "m" in st.in_flight
    st.apply(event("promoted", version="3"))  # another version's outcome does not end this candidate
    assert "m" in st.in_flight
    st.apply(event("promoted"))
    assert "m" not in st.in_flight


def test_lifecycle_events_round_trip_and_refuse_unknown_stages() -> None:
    e = event("gate_result").model_copy(update={"detail": {"n": 300, "passed": True, "p_value": 0.01}})
    assert decode(encode(e)) == e
    with pytest.raises(ValueError):
        decode(encode(e).replace(b"gate_result", b"gate_guess"))


def test_approve_refuses_a_bad_name_in_one_line() -> None:
    out = CliRunner().invoke(retrain_app, ["approve", "demo risk", "2"])
    assert out.exit_code == 2 and out.output.count("\n") == 1 and "model name 'demo risk'" in out.output
