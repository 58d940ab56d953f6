"""The drift window fed by the scoring pipeline's decoded batches (ScoringPipeline.listeners), without a broker:
the same window as decoding each input again, no second decode, and a failing drift never fails scoring."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.demo import sample_events
from models.onnx_scorer import OnnxScorer
from streams.drift.sim import monitor_for
from streams.drift.window import SlidingWindow
from streams.scoring.pipeline import ScoringPipeline
from streams.scoring.records import InboundMessage
from streams.settings import Settings


@pytest.fixture(scope="module")
def settings(model_dir: Path) -> Settings:
    return Settings(model_dir=model_dir, input_topics={"features": "json"}, drift_max_events_per_s=1_000_000)


def inputs(n: int, seed: int = 5) -> list[InboundMessage]:
    """Demo events with one of each kind drift must see: a missing feature, an extra one, a float32 overflow,
    and one that is not JSON."""
    values = [orjson.dumps(e) for e in sample_events(seed, n)]
    missing = orjson.loads(values[3])
    del missing["features"]["amount"]
    extra = orjson.loads(values[4])
    extra["features"]["unexpected"] = 1.0
    overflow = orjson.loads(values[5])
    overflow["features"]["amount"] = 1e39
    values[3], values[4], values[5], values[6] = (orjson.dumps(missing), orjson.dumps(extra), orjson.dumps(overflow),
                                                  b"not json")
    return [InboundMessage("features", i % 3, i, None, v, 1_700_000_000_000 + i) for i, v in enumerate(values)]


def test_window_from_scoring_batches_equals_decoding_each_input_again(settings: Settings) -> None:
    fed, reference = monitor_for(settings), monitor_for(settings)
    pipeline = ScoringPipeline(settings.scoring, OnnxScorer.from_dir(settings.model_dir))
    pipeline.listeners.append(fed.listener)
    messages = inputs(600)
    scored = sum(pipeline.process(messages[i:i + 256]).scored for i in range(0, len(messages), 256))
    for m in messages:  # the per-event reference decoder, as the lane decoded before
        reference.add(m.topic, m.partition, m.offset, m.value, m.timestamp_ms)
    a, b = fed.snapshot(), reference.snapshot()
    assert scored == 596 and fed.feed_errors == 0
    assert (a.n_events, a.n_invalid, a.start_ms, a.end_ms, a.offsets) == (b.n_events, b.n_invalid, b.start_ms,
                                                                          b.end_ms, b.offsets)
    assert a.n_events == 600 and a.n_invalid == 1  # only the non-JSON input has no features
    # the model's float32 input against float64: equal to float32 precision; NaN exactly where a feature is missing
    np.testing.assert_allclose(a.X, b.X, rtol=1e-7)
    amount = list(fed.names).index("amount")
    assert np.isnan(a.X).sum() == 1 and np.isnan(a.X[3, amount])
    assert a.X[5, amount] == 1e39  # scoring dead-letters it (float32 overflow); drift judges the value as sent


def test_the_rate_cap_samples_evenly_across_a_scored_batch(settings: Settings) -> None:
    monitor = monitor_for(settings.model_copy(update={"drift_max_events_per_s": 100}))
    pipeline = ScoringPipeline(settings.scoring, OnnxScorer.from_dir(settings.model_dir))
    pipeline.listeners.append(monitor.listener)
    monitor._refilled = time.monotonic()  # the first second's budget only (a ms refills 0.1 of a token)
    pipeline.process(inputs(300))
    snap = monitor.snapshot()
    assert (monitor.window.appended, monitor.sampled_out) == (100, 200)
    offsets = sorted(monitor.window._offset[:100].tolist())
    assert offsets[0] == 0 and offsets[-1] == 299 and max(np.diff(offsets)) <= 4  # spread, not the first 100
    assert snap.n_events == 100


def test_a_failing_drift_feed_never_fails_the_scoring_batch(settings: Settings) -> None:
    monitor = monitor_for(settings)
    pipeline = ScoringPipeline(settings.scoring, OnnxScorer.from_dir(settings.model_dir))
    pipeline.listeners.append(monitor.listener)
    monitor.window = None  # type: ignore[assignment]  # any bug in the feed
    result = pipeline.process(inputs(50))
    assert result.scored == 46 and len(result.outputs) == 50 and monitor.feed_errors == 1


def test_extend_writes_what_append_writes_across_the_ring_boundary() -> None:
    rng = np.random.default_rng(1)
    by_one, in_bulk = SlidingWindow(7, 2), SlidingWindow(7, 2)
    for start, n in ((0, 3), (3, 5), (8, 12)):  # wraps, then a batch larger than the window
        rows = rng.random((n, 2))
        valid = rng.random(n) > 0.3
        sources = [("features", (start + i) % 2) for i in range(n)]
        for i in range(n):
            by_one.append(*sources[i], start + i, 1000 + start + i, rows[i].tolist() if valid[i] else None)
        in_bulk.extend(sources, list(range(start, start + n)), [1000 + start + i for i in range(n)], rows, valid)
        a, b = by_one.snapshot(), in_bulk.snapshot()
        assert (a.n_events, a.n_invalid, a.start_ms, a.end_ms, a.offsets, a.appended) == (
            b.n_events, b.n_invalid, b.start_ms, b.end_ms, b.offsets, b.appended)
        np.testing.assert_array_equal(a.X, b.X)
