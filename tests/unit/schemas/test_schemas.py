"""Contract tests for schemas/: .avsc <-> pydantic twins, codecs, error codes, feature validation."""

from __future__ import annotations

import base64
import doctest
import hashlib
import io
import pickle
import random
import struct
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import fastavro
import numpy as np
import orjson
import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from schemas import avro_schemas, codecs, drift, event_struct, labels, records, validation
from schemas.avro_schemas import SCHEMA_IDS, parsed_schema, parsed_schema_by_id, raw_schema, schema_id
from schemas.codecs import (
    REASON_CODES,
    InvalidEvent,
    decode_dead_letter,
    decode_feature_event,
    decode_prediction,
    encode_dead_letter,
    encode_feature_event,
    encode_prediction_json,
    prediction_to_json_bytes,
)
from schemas.drift import DriftAlert, DriftRecord, RetrainRequest
from schemas.labels import Label, LearnerMetrics
from schemas.records import SUPPORTED_SCHEMA_VERSIONS, DeadLetter, FeatureEvent, Prediction
from schemas.validation import FeatureValidator, input_hash

TWINS: list[tuple[str, type[BaseModel]]] = [
    ("feature_event", FeatureEvent),
    ("prediction", Prediction),
    ("dead_letter", DeadLetter),
    ("drift_record", DriftRecord),
    ("drift_alert", DriftAlert),
    ("retrain_request", RetrainRequest),
    ("label", Label),
    ("learner_metrics", LearnerMetrics),
]


def event_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": "e1",
        "entity_id": "u1",
        "event_time": 1_700_000_000_000,
        "schema_version": 1,
        "features": {"amount": 12.5, "age": 41.0},
        "metadata": {"src": "web"},
    }
    d.update(overrides)
    return d


def prediction_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": "e1",
        "entity_id": "u1",
        "event_time": 1_700_000_000_000,
        "model_name": "fraud",
        "model_version": "3",
        "model_sha256": "ab" * 32,
        "score": 0.93,
        "label": "fraud",
        "probabilities": {"fraud": 0.93, "ok": 0.07},
        "input_hash": "cd" * 32,
        "scored_at": 1_700_000_000_123,
        "latency_ms": 4.5,
        "route": "canary",
        "worker": "w-1",
        "source_topic": "features",
        "source_partition": 3,
        "source_offset": 2**40,
        "schema_version": 1,
    }
    d.update(overrides)
    return d


def dead_letter_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": "e9",
        "reason_code": "non_finite",
        "reason": "feature 'amount' is NaN",
        "source_topic": "features",
        "source_partition": 0,
        "source_offset": 17,
        "original_key": b"\x00\xffkey",
        "original_value": b"\x00\x00\x00\x00\x01\xfe\xff garbage",
        "failed_at": 1_700_000_000_999,
        "worker": "w-2",
    }
    d.update(overrides)
    return d


OFFSETS = [{"topic": "features", "partition": 1, "first_offset": 2**33, "last_offset": 2**33 + 499}]


def drift_record_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "model_name": "fraud",
        "model_version": "3",
        "model_sha256": "ab" * 32,
        "profile_sha256": "ef" * 32,
        "worker": "w-1",
        "computed_at": 1_700_000_000_500,
        "window_start_ms": 1_700_000_000_000,
        "window_end_ms": 1_700_000_000_400,
        "window_events": 500,
        "window_invalid": 2,
        "window_scored": 497,
        "offsets": OFFSETS,
        "statistics": [
            {"kind": "feature", "feature": "amount", "statistic": "psi", "value": 0.31, "p_value": None,
             "effect": None, "warn_threshold": 0.1, "alert_threshold": 0.25, "p_threshold": None, "status": "alert",
             "histogram": {"edges": [10.0, 20.0], "categories": [], "reference": [0.3, 0.4, 0.3],
                           "current": [0.1, 0.4, 0.5]}},
            {"kind": "prediction", "feature": "score", "statistic": "ks", "value": 0.02, "p_value": 0.7,
             "effect": None, "warn_threshold": 0.05, "alert_threshold": 0.1, "p_threshold": 0.01, "status": "ok",
             "histogram": None},
        ],
        "status": "alert",
    }
    d.update(overrides)
    return d


