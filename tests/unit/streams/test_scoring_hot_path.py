"""The scoring hot path without a broker: batch codecs in the pipeline, bounded dead letters, per-record outcomes."""

from __future__ import annotations

import socket

import numpy as np
import orjson
import pytest

from models.scorer import ScoreBatch
from schemas.codecs import decode_dead_letter, prediction_to_json_bytes
from schemas.validation import input_hash
from streams.kafka.publisher import MAX_MESSAGE_BYTES, Outbound, Publisher
from streams.scoring.pipeline import ScoringPipeline
from streams.scoring.records import InboundMessage, RecordBuilder
from streams.settings import Settings

FEATURES = ["amount", "age"]


class Model:
    """A deterministic scorer: score = sigmoid(amount - age) (float32 in, like OnnxScorer)."""

    name, version, sha256, classes, feature_names = "m", "7", "ab" * 32, ["legit", "risky"], FEATURES

    def predict_many(self, X: np.ndarray) -> ScoreBatch:
        assert X.dtype == np.float32
        p = 1 / (1 + np.exp(-(X[:, 0].astype(np.float64) - X[:, 1])))
        return ScoreBatch(p, np.where(p > 0.5, "risky", "legit").astype(object), np.column_stack([1 - p, p]))


@pytest.fixture
def pipeline() -> ScoringPipeline:
    settings = Settings(input_topics={"in": "json"}, worker_id="unit")
    return ScoringPipeline(settings.scoring, Model())  # type: ignore[arg-type]


def event(i: int, **features: float) -> bytes:
    return orjson.dumps({"event_id": f"e-{i}", "entity_id": f"u-{i % 3}", "event_time": 1000 + i, "schema_version": 1,
                         "features": {"amount": float(i), "age": 2.5, **features}})


def test_predictions_are_byte_identical_to_the_per_record_builder(pipeline):
    messages = [InboundMessage("in", 1, 100 + i, f"e-{i}".encode(), event(i)) for i in range(50)]
    result = pipeline.process(messages, received_ms=1_000)
    assert result.scored == 50 and result.dead_lettered == 0
    model = Model()
    for i, out in enumerate(result.outputs):
        body = orjson.loads(out.value)
        x = np.asarray([float(i), 2.5], dtype="<f4")
        batch = model.predict_many(x.reshape(1, 2))
        expected = prediction_to_json_bytes({
            "event_id": f"e-{i}", "entity_id": f"u-{i % 3}", "event_time": 1000 + i, "model_name": "m",
            "model_version": "7", "model_sha256": "ab" * 32, "score": float(batch.scores[0]),
            "label": str(batch.labels[0]), "probabilities": dict(zip(model.classes, batch.probabilities[0].tolist(),
                                                                    strict=True)),
            "input_hash": input_hash(x.tobytes()), "scored_at": body["scored_at"], "latency_ms": body["latency_ms"],
            "route": "single", "worker": "unit", "source_topic": "in", "source_partition": 1,
            "source_offset": 100 + i, "schema_version": 1})
        assert out.value == expected
        assert out.key == f"e-{i}".encode() and out.source is messages[i]
        assert [k for k, _ in out.headers] == ["event_id", "model_version", "route"]


def test_float32_overflow_is_out_of_range_and_good_rows_still_score(pipeline):
    messages = [InboundMessage("in", 0, i, None, event(i)) for i in range(3)]
    messages.insert(1, InboundMessage("in", 0, 9, b"big", event(9, age=1e39)))
    result = pipeline.process(messages)
    assert result.scored == 3 and result.dead_lettered == 1
    [letter] = [decode_dead_letter(o.value) for o in result.outputs if o.topic == "dead-letter"]
    assert letter.reason_code == "out_of_range" and letter.source_offset == 9 and "float32" in letter.reason
    assert sorted(orjson.loads(o.value)["event_id"] for o in result.outputs if o.topic != "dead-letter") == \
        ["e-0", "e-1", "e-2"]


def test_dead_letters_fit_the_producer_limit_whatever_the_input():
    builder = RecordBuilder("w", "dead-letter")
    from schemas.codecs import InvalidEvent

    huge = InboundMessage("in", 0, 5, b"k" * 1_500_000, b"v" * 990_000, headers=[("traceparent", b"00-ab")])
    out = builder.dead_letter(huge, InvalidEvent("oversized", "too big"))
    size = len(out.value) + len(out.key or b"") + sum(len(k) + len(v) for k, v in out.headers or ())
    assert size < MAX_MESSAGE_BYTES
    letter = decode_dead_letter(out.value)
    assert letter.original_size == 990_000 and letter.original_truncated and len(out.key) == 16384


def test_output_rejected_letter_names_the_broker_error_and_the_input(pipeline):
    [msg] = [InboundMessage("in", 2, 41, b"key", event(1))]
    [out] = pipeline.process([msg]).outputs
    letter_out = pipeline.records.output_rejected(out, "Broker: Message size too large")
    letter = decode_dead_letter(letter_out.value)
    assert letter.reason_code == "output_rejected" and "Message size too large" in letter.reason
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("in", 2, 41)
    assert letter.event_id == "e-1" and letter.original_value == event(1) and letter_out.key == b"key"


def test_non_finite_scores_are_left_out_when_asked():
    builder = RecordBuilder("w", "dead-letter")
    msgs = [(InboundMessage("in", 0, i, None, b"{}"), type("E", (), {"event_id": f"e{i}", "entity_id": "u",
                                                                     "event_time": 1, "schema_version": 1}))
            for i in range(3)]
    p = np.array([0.2, np.nan, 0.7])
    batch = ScoreBatch(p, np.array(["legit", "legit", "risky"], dtype=object), np.column_stack([1 - p, p]))
    dropped: list[int] = []
    outs = builder.predictions(msgs, np.zeros((3, 2), np.float32), batch, Model(), route="online", topic="t",
                               received_ms=1, on_unencodable=lambda m: dropped.append(m.offset))
    assert dropped == [1] and [orjson.loads(o.value)["event_id"] for o in outs] == ["e0", "e2"]
    with pytest.raises(ValueError, match="non-finite"):
        builder.predictions(msgs, np.zeros((3, 2), np.float32), batch, Model(), route="r", topic="t", received_ms=1)


def test_publisher_hands_back_a_record_the_producer_refuses_for_good():
    with socket.socket() as sock:  # nothing listens there: the refusal is local, before any broker
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    publisher = Publisher(Settings(embedded_port=port).kafka)
    too_big = Outbound("t", b"k", b"x" * (MAX_MESSAGE_BYTES + 1))
    delivery = publisher.send_batch([too_big])
    assert delivery.done.wait(5)
    [(out, err)] = delivery.rejected
    assert out is too_big and "MSG_SIZE_TOO_LARGE" in str(err)
    assert delivery.pending == 0 and delivery.retries == 0
    publisher._stop.set()
