"""Unit tests of the streams package: settings, pipeline core, metrics, broker lifecycle, CLI."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from typer.testing import CliRunner

from models.demo import FEATURE_NAMES, sample_events
from models.onnx_scorer import OnnxScorer
from schemas.codecs import decode_dead_letter, encode_feature_event
from schemas.records import FeatureEvent
from streams.cli.main import app as cli_app
from streams.cli.produce import bad_avro_payloads, bad_payloads, encode_events
from streams.kafka.broker import EmbeddedBroker
from streams.metrics import observe_many
from streams.scoring.pipeline import InboundMessage, ScoringPipeline
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


# --- settings ----------------------------------------------------------------------------------
def test_settings_env_overrides_point_the_same_code_at_kafka(monkeypatch):
    monkeypatch.setenv("STREAMSCORE_BROKER", "kafka://k0:9092,k1:9093")
    monkeypatch.setenv("STREAMSCORE_INPUT_TOPICS", '{"events": "auto"}')
    monkeypatch.setenv("STREAMSCORE_BATCH_SIZE", "64")
    s = Settings()
    assert not s.is_embedded
    assert s.bootstrap_servers == "k0:9092,k1:9093"
    assert s.faust_broker_url == "kafka://k0:9092;kafka://k1:9093"
    assert s.input_topics == {"events": "auto"} and s.batch_size == 64
    assert s.fetch_wait_ms == 500  # Kafka answers fetches early; only Tansu needs the short wait
    assert Settings(broker="embedded").fetch_wait_ms == 10


def test_settings_reject_an_unknown_broker_scheme():
    with pytest.raises(ValueError, match="kafka://"):
        Settings(broker="http://localhost:9092")


def test_settings_survive_the_trip_to_a_child_process_environment(monkeypatch):
    original = Settings(input_topics={"a": "json", "b": "avro"}, batch_size=17, engine="batch", web_port=7000)
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


# --- metrics -----------------------------------------------------------------------------------
def test_observe_many_matches_one_observe_per_value():
    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    one = Histogram("one", "", buckets=buckets, registry=registry)
    many = Histogram("many", "", buckets=buckets, registry=registry)
    values = np.random.default_rng(3).exponential(0.05, 5000)
    values[:3] = [0.001, 0.01, 5.0]  # exactly on a bound, and above the last finite bound
    for v in values:
        one.observe(float(v))
    observe_many(many, values)

    for bound in [*map(str, buckets), "+Inf"]:
        want = registry.get_sample_value("one_bucket", {"le": bound})
        assert registry.get_sample_value("many_bucket", {"le": bound}) == want
    assert registry.get_sample_value("many_count") == registry.get_sample_value("one_count") == len(values)
    assert registry.get_sample_value("many_sum") == pytest.approx(registry.get_sample_value("one_sum"))


# --- pipeline ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline(model_dir) -> ScoringPipeline:
    settings = Settings(model_dir=model_dir, input_topics={"in": "json", "in-avro": "avro"}, worker_id="unit")
    return ScoringPipeline(settings.scoring, OnnxScorer.from_dir(model_dir))


def messages(topic: str, payloads) -> list[InboundMessage]:
    return [InboundMessage(topic, 0, i, key, value) for i, (key, value) in enumerate(payloads)]


def test_pipeline_scores_good_events_like_the_scorer(pipeline):
    events = sample_events(5, 300)
    result = pipeline.process(messages("in", encode_events(events)))
    assert result.scored == 300 and result.dead_lettered == 0
    X = np.array([[e["features"][f] for f in FEATURE_NAMES] for e in events], dtype=np.float32)
    expected = pipeline.scorer.predict_many(X).scores
    for out, event, score in zip(result.outputs, events, expected, strict=True):
        body = orjson.loads(out.value)
        assert out.topic == "predictions" and out.key == event["event_id"].encode()
        assert body["event_id"] == event["event_id"] and body["score"] == float(score)
        assert body["worker"] == "unit" and body["source_topic"] == "in"
        assert dict(out.headers)["model_version"] == pipeline.scorer.version.encode()


def test_pipeline_counts_and_scores_a_batch_from_two_topics_by_topic(pipeline):
    """One batch, two input topics (JSON and Avro): each input is decoded in its topic's format, counted under its
    topic, and its prediction names it (a one-topic batch takes a shortcut for both, pipeline.process)."""
    events = sample_events(8, 6)
    json_in = messages("in", encode_events(events[:4]))
    avro_in = [InboundMessage("in-avro", 1, i, e["event_id"].encode(), encode_feature_event(FeatureEvent(**e), "avro"))
               for i, e in enumerate(events[4:])]
    batch = [json_in[0], avro_in[0], json_in[1], json_in[2], avro_in[1], json_in[3]]

    def counted(topic: str) -> float:
        return REGISTRY.get_sample_value("streamscore_events_in_total", {"topic": topic}) or 0.0

    before = counted("in"), counted("in-avro")
    result = pipeline.process(batch)
    assert (counted("in") - before[0], counted("in-avro") - before[1]) == (4, 2)
    assert result.scored == 6 and result.dead_lettered == 0
    assert [orjson.loads(o.value)["source_topic"] for o in result.outputs] == [m.topic for m in batch]
    alone = [orjson.loads(pipeline.process([m]).outputs[0].value)["score"] for m in batch]
    assert [orjson.loads(o.value)["score"] for o in result.outputs] == alone


def test_pipeline_dead_letters_each_kind_of_bad_input_with_reason_and_bytes(pipeline):
    cases = [("in", c) for c in bad_payloads(FEATURE_NAMES, "u")] + \
            [("in-avro", c) for c in bad_avro_payloads(FEATURE_NAMES, "u")]
    for topic, (code, (key, value)) in cases:
        result = pipeline.process([InboundMessage(topic, 2, 41, key, value)])
        assert result.scored == 0 and len(result.outputs) == 1, code
        out = result.outputs[0]
        letter = decode_dead_letter(out.value)
        assert out.topic == "dead-letter" and out.key == key
        assert letter.reason_code == code, (code, letter.reason)
        # A letter keeps a bounded prefix of the original (16 KiB), with the whole value's size and sha256.
        kept = value[:16384]
        assert letter.original_value == kept and letter.original_key == key
        assert letter.original_size == len(value) and letter.original_truncated == (len(value) > 16384)
        assert (letter.source_topic, letter.source_partition, letter.source_offset) == (topic, 2, 41)
        assert dict(out.headers)["reason_code"] == code.encode()
        assert base64.b64encode(kept).decode() in out.value.decode()


def test_pipeline_keeps_trace_context_headers(pipeline):
    (key, value), = encode_events(sample_events(6, 1))
    parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    msg = InboundMessage("in", 0, 0, key, value, headers=[("traceparent", parent), ("noise", b"x")])
    headers = dict(pipeline.process([msg]).outputs[0].headers)
    # The prediction is a child span of the input's (streams/scoring/tracing.py): same trace, new span id.
    assert headers["traceparent"][:36] == parent[:36] and headers["traceparent"][36:52] != parent[36:52]
    assert "noise" not in headers


# --- broker ------------------------------------------------------------------------------------
def test_embedded_broker_up_status_down(tmp_path):
    from tests.conftest import free_port

    broker = EmbeddedBroker(Settings(embedded_port=free_port(), state_dir=tmp_path))
    assert not broker.status().running
    status = broker.up()
    try:
        assert status.running and status.pid
        assert broker.up().pid == status.pid  # idempotent
    finally:
        assert broker.down()
    assert not broker.status().running
    assert not broker.down()


# --- CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["broker"], ["produce"], ["worker"], ["tail"], ["demo"], ["bench"],
                                     ["train-demo"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli_app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 3


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