def drift_alert_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "alert_id": "fraud-3-w-1-1700000000500",
        "model_name": "fraud",
        "model_version": "3",
        "state": "firing",
        "status": "alert",
        "notice": 1,
        "started_at": 1_700_000_000_500,
        "emitted_at": 1_700_000_000_500,
        "reasons": ["amount psi 0.31 >= 0.25"],
        "window_start_ms": 1_700_000_000_000,
        "window_end_ms": 1_700_000_000_400,
        "offsets": OFFSETS,
        "worker": "w-1",
        "retrain_request_id": "rr-1",
    }
    d.update(overrides)
    return d


def retrain_request_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "request_id": "rr-1",
        "model_name": "fraud",
        "model_version": "3",
        "model_sha256": "ab" * 32,
        "requested_at": 1_700_000_000_500,
        "alert_id": "fraud-3-w-1-1700000000500",
        "reason": "amount psi 0.31 >= 0.25",
        "data_version": "kafka:features[1]@8589934592-8589935091",
        "offsets": OFFSETS,
        "window_start_ms": 1_700_000_000_000,
        "window_end_ms": 1_700_000_000_400,
        "worker": "w-1",
    }
    d.update(overrides)
    return d


def label_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": "e1",
        "label": "risky",
        "reward": -12.5,
        "label_time": 1_700_000_009_000,
        "metadata": {"source": "chargeback"},
    }
    d.update(overrides)
    return d


def learner_metrics_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "learner": "logreg",
        "model_version": "7",
        "parent_version": "6",
        "kind": "learned",
        "worker": "w-1",
        "emitted_at": 1_700_000_010_000,
        "learned": 497,
        "learned_total": 3497,
        "consumed": 500,
        "unknown": 1,
        "late": 1,
        "duplicate": 0,
        "invalid": 1,
        "predicted_at_learn": 3,
        "offsets": [{"topic": "labels", "partition": 0, "first_offset": 2**33, "last_offset": 2**33 + 499}],
        "next_offsets": [{"topic": "labels", "partition": 0, "offset": 2**33 + 500}],
        "metrics": {"all": {"accuracy": 0.88, "n": 3497.0}, "6": {"log_loss": 0.31, "n": 500.0}},
    }
    d.update(overrides)
    return d


SAMPLES: dict[str, dict[str, Any]] = {
    "feature_event": event_dict(),
    "prediction": prediction_dict(),
    "dead_letter": dead_letter_dict(),
    "drift_record": drift_record_dict(),
    "drift_alert": drift_alert_dict(),
    "retrain_request": retrain_request_dict(),
    "label": label_dict(),
    "learner_metrics": learner_metrics_dict(),
}


def avro_frame(record: dict[str, Any], sid: int = 1, schema: str = "feature_event") -> bytes:
    """Confluent-framed Avro written straight with fastavro, bypassing pydantic (to smuggle in NaN etc.)."""
    buf = io.BytesIO()
    buf.write(struct.pack(">BI", 0, sid))
    fastavro.schemaless_writer(buf, parsed_schema(schema), record)
    return buf.getvalue()


# --- twins agree with their .avsc -----------------------------------------------------------------------


