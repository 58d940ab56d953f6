"""schemas.hot_path agrees with the reference per-event codecs: same verdicts, same rows, same bytes."""

from __future__ import annotations

import doctest
import random
import types
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest

from schemas import bench, dead_letters, hot_path, strict
from schemas.codecs import InvalidEvent, decode_feature_event, encode_feature_event, prediction_to_json_bytes
from schemas.hot_path import Event, decode_rows, encode_predictions
from schemas.records import FeatureEvent
from schemas.validation import FeatureValidator, input_hash, input_hashes

NAMES = ["amount", "age", "risk"]


def event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"event_id": f"e{i}", "entity_id": f"u{i % 7}", "event_time": 1_700_000_000_000 + i,
                         "schema_version": 1, "features": {"amount": 12.5 + i, "age": 41.0, "risk": 0.125 * i}}
    d.update(overrides)
    return d


def reference(raw: bytes | None, fmt: str, validator: FeatureValidator, max_bytes: int = 65536) -> Any:
    try:
        ev = decode_feature_event(raw, fmt, max_bytes)  # type: ignore[arg-type]
        row = validator.row(ev)
    except InvalidEvent as e:
        return ("error", e.code, e.reason, e.event_id)
    with np.errstate(over="ignore"):
        return ("ok", np.asarray(row, dtype=np.float32).tobytes(), ev.event_id, ev.entity_id, ev.event_time,
                ev.schema_version, ev.features, ev.metadata)


def batch(values: list[bytes | None], formats: Any, validator: FeatureValidator, max_bytes: int = 65536) -> list:
    out = decode_rows(values, formats, validator, max_bytes)
    assert out.X.dtype == np.float32 and out.X.flags.c_contiguous
    assert out.X.shape == (len(out.index), len(validator.feature_names))
    assert out.index == sorted(out.index) and len(out.events) == len(out.index)
    verdicts: list[Any] = [None] * len(values)
    for j, i in enumerate(out.index):
        ev = out.events[j]
        verdicts[i] = ("ok", out.X[j].tobytes(), ev.event_id, ev.entity_id, ev.event_time, ev.schema_version,
                       msgspec.to_builtins(ev.features), ev.metadata)
    for i, e in out.errors:
        assert verdicts[i] is None, f"value {i} both scored and rejected"
        verdicts[i] = ("error", e.code, e.reason, e.event_id)
    assert None not in verdicts, "every value is either a row or an error"
    return verdicts


PAIRS = [b'"amount":1,', b'"event_id":"x",', b'"am\\u006fu\\u006et":2,',
         b' "risk" : 3 ,', b'"k":"a:b",', b'"t:":"\\u003a",']


def mutate(rng: random.Random, seed: bytes) -> bytes:
    b = bytearray(seed)
    if seed[:1] == b"{" and rng.random() < 0.3:  # a (possibly duplicate) key right after some '{'
        opens = [i for i, c in enumerate(b) if c == ord("{")]
        pos = rng.choice(opens) + 1
        b[pos:pos] = rng.choice(PAIRS)
        return bytes(b)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(b))
        op = rng.random()
        if op < 0.4:
            b[pos] = rng.randrange(256)
        elif op < 0.55:
            b[pos] = rng.choice(b':",{}\\ 0123456789.eE-')
        elif op < 0.75:
            del b[pos:pos + rng.randint(1, 6)]
        else:
            b[pos:pos] = rng.choice([rng.randbytes(rng.randint(1, 6)), b'"amount":1,', b"\\u003a", b" : ", b"e39"])
    return bytes(b)


SEEDS_JSON = [
    orjson.dumps(event(1)),
    orjson.dumps(event(2, metadata={"src": "web", "t": "12:30"})),
    orjson.dumps(event(3, metadata=None, entity_id='we"ird\\ \u00e9 \u2603')),
    orjson.dumps(event(4)).replace(b",", b" ,\n "),
]
SEEDS_AVRO = [encode_feature_event(FeatureEvent.model_validate(event(5, metadata={"k": "v"})), "avro"),
              encode_feature_event(FeatureEvent.model_validate(event(6)), "avro")]


@pytest.mark.parametrize("validator", [FeatureValidator(NAMES), FeatureValidator(["risk", "amount"], allow_extra=True)],
                         ids=["strict", "allow_extra"])
