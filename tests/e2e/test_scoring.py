"""End to end over the embedded broker: real producer -> real worker process -> output topics.

Each test runs once per engine (Faust agent and batch engine).
"""

from __future__ import annotations

import base64
import collections
import signal
import threading

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from models.demo import FEATURE_NAMES, sample_events
from schemas.validation import input_hash
from streams.cli.produce import bad_avro_payloads, bad_payloads, encode_events, produce
from streams.kafka.reader import read_all, wait_for

pytestmark = pytest.mark.e2e


def predictions_by_id(settings, wanted: set[str], timeout: float = 90) -> tuple[dict[str, list[dict]], list]:
    def covered(messages) -> bool:
        return wanted <= {orjson.loads(m.value())["event_id"] for m in messages}

    messages = wait_for(settings, settings.prediction_topic, covered, timeout)
    by_id: dict[str, list[dict]] = collections.defaultdict(list)
    for m in messages:
        by_id[orjson.loads(m.value())["event_id"]].append(orjson.loads(m.value()))
    return by_id, messages


def direct_scores(model_dir, events: list[dict]) -> dict[str, float]:
    """Positive-class probability from a bare onnxruntime session, the reference for the worker."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as in the worker: tree sums are added in the same order
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    X = np.array([[e["features"][f] for f in FEATURE_NAMES] for e in events], dtype=np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: X})
    probabilities = next(o for o in outputs if o.ndim == 2)
    return {e["event_id"]: float(p) for e, p in zip(events, probabilities[:, 1], strict=True)}


def test_every_event_gets_the_direct_onnx_score(flow):
    s = flow.settings
    json_events, avro_events = sample_events(11, 400), sample_events(12, 100)
    produce(s, flow.json_topic, encode_events(json_events, "json"))
    produce(s, flow.avro_topic, encode_events(avro_events, "avro"))
    flow.start_worker()
    events = json_events + avro_events
    by_id, messages = predictions_by_id(s, {e["event_id"] for e in events})

    assert set(by_id) == {e["event_id"] for e in events}  # nothing extra, nothing missing
    expected = direct_scores(s.model_dir, events)
    card = orjson.loads((s.model_dir / "model_card.json").read_bytes())
    for event in events:
        pred = by_id[event["event_id"]][0]
        assert pred["score"] == expected[event["event_id"]]  # bit for bit
        assert pred["model_sha256"] == card["onnx_sha256"]
        assert pred["model_name"] == card["name"] and pred["model_version"] == card["version"]
        row = np.array([event["features"][f] for f in FEATURE_NAMES], dtype=np.float32)
        assert pred["input_hash"] == input_hash(row.tobytes())
        assert pred["entity_id"] == event["entity_id"] and pred["event_time"] == event["event_time"]
    for m in messages:  # keyed like the input, version in the headers
        assert m.key().decode() == orjson.loads(m.value())["event_id"]
        assert dict(m.headers())["model_version"] == card["version"].encode()
    assert not read_all(s, s.dead_letter_topic)


def test_bad_input_is_dead_lettered_and_good_input_still_scored(flow):
    s = flow.settings
    good = sample_events(21, 200)
    bad, bad_avro = bad_payloads(FEATURE_NAMES), bad_avro_payloads(FEATURE_NAMES)
    payloads = list(encode_events(good[:100])) + [p for _, p in bad] + list(encode_events(good[100:]))
    produce(s, flow.json_topic, payloads)
    produce(s, flow.avro_topic, [p for _, p in bad_avro])
    flow.start_worker()
    topic_of = {key: flow.json_topic for _, (key, _) in bad} | {key: flow.avro_topic for _, (key, _) in bad_avro}
    bad += bad_avro

    bad_keys = {key for _, (key, _) in bad}
    letters = wait_for(s, s.dead_letter_topic, lambda ms: bad_keys <= {m.key() for m in ms}, timeout=90)
    by_key = {m.key(): orjson.loads(m.value()) for m in letters}
    for expected_code, (key, original) in bad:
        letter = by_key[key]
        assert letter["reason_code"] == expected_code, letter
        assert letter["reason"] and len(letter["reason"]) > 10
        # the exact bytes, for replay; a letter keeps at most 16 KiB of them, with the whole value's size
        assert base64.b64decode(letter["original_value"]) == original[:16384]
        assert letter["original_size"] == len(original)
        assert letter["source_topic"] == topic_of[key] and letter["source_offset"] >= 0
    by_id, _ = predictions_by_id(s, {e["event_id"] for e in good})
    assert {e["event_id"] for e in good} <= set(by_id)
    assert not any(k.decode() in by_id for k in bad_keys)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_restart_mid_stream_loses_nothing(flow, sig):
    s = flow.settings
    events = sample_events(31, 30_000)
    worker = flow.start_worker()
    # a steady stream (~4 s long); the worker is stopped while it flows, then a fresh one takes over
    producer = threading.Thread(target=produce, args=(s, flow.json_topic, list(encode_events(events))),
                                kwargs={"rate": 8000})
    producer.start()
    wait_for(s, s.prediction_topic, lambda ms: len(ms) >= 3000, timeout=90)
    worker.send_signal(sig)
    worker.wait(60)
    scored_before = len(read_all(s, s.prediction_topic))
    assert scored_before < len(events), "the worker finished before it was stopped; the test proves nothing"
    flow.start_worker()
    producer.join()
    wanted = {e["event_id"] for e in events}
    by_id, messages = predictions_by_id(s, wanted, timeout=180)

    assert set(by_id) == wanted
    duplicates = len(messages) - len(by_id)
    print(f"{sig.name}: {scored_before} scored before the stop, {duplicates} duplicate predictions after restart")
    # every duplicate is an exact re-score of the same input by the same model
    for preds in by_id.values():
        assert len({(p["score"], p["input_hash"], p["model_sha256"]) for p in preds}) == 1