def _named_types(node: Any, found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every record and enum defined anywhere in a schema, by name (later uses refer to them by name)."""
    found = {} if found is None else found
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum"):
            found[node["name"]] = node
        for value in node.values():
            _named_types(value, found)
    elif isinstance(node, list):
        for value in node:
            _named_types(value, found)
    return found


def _avro_type(t: Any, named: dict[str, Any] | None = None) -> Any:
    named = named or {}
    if isinstance(t, list):
        if "null" not in t:  # a value of one of several types, e.g. a label: ["string", "double"]
            return ("union", tuple(_avro_type(x, named) for x in t))
        # Nullable unions are ["null", X]; null first is what lets the default be null.
        assert len(t) == 2 and t[0] == "null", f"unexpected union {t}"
        return ("nullable", _avro_type(t[1], named))
    if isinstance(t, str) and t in named:
        return _avro_type(named[t], named)
    if isinstance(t, dict):
        if t["type"] == "map":
            return ("map", _avro_type(t["values"], named))
        if t["type"] == "array":
            return ("array", _avro_type(t["items"], named))
        if t["type"] == "enum":
            return ("enum", tuple(t["symbols"]))
        if t["type"] == "record":  # nested: field names, types and defaults, in order
            fields = tuple((f["name"], _avro_type(f["type"], named), "default" in f, f.get("default"))
                           for f in t["fields"])
            return ("record", t["name"], fields)
        return _avro_type(t["type"], named)  # a logical type is encoded as its base type
    return t


def _py_type(tp: Any, meta: tuple[Any, ...] = ()) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extra = get_args(tp)
        flat = [m2 for m in extra for m2 in (m.metadata if isinstance(m, FieldInfo) else [m])]
        return _py_type(base, (*meta, *flat))
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == len(args):  # no None: one of several types, in the .avsc's order
            return ("union", tuple(_py_type(a) for a in args))
        assert len(args) == 2 and len(rest) == 1, f"unexpected union {tp}"
        return ("nullable", _py_type(rest[0]))
    if origin is dict:
        key, value = get_args(tp)
        assert key is str, "Avro map keys are always strings"
        return ("map", _py_type(value))
    if origin is list:
        return ("array", _py_type(get_args(tp)[0]))
    if origin is Literal:
        return ("enum", get_args(tp))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = tuple(
            (name, _py_type(info.annotation, tuple(info.metadata)), not info.is_required(),
             None if info.is_required() else info.default)
            for name, info in tp.model_fields.items()
        )
        return ("record", tp.__name__, fields)
    if tp is int:
        lo = next((m.ge for m in meta if hasattr(m, "ge")), None)
        hi = next((m.le for m in meta if hasattr(m, "le")), None)
        return {(-(2**31), 2**31 - 1): "int", (-(2**63), 2**63 - 1): "long"}.get((lo, hi), f"int[{lo},{hi}]")
    return {float: "double", str: "string", bytes: "bytes", bool: "boolean"}.get(tp, repr(tp))


@pytest.mark.parametrize(("name", "model"), TWINS)
def test_twin_matches_avsc(name: str, model: type[BaseModel]) -> None:
    avsc = raw_schema(name)
    assert avsc["namespace"] == "streamscore"
    assert avsc["name"] == model.__name__
    avro_fields = avsc["fields"]
    named = _named_types(avsc)
    assert [f["name"] for f in avro_fields] == list(model.model_fields), "same field names in the same order"
    for f in avro_fields:
        info = model.model_fields[f["name"]]
        py = _py_type(info.annotation, tuple(info.metadata))
        assert py == _avro_type(f["type"], named), f"{name}.{f['name']}: pydantic {py} vs avro {f['type']}"
        assert info.is_required() == ("default" not in f), f"{name}.{f['name']}: default presence differs"
        if "default" in f:
            assert info.default == f["default"], f"{name}.{f['name']}: default differs"


@pytest.mark.parametrize(("name", "model"), TWINS)
def test_twin_sample_survives_avro_binary(name: str, model: type[BaseModel]) -> None:
    # Field-by-field agreement is necessary; this shows a validated twin really encodes and decodes.
    obj = model.model_validate(SAMPLES[name])
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema(name), obj.model_dump())
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, parsed_schema(name), None)
    assert model.model_validate(back) == obj


def test_timestamp_fields_are_timestamp_millis_in_avsc() -> None:
    expected = {
        "feature_event": {"event_time"},
        "prediction": {"event_time", "scored_at"},
        "dead_letter": {"failed_at"},
        "drift_record": {"computed_at", "window_start_ms", "window_end_ms"},
        "drift_alert": {"started_at", "emitted_at", "window_start_ms", "window_end_ms"},
        "retrain_request": {"requested_at", "window_start_ms", "window_end_ms"},
        "label": {"label_time"},
        "learner_metrics": {"emitted_at"},
    }
    for name, fields in expected.items():
        got = {
            f["name"]
            for f in raw_schema(name)["fields"]
            if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"
        }
        assert got == fields


# --- avro schemas -------------------------------------------------------------------------------------------


def test_avro_schema_ids_and_cache() -> None:
    assert SCHEMA_IDS == {1: "feature_event", 2: "prediction", 3: "dead_letter"}
    for sid, name in SCHEMA_IDS.items():
        assert schema_id(name) == sid
        assert parsed_schema_by_id(sid) is parsed_schema(name)  # parsed once, shared
    with pytest.raises(KeyError, match="unknown schema id 42"):
        parsed_schema_by_id(42)
    with pytest.raises(KeyError, match="nope"):
        parsed_schema("nope")
    with pytest.raises(KeyError, match="nope"):
        schema_id("nope")


def test_avro_schemas_read_timestamps_as_int_millis() -> None:
    raw = encode_feature_event(FeatureEvent.model_validate(event_dict()), "avro")
    buf = io.BytesIO(raw[5:])
    rec = fastavro.schemaless_reader(buf, parsed_schema("feature_event"), None)
    assert type(rec["event_time"]) is int and rec["event_time"] == 1_700_000_000_000


def test_raw_schema_is_a_fresh_copy() -> None:
    raw_schema("prediction")["fields"].clear()
    assert len(raw_schema("prediction")["fields"]) == 18


# --- FeatureEvent model rules ---------------------------------------------------------------------------


def test_feature_event_coerces_ints_and_defaults_metadata() -> None:
    ev = FeatureEvent.model_validate(event_dict(features={"n": 3}, metadata=None))
    assert ev.features == {"n": 3.0} and type(ev.features["n"]) is float
    d = event_dict()
    del d["metadata"]
    assert FeatureEvent.model_validate(d).metadata is None
    assert isinstance(SUPPORTED_SCHEMA_VERSIONS, frozenset) and sorted(SUPPORTED_SCHEMA_VERSIONS) == [1]


@pytest.mark.parametrize(
    ("overrides", "error_type"),
    [
        ({"features": {"x": float("nan")}}, "finite_number"),
        ({"features": {"x": float("inf")}}, "finite_number"),
        ({"features": {"x": True}}, "float_type"),
        ({"features": {"x": "1.5"}}, "float_type"),
        ({"event_id": ""}, "string_too_short"),
        ({"surprise": 1}, "extra_forbidden"),
    ],
)
def test_feature_event_rejects(overrides: dict[str, Any], error_type: str) -> None:
    with pytest.raises(ValidationError) as exc:
        FeatureEvent.model_validate(event_dict(**overrides))
    assert [e["type"] for e in exc.value.errors()] == [error_type]


# --- round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [None, {"src": "web", "ünï": "çødé"}])
@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_feature_event_round_trip(fmt: str, metadata: dict[str, str] | None) -> None:
    ev = FeatureEvent.model_validate(event_dict(metadata=metadata, features={"a": -0.0, "b": 1e300, "c": 7}))
    raw = encode_feature_event(ev, fmt)  # type: ignore[arg-type]
    assert decode_feature_event(raw, fmt) == ev  # type: ignore[arg-type]
    assert decode_feature_event(raw, "auto") == ev
    if fmt == "avro":
        assert raw[:5] == b"\x00\x00\x00\x00\x01"
    else:
        assert orjson.loads(raw) == ev.model_dump()


def test_decode_accepts_size_exactly_at_limit() -> None:
    raw = orjson.dumps(event_dict())
    assert decode_feature_event(raw, max_bytes=len(raw)).event_id == "e1"
    with pytest.raises(InvalidEvent) as exc:
        decode_feature_event(raw, max_bytes=len(raw) - 1)
    assert exc.value.code == "oversized"


def test_decode_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        decode_feature_event(b"{}", "xml")  # type: ignore[arg-type]


def test_prediction_dict_to_json_round_trip() -> None:
    d = prediction_dict()
    raw = prediction_to_json_bytes(d)
    assert orjson.loads(raw) == d
    assert decode_prediction(raw) == Prediction.model_validate(d)
    assert encode_prediction_json(Prediction.model_validate(d)) == raw


def test_prediction_json_accepts_numpy_scalars_and_default_route() -> None:
    d = prediction_dict(score=np.float32(0.25), probabilities={"fraud": np.float64(0.25), "ok": 0.75})
    del d["route"]
    p = decode_prediction(prediction_to_json_bytes(d))
    assert p.score == 0.25 and p.probabilities == {"fraud": 0.25, "ok": 0.75}
    assert p.route == "single"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"score": float("nan")}, "score=nan"),
        ({"latency_ms": float("inf")}, "latency_ms=inf"),
        ({"probabilities": {"ok": np.float32("nan")}}, "probabilities['ok']=nan"),
    ],
)
def test_prediction_json_refuses_non_finite(overrides: dict[str, Any], named: str) -> None:
    # orjson would write these as null, producing records no consumer can decode.
    with pytest.raises(ValueError, match="non-finite") as exc:
        prediction_to_json_bytes(prediction_dict(**overrides))
    assert named in str(exc.value)


def test_prediction_json_allows_huge_finite_values() -> None:
    # The fast path sums values; a finite overflow must fall back to the exact per-value check.
    raw = prediction_to_json_bytes(prediction_dict(score=1.7e308, latency_ms=1.7e308))
    assert decode_prediction(raw).score == 1.7e308


def test_decode_prediction_rejects_bad_payloads() -> None:
    with pytest.raises(ValueError):
        decode_prediction(b"not json")
    with pytest.raises(ValidationError, match="score"):
        decode_prediction(orjson.dumps(prediction_dict(score="high")))


@pytest.mark.parametrize("key", [None, b"", b"\x00\xff\xfe"])
def test_dead_letter_round_trip_base64(key: bytes | None) -> None:
    dl = DeadLetter.model_validate(dead_letter_dict(original_key=key))
    raw = encode_dead_letter(dl)
    as_json = orjson.loads(raw)
    assert as_json["original_value"] == base64.b64encode(dl.original_value).decode()
    assert as_json["original_key"] == (None if key is None else base64.b64encode(key).decode())
    assert decode_dead_letter(raw) == dl


def test_dead_letter_defaults_and_bad_base64() -> None:
    d = dead_letter_dict()
    del d["event_id"], d["original_key"]
    dl = DeadLetter.model_validate(d)
    assert dl.event_id is None and dl.original_key is None
    bad = orjson.loads(encode_dead_letter(dl))
    bad["original_value"] = "***not base64***"
    with pytest.raises(ValueError):
        decode_dead_letter(orjson.dumps(bad))
    with pytest.raises(ValueError, match="expected an object"):
        decode_dead_letter(b"[]")


# --- every InvalidEvent code from a real bad payload ----------------------------------------------------

GOOD_AVRO = avro_frame(event_dict())
BIG = orjson.dumps(event_dict(metadata={"pad": "x" * 70_000}))

DECODE_CASES: list[tuple[str, bytes | None, str, str]] = [
    ("empty", None, "json", "message value is null (tombstone)"),
    ("empty", b"", "auto", "message value is empty"),
    ("oversized", BIG, "json", f"payload is {len(BIG)} bytes, limit is 65536"),
    ("not_json", b'{"event_id": "e1",', "json", "payload is not valid JSON"),
    ("not_json", b'{"event_id":"e1","features":{"amount":NaN}}', "json", "NaN/Infinity"),
    ("not_json", b'{"features":{"amount":-Infinity}}', "auto", "NaN/Infinity"),
    ("not_json", b"[1, 2]", "json", "payload is a JSON array, expected an object"),
    ("not_json", b"\xff\xfe{}", "json", "not valid JSON"),
    ("not_json", GOOD_AVRO, "json", "Confluent Avro framing"),
    ("bad_avro", orjson.dumps(event_dict()), "avro", "first byte is 0x7b, expected Confluent magic byte 0x00"),
    ("bad_avro", b"\x00\x00\x01", "avro", "shorter than the 5-byte Confluent header"),
    ("bad_avro", GOOD_AVRO[:-4], "avro", "body ended early"),
    ("bad_avro", GOOD_AVRO + b"\x00\x00", "avro", "2 trailing bytes"),
    ("bad_avro", b"\x00\x00\x00\x00\x01" + b"\xff" * 12, "auto", "does not decode as feature_event"),
    ("bad_avro", GOOD_AVRO[:5] + b"\x84\x00" + GOOD_AVRO[6:], "avro", "overlong varint at body byte 0"),
    ("duplicate_key", orjson.dumps(event_dict()).replace(b'"entity_id"', b'"event_id":"e0", "entity_id"'), "json",
     "key 'event_id' appears more than once"),
    ("unknown_schema_id", b"\x00\x00\x00\x00\x07" + GOOD_AVRO[5:], "avro", "schema id 7 is not registered"),
    ("unknown_schema_id", avro_frame(prediction_dict(), 2, "prediction"), "auto", "schema id 2 is 'prediction'"),
    (
        "unknown_schema_version",
        orjson.dumps({"event_id": "e1", "schema_version": 2, "payload": "v2 shape"}),
        "json",
        "schema_version 2 is not supported (supported: [1])",
    ),
    ("unknown_schema_version", avro_frame(event_dict(schema_version=3)), "avro", "schema_version 3"),
    (
        "schema_violation",
        orjson.dumps({k: v for k, v in event_dict().items() if k != "event_id"}),
        "json",
        "missing field 'event_id'",
    ),
    ("schema_violation", orjson.dumps(event_dict(extra=1)), "json", "unknown field 'extra'"),
    ("schema_violation", orjson.dumps(event_dict(event_id="")), "json", "field 'event_id' must not be empty"),
    (
        "schema_violation",
        orjson.dumps(event_dict(event_time=0)).replace(b'"event_time":0', b'"event_time":9223372036854775808'),
        "json",
        "field 'event_time' is 9223372036854775808, outside the range of an Avro long",
    ),
    ("non_finite", avro_frame(event_dict(features={"amount": float("nan")})), "avro", "feature 'amount' is NaN"),
    (
        "non_finite",
        avro_frame(event_dict(features={"a": 1.0, "amount": float("-inf")})),
        "auto",
        "feature 'amount' is -Infinity",
    ),
    (
        "non_finite",
        orjson.dumps(event_dict(features={"amount": "NaN"})),
        "json",
        "feature 'amount' is the string 'NaN'",
    ),
    (
        "non_finite",
        orjson.dumps(event_dict(features={"amount": " infinity"})),
        "json",
        "feature 'amount' is the string ' infinity'",
    ),
    (
        "wrong_type",
        orjson.dumps(event_dict(features={"amount": True})),
        "json",
        "feature 'amount' must be a number, got boolean",
    ),
    (
        "wrong_type",
        orjson.dumps(event_dict(features={"amount": "12"})),
        "json",
        "feature 'amount' must be a number, got string",
    ),
    (
        "wrong_type",
        orjson.dumps(event_dict(event_time="2024-01-01T00:00:00Z")),
        "json",
        "field 'event_time' must be an integer, got string",
    ),
    (
        "wrong_type",
        orjson.dumps(event_dict(schema_version=1.0)),
        "json",
        "field 'schema_version' must be an integer, got number",
    ),
    (
        "wrong_type",
        orjson.dumps(event_dict(schema_version=None)),
        "json",
        "field 'schema_version' must be an integer, got null",
    ),
    ("wrong_type", orjson.dumps(event_dict(features=[1.0])), "json", "field 'features' must be an object, got array"),
    ("wrong_type", orjson.dumps(event_dict(metadata={"k": 1})), "json", "metadata 'k' must be a string, got integer"),
]


@pytest.mark.parametrize(
    ("code", "raw", "fmt", "reason_part"),
    DECODE_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(DECODE_CASES)],
)
def test_decode_error_codes(code: str, raw: bytes | None, fmt: str, reason_part: str) -> None:
    with pytest.raises(InvalidEvent) as exc:
        decode_feature_event(raw, fmt)  # type: ignore[arg-type]
    err = exc.value
    assert err.code == code, err.reason
    assert reason_part in err.reason
    assert str(err) == f"{code}: {err.reason}"


def test_mutated_payloads_raise_only_invalid_event() -> None:
    # The hot path catches InvalidEvent only; any other exception from garbage would kill the batch.
    rng = random.Random(1234)
    seeds = [GOOD_AVRO, orjson.dumps(event_dict())]
    rejected = 0
    for _ in range(3000):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(b))
            op = rng.random()
            if op < 0.5:
                b[pos] = rng.randrange(256)
            elif op < 0.75:
                del b[pos : pos + rng.randint(1, 8)]
            else:
                b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        try:
            decode_feature_event(bytes(b), "auto")
        except InvalidEvent as e:
            assert e.code in REASON_CODES and e.reason
            rejected += 1
    assert rejected > 2000  # most mutations must be caught, not silently accepted


def test_every_reason_code_is_exercised() -> None:
    # validator tests below
    produced = {c[0] for c in DECODE_CASES} | {"missing_feature", "extra_feature", "out_of_range"}
    # output_rejected is the engines' (an output the broker refused): tests/e2e/test_faults.py produces it
    assert produced | {"output_rejected"} == REASON_CODES


def test_invalid_event_carries_event_id_when_readable() -> None:
    with pytest.raises(InvalidEvent) as exc:
        decode_feature_event(avro_frame(event_dict(event_id="e-77", features={"x": float("nan")})), "avro")
    assert exc.value.event_id == "e-77"
    with pytest.raises(InvalidEvent) as exc:
        decode_feature_event(orjson.dumps({"event_id": 5, "features": {}}))
    assert exc.value.event_id is None  # not a string, so not trusted
    with pytest.raises(InvalidEvent) as exc:
        decode_feature_event(b"{broken")
    assert exc.value.event_id is None


def test_invalid_event_reason_lists_several_problems_capped() -> None:
    with pytest.raises(InvalidEvent) as exc:
        decode_feature_event(orjson.dumps(event_dict(features={f"f{i}": "x" for i in range(8)})))
    assert exc.value.code == "wrong_type"
    assert exc.value.reason.count("must be a number") == 5
    assert exc.value.reason.endswith("and 3 more problems")


def test_invalid_event_reason_clips_hostile_names() -> None:
    with pytest.raises(InvalidEvent) as exc:
        decode_feature_event(orjson.dumps(event_dict(features={"k" * 50_000: True})))
    assert exc.value.code == "wrong_type"
    assert len(exc.value.reason) < 300 and "..." in exc.value.reason


def test_invalid_event_is_picklable_and_checks_its_code() -> None:
    err = pickle.loads(pickle.dumps(InvalidEvent("oversized", "payload is 9 bytes, limit is 8", "e1")))
    assert (err.code, err.reason, err.event_id) == ("oversized", "payload is 9 bytes, limit is 8", "e1")
    with pytest.raises(ValueError, match="unknown InvalidEvent code"):
        InvalidEvent("typo_code", "x")  # type: ignore[arg-type]


# --- FeatureValidator -----------------------------------------------------------------------------------


def make_event(features: dict[str, float]) -> FeatureEvent:
    return FeatureEvent.model_validate(event_dict(features=features, event_id="ev-5"))


def test_validator_orders_by_signature() -> None:
    v = FeatureValidator(["c", "a", "b"])
    assert v.row(make_event({"a": 1, "b": 2.5, "c": -3})) == [-3.0, 1.0, 2.5]
    assert v.feature_names == ("c", "a", "b")


def test_validator_names_every_missing_feature() -> None:
    with pytest.raises(InvalidEvent) as exc:
        FeatureValidator(["a", "b", "c", "d"]).row(make_event({"b": 1.0, "zz": 2.0}))
    err = exc.value
    assert err.code == "missing_feature"
    assert err.reason == "missing 3 of 4 features: 'a', 'c', 'd'"
    assert err.event_id == "ev-5"


def test_validator_extra_features_strict_by_default() -> None:
    ev = make_event({"a": 1.0, "b": 2.0, "x": 3.0, "y": 4.0})
    with pytest.raises(InvalidEvent) as exc:
        FeatureValidator(["a", "b"]).row(ev)
    assert exc.value.code == "extra_feature"
    assert exc.value.reason == "unexpected features 'x', 'y'"
    assert FeatureValidator(["b", "a"], allow_extra=True).row(ev) == [2.0, 1.0]


def test_validator_non_finite_defence_in_depth() -> None:
    # model_construct skips validation, as a buggy upstream might.
    ev = FeatureEvent.model_construct(**event_dict(features={"a": 1.0, "b": float("inf")}))
    with pytest.raises(InvalidEvent) as exc:
        FeatureValidator(["a", "b"]).row(ev)
    assert exc.value.code == "non_finite"
    assert "'b'" in exc.value.reason and "'a'" not in exc.value.reason
    # Huge but finite values overflow the fast sum check and must still pass (for a float64 model).
    assert FeatureValidator(["a", "b"], input_dtype="float64").row(make_event({"a": 1.7e308, "b": 1.7e308})) == [
        1.7e308, 1.7e308]
    with pytest.raises(InvalidEvent) as exc:  # the float32 default: 1.7e308 would be inf as model input
        FeatureValidator(["a", "b"]).row(make_event({"a": 1.7e308, "b": 1.0}))
    assert exc.value.code == "out_of_range" and "'a'" in exc.value.reason


def test_validator_rejects_duplicate_signature_names() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        FeatureValidator(["a", "a"])


def test_input_hash_is_sha256_of_float32_le_row() -> None:
    row = FeatureValidator(["a", "b"]).row(make_event({"a": 0.1, "b": 2.0}))
    f32 = np.asarray(row, dtype="<f4").tobytes()
    assert f32 == struct.pack("<2f", 0.1, 2.0)
    assert input_hash(f32) == hashlib.sha256(f32).hexdigest()
    assert len(input_hash(f32)) == 64
    # float64 values that round to the same float32 are the same model input, hence the same hash.
    nudged = np.asarray([0.1 + 1e-12, 2.0], dtype="<f4").tobytes()
    assert input_hash(nudged) == input_hash(f32)
    assert input_hash(np.asarray(row, dtype="<f8").tobytes()) != input_hash(f32)


# --- docstring examples stay runnable -------------------------------------------------------------------


@pytest.mark.parametrize("module", [records, avro_schemas, codecs, validation, drift, labels, event_struct],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module: types.ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_nan_sanity() -> None:
    # Guards the test data itself: orjson must refuse NaN literals, or the not_json cases above lie.
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"[NaN]")