def test_batch_verdicts_equal_reference_on_mutated_payloads(validator: FeatureValidator) -> None:
    rng = random.Random(20240611)
    values: list[bytes | None] = []
    for _ in range(4000):
        values.append(mutate(rng, rng.choice(SEEDS_JSON + SEEDS_AVRO)))
    values += SEEDS_JSON + SEEDS_AVRO + [None, b"", b"\x00", b" ", b"{}", b"[]", b"null"]
    for i in range(0, len(values), 256):
        chunk = values[i:i + 256]
        want = [reference(v, "auto", validator) for v in chunk]
        out = decode_rows(chunk, "auto", validator)
        got: list[Any] = [None] * len(chunk)
        for j, pos in enumerate(out.index):
            ev = out.events[j]
            got[pos] = ("ok", out.X[j].tobytes(), ev.event_id, ev.entity_id, ev.event_time, ev.schema_version,
                        msgspec.to_builtins(ev.features), ev.metadata)
        for pos, e in out.errors:
            got[pos] = ("error", e.code, e.reason, e.event_id)
        for pos, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == w, f"value {chunk[pos]!r}"
    accepted = sum(1 for v in values if reference(v, "auto", validator)[0] == "ok")
    assert 50 < accepted < len(values) - 2000  # the corpus exercises both sides


def test_json_batches_that_all_decode_get_the_reference_verdicts() -> None:
    """Batches whose every value msgspec decodes take the whole-batch checks (schemas.hot_path._decode_json_batch):
    duplicate keys, ':' in strings and escapes, metadata, unknown schema versions must still be found per value."""
    v = FeatureValidator(NAMES)
    rng = random.Random(7)
    seeds = SEEDS_JSON + [orjson.dumps(event(8, schema_version=2)), orjson.dumps(event(9, entity_id="a:b:c"))]
    decodable = [m for m in (mutate(rng, rng.choice(seeds)) for _ in range(6000)) if _decodes(m)] + seeds
    plain = [orjson.dumps(event(i)) for i in range(40)]
    kinds = set()
    for size in (1, 7, 64):
        for i in range(0, len(decodable), size):
            chunk = decodable[i:i + size]
            want = [reference(x, "json", v) for x in chunk]
            kinds.update(w[0] if w[0] == "ok" else w[1] for w in want)
            assert batch(chunk, "json", v) == want
            mixed = plain[:size] + chunk[:1]  # one odd value among plain ones: the batch checks must catch it
            assert batch(mixed, "json", v) == [reference(x, "json", v) for x in mixed]
    assert {"ok", "duplicate_key", "unknown_schema_version"} <= kinds, kinds


def _decodes(raw: bytes) -> bool:
    try:
        msgspec.json.decode(raw, type=Event)
    except msgspec.DecodeError:
        return False
    return True


def test_feature_names_that_are_no_python_names_or_hold_a_colon_get_the_reference_verdicts() -> None:
    """A strict validator's features decode into a struct whose fields are renamed to the feature names
    (schemas.hot_path._codec): any name works, and a ':' in a name is a key's, not a duplicate's."""
    names = ["b-c", "class", "x:y", "naïve"]
    v = FeatureValidator(names)

    def ev(i: int, **features: float) -> bytes:
        return orjson.dumps(event(i, features={**dict.fromkeys(names, 1.5 + i), **features}))

    plain = [ev(i) for i in range(5)]
    odd = [ev(9).replace(b'"class":10.5', b'"class":10.5,"class":2'),  # duplicate key
           orjson.dumps(event(9, features=dict.fromkeys(names[:3], 1.0))),  # missing feature
           ev(9, extra=1.0), ev(9).replace(b'"b-c":10.5', b'"b-c":true'),
           ev(9).replace(b'"x:y"', rb'"x\u003ay"')]  # an escaped name: the reference decoder decides
    want = [reference(x, "json", v) for x in plain + odd]
    assert [w[0] if w[0] == "ok" else w[1] for w in want] == [
        "ok"] * 5 + ["duplicate_key", "missing_feature", "extra_feature", "wrong_type", "ok"]
    assert batch(plain + odd, "json", v) == want
    assert batch(plain, "json", v) == want[:5]  # all decodable: the whole-batch key count
    for x, w in zip(odd, want[5:], strict=True):
        assert batch([x], "json", v) == [w]


def test_batch_verdicts_for_per_value_formats_and_limits() -> None:
    v = FeatureValidator(NAMES)
    good_json, good_avro = SEEDS_JSON[0], SEEDS_AVRO[1]
    values = [good_json, good_avro, good_avro, good_json, b"x" * 300, None,
              orjson.dumps(event(9, schema_version=2)), orjson.dumps(event(9, features={"amount": 1.0}))]
    formats = ["json", "avro", "json", "avro", "auto", "auto", "json", "json"]
    want = [reference(x, f, v, 200) for x, f in zip(values, formats, strict=True)]
    assert [w[0] if w[0] == "ok" else w[1] for w in want] == [
        "ok", "ok", "not_json", "bad_avro", "oversized", "empty", "unknown_schema_version", "missing_feature"]
    got = []
    for x, f in zip(values, formats, strict=True):  # one value per call is also a batch
        got += batch([x], f, v, 200)
    assert got == want
    assert batch(values, formats, v, 200) == want
    with pytest.raises(ValueError, match="2 formats for 8 values"):
        decode_rows(values, ["json", "json"], v)  # type: ignore[list-item]


def test_batch_handles_empty_single_feature_and_metadata() -> None:
    empty = decode_rows([], "json", FeatureValidator(NAMES))
    assert empty.index == [] and empty.X.shape == (0, 3) and empty.errors == []
    one = FeatureValidator(["age"])
    out = decode_rows([orjson.dumps(event(1, features={"age": 3}))], "json", one)
    assert out.X.tolist() == [[3.0]] and out.events[0].metadata is None
    raw = orjson.dumps(event(1, metadata={"a": "b"}))
    out = decode_rows([raw], "json", FeatureValidator(NAMES))
    assert out.events[0].metadata == {"a": "b"} and isinstance(out.events[0], Event)
    with pytest.raises(ValueError, match="at least one feature"):
        decode_rows([raw], "json", FeatureValidator([]))


def test_bad_rows_are_dropped_in_order_with_their_reasons() -> None:
    v = FeatureValidator(NAMES)
    values = [orjson.dumps(event(i, features={"amount": 1e39 if i % 3 == 1 else 1.0, "age": 2.0, "risk": 3.0}))
              for i in range(9)]
    out = decode_rows(values, "json", v)
    assert out.index == [0, 2, 3, 5, 6, 8] and [e.event_id for e in out.events] == [f"e{i}" for i in out.index]
    assert [(i, e.code, e.event_id) for i, e in out.errors] == [(1, "out_of_range", "e1"), (4, "out_of_range", "e4"),
                                                                (7, "out_of_range", "e7")]
    assert out.X.shape == (6, 3) and np.isfinite(out.X).all()


# --- encode_predictions -----------------------------------------------------------------------------------


def legacy_bytes(events: list[Any], topics: list[str], partitions: list[int], offsets: list[int], hashes: list[str],
                 scores: np.ndarray, labels: list[str], probabilities: np.ndarray, classes: list[str],
                 **const: Any) -> list[bytes]:
    """The records exactly as streams/pipeline.py builds them today, through prediction_to_json_bytes."""
    probs, sc = probabilities.tolist(), scores.tolist()
    return [prediction_to_json_bytes({
        "event_id": e.event_id, "entity_id": e.entity_id, "event_time": e.event_time,
        "model_name": const["model_name"], "model_version": const["model_version"],
        "model_sha256": const["model_sha256"], "score": sc[i], "label": labels[i],
        "probabilities": dict(zip(classes, probs[i], strict=True)), "input_hash": hashes[i],
        "scored_at": const["scored_at"], "latency_ms": const["latency_ms"], "route": const["route"],
        "worker": const["worker"], "source_topic": topics[i], "source_partition": partitions[i],
        "source_offset": offsets[i], "schema_version": e.schema_version}) for i, e in enumerate(events)]


CONST = {"model_name": "fraud", "model_version": "3", "model_sha256": "ab" * 32, "scored_at": 1_700_000_000_123,
         "latency_ms": 4.5, "route": "canary", "worker": "w-1"}


@pytest.mark.parametrize("case", ["plain", "odd_strings", "three_classes_two_topics", "percent_and_unicode"])
def test_encode_predictions_is_byte_identical_to_prediction_to_json_bytes(case: str) -> None:
    rng = np.random.default_rng(3)
    n = 300
    ids = [f"evt-{i}" for i in range(n)]
    entities = [f"acct-{i % 11}" for i in range(n)]
    topics, classes, const = ["features"] * n, ["legit", "risky"], dict(CONST)
    if case == "odd_strings":
        ids[5], ids[7], entities[9] = 'quote"d', "tab\tand\x00nul\x7f", "back\\slash é ☃ \U0001f600"
    if case == "three_classes_two_topics":
        classes = ["a", "b", "c"]
        topics = ["features" if i % 2 else "features-eu" for i in range(n)]
    if case == "percent_and_unicode":
        const.update(model_name="m%s%d", route="ü%", worker='w"1')
        topics = ["t%%"] * n
    events = [Event(ids[i], entities[i], 1_700_000_000_000 + i, 1, {}, None) for i in range(n)]
    probabilities = rng.random((n, len(classes))).astype(np.float32)
    scores = probabilities[:, -1]
    labels = [classes[int(j)] for j in probabilities.argmax(axis=1)]
    hashes = input_hashes(rng.random((n, 4)).astype(np.float32))
    partitions, offsets = [i % 3 for i in range(n)], [2**40 + i for i in range(n)]
    got = encode_predictions(events, topics, np.asarray(partitions), np.asarray(offsets), hashes, scores,
                             np.asarray(labels), probabilities, classes, **const)
    assert got == legacy_bytes(events, topics, partitions, offsets, hashes, scores, labels, probabilities, classes,
                               **const)
    assert orjson.loads(got[5])["event_id"] == ids[5]


def test_encode_predictions_refuses_non_finite_and_bad_shapes() -> None:
    events = [Event("e1", "u", 0, 1, {}, None), Event("e2", "u", 0, 1, {}, None)]
    args: dict[str, Any] = {"topics": ["t", "t"], "partitions": [0, 0], "offsets": [1, 2], "input_hashes": ["h", "h"],
                            "labels": ["a", "b"], "classes": ["a", "b"]}
    probs = np.asarray([[0.5, 0.5], [0.5, np.nan]])
    with pytest.raises(ValueError, match=r"probabilities\['b'\] of event 'e2'"):
        encode_predictions(events, scores=[0.1, 0.2], probabilities=probs, **args, **CONST)
    with pytest.raises(ValueError, match="score of event 'e1'"):
        encode_predictions(events, scores=[np.inf, 0.2], probabilities=np.full((2, 2), 0.5), **args, **CONST)
    with pytest.raises(ValueError, match="latency_ms"):
        encode_predictions(events, scores=[0.1, 0.2], probabilities=np.full((2, 2), 0.5), **args,
                           **{**CONST, "latency_ms": float("nan")})
    with pytest.raises(ValueError, match="probabilities must be"):
        encode_predictions(events, scores=[0.1, 0.2], probabilities=np.full((2, 3), 0.5), **args, **CONST)
    with pytest.raises(ValueError, match="one entry per event"):
        encode_predictions(events[:1], scores=[0.1, 0.2], probabilities=np.full((2, 2), 0.5), **args, **CONST)
    assert encode_predictions([], [], [], [], [], [], [], np.empty((0, 2)), ["a", "b"], **CONST) == []


def test_input_hashes_equal_per_row_input_hash() -> None:
    X = np.random.default_rng(0).random((50, 8)).astype(np.float32)
    assert input_hashes(X) == [input_hash(X[i].tobytes()) for i in range(50)]
    assert input_hashes(X[::2]) == [input_hash(X[i].tobytes()) for i in range(0, 50, 2)]  # a strided view
    assert input_hashes(np.empty((0, 8), dtype=np.float32)) == []
    with pytest.raises(ValueError, match="2-d"):
        input_hashes(X[0])


def test_bench_reports_every_stage() -> None:
    result = bench.measure_hot_path(n=600, batch=256, repeat=1)
    stages = {"decode_validate", "input_hash", "encode_prediction", "total"}
    assert {k.rsplit(".", 1)[1] for k in result} == stages
    assert result["batch.total"] == pytest.approx(result["json.batch.decode_validate"] + result["batch.input_hash"]
                                                  + result["batch.encode_prediction"])


@pytest.mark.parametrize("module", [strict, hot_path, dead_letters, bench], ids=lambda m: m.__name__)
def test_docstring_examples(module: types.ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
