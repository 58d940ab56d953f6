"""Byte codecs for the streamscore records, independent of any Kafka client.

Every way a FeatureEvent payload can be unusable maps to one ``InvalidEvent`` with a machine-readable
``code`` (for dead-letter routing and metrics) and a human-readable ``reason`` naming the field.

>>> ev = decode_feature_event(b'{"event_id":"e1","entity_id":"u1","event_time":1700000000000,'
...                           b'"schema_version":1,"features":{"amount":12}}')
>>> ev.features
{'amount': 12.0}
>>> decode_feature_event(encode_feature_event(ev, "avro"), "auto") == ev
True
>>> try:
...     decode_feature_event(b'{"event_id":"e2","entity_id":"u1","event_time":0,'
...                          b'"schema_version":1,"features":{"amount":"NaN"}}')
... except InvalidEvent as e:
...     print(e.code, "|", e.reason, "|", e.event_id)
non_finite | feature 'amount' is the string 'NaN'; features must be finite numbers | e2
"""

from __future__ import annotations

import base64
import io
import math
import struct
from collections.abc import Callable
from typing import Any, Literal, get_args

import orjson
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from pydantic import ValidationError

from .avro_schemas import SCHEMA_IDS, parsed_schema, schema_id
from .records import SUPPORTED_SCHEMA_VERSIONS, DeadLetter, FeatureEvent, Prediction
from .strict import avro_problem, json_duplicate_key

__all__ = [
    "REASON_CODES",
    "InvalidEvent",
    "ReasonCode",
    "SchemaResolver",
    "decode_dead_letter",
    "decode_feature_event",
    "decode_prediction",
    "encode_dead_letter",
    "encode_feature_event",
    "encode_prediction_json",
    "prediction_to_json_bytes",
]

# Every dead letter carries one of these codes (the ``reason`` sentence names the field):
ReasonCode = Literal[
    "oversized",  # value longer than max_bytes: after the client's decompression, so a bomb is one letter
    "empty",  # null (tombstone) or 0-byte value
    "not_json",  # not one JSON object (syntax, NaN/Infinity literals, a number beyond float64, an array...)
    "bad_avro",  # bad Confluent framing, a body that does not decode, trailing bytes, an overlong varint
    "unknown_schema_id",  # an id other than feature_event's (local table), or whose registered schema is not one
    "unknown_schema_version",  # schema_version not in SUPPORTED_SCHEMA_VERSIONS
    "schema_violation",  # missing/unknown field, empty event_id, an int outside Avro int/long
    "non_finite",  # a feature is NaN/inf (Avro) or the string "NaN"/"Infinity" (JSON)
    "out_of_range",  # a feature is finite as float64 but not as the model's float32 input (|x| >= ~3.4e38)
    "duplicate_key",  # a key twice in one JSON object or Avro map: parsers disagree on which value wins
    "wrong_type",  # e.g. a boolean or a string where a number is expected
    "missing_feature",  # a feature of the model's signature is absent
    "extra_feature",  # a feature the model does not take (strict by default)
    "output_rejected",  # the broker refused the event's output for good (e.g. MSG_SIZE_TOO_LARGE)
]
REASON_CODES: frozenset[str] = frozenset(get_args(ReasonCode))


class InvalidEvent(Exception):
    """A payload that cannot be scored.

    ``code`` is one of REASON_CODES; ``reason`` is a sentence naming the offending field; ``event_id`` is
    set when it could be read before failing (so the dead letter can still be correlated).

    >>> e = InvalidEvent("non_finite", "feature 'amount' is NaN", event_id="e1")
    >>> str(e), e.code, e.event_id
    ("non_finite: feature 'amount' is NaN", 'non_finite', 'e1')
    """

    def __init__(self, code: ReasonCode, reason: str, event_id: str | None = None) -> None:
        if code not in REASON_CODES:  # a typo here would silently create a new DLQ category
            raise ValueError(f"unknown InvalidEvent code {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code: str = code
        self.reason: str = reason
        self.event_id: str | None = event_id

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable despite the custom __init__
        return (type(self), (self.code, self.reason, self.event_id))


# Confluent wire framing: magic byte 0x00, 4-byte big-endian schema id, then the Avro body.
_HEADER = struct.Struct(">BI")
_FEATURE_EVENT_ID = schema_id("feature_event")
_FEATURE_SCHEMA = parsed_schema("feature_event")
_FEATURE_HEADER = _HEADER.pack(0, _FEATURE_EVENT_ID)
# Same as FeatureEvent.model_validate minus its Python wrapper (~0.4 us/event saved on the hot path).
_validate_feature_event = FeatureEvent.__pydantic_validator__.validate_python

# Schema id -> fastavro-parsed writer schema, raising KeyError(reason) for an id it does not know; it returns
# the shared ``parsed_schema("feature_event")`` object for that very contract (see schemas.schema_registry).
SchemaResolver = Callable[[int], Any]


def decode_feature_event(
    raw: bytes | None, fmt: Literal["json", "avro", "auto"] = "json", max_bytes: int = 65536,
    resolver: SchemaResolver | None = None,
) -> FeatureEvent:
    """Decode and validate one FeatureEvent; raise InvalidEvent on any problem.

    ``fmt="auto"`` treats a leading 0x00 byte as Confluent Avro framing and anything else as JSON.
    ``resolver`` (a ``schemas.schema_registry.RegistrySchemaResolver``) makes Avro schema ids registry ids
    instead of the local table's; without it, only the local id of feature_event is accepted.

    >>> try:
    ...     decode_feature_event(b"x" * 70000)
    ... except InvalidEvent as e:
    ...     print(e.code, "|", e.reason)
    oversized | payload is 70000 bytes, limit is 65536
    """
    if not raw:
        what = "null (tombstone)" if raw is None else "empty (0 bytes)"
        raise InvalidEvent("empty", f"message value is {what}")
    size = len(raw)
    if size > max_bytes:
        raise InvalidEvent("oversized", f"payload is {size} bytes, limit is {max_bytes}")
    if fmt == "json" or (fmt == "auto" and raw[0] != 0):
        data = _parse_json(raw)
    elif fmt == "avro" or fmt == "auto":
        data = _parse_avro(raw, resolver)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected 'json', 'avro' or 'auto'")

    version = data.get("schema_version")
    # Checked before full validation: a future version may legitimately differ in shape, and the operator
    # needs to see "unsupported version", not a list of field errors.
    if type(version) is int and version not in SUPPORTED_SCHEMA_VERSIONS:
        raise InvalidEvent(
            "unknown_schema_version",
            f"schema_version {version} is not supported (supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})",
            _event_id_of(data),
        )
    try:
        return _validate_feature_event(data)
    except ValidationError as e:
        code, reason = _explain(e)
        raise InvalidEvent(code, reason, _event_id_of(data)) from e


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        reason = f"payload is not valid JSON ({e})"
        text = bytes(raw)
        if b"NaN" in text or b"Infinity" in text or "infinity" in str(e):
            reason += "; it contains NaN/Infinity, which JSON does not allow (features must be finite)"
        elif text[:1] == b"\x00":
            reason += "; it starts with 0x00 like Confluent Avro framing (use fmt 'avro' or 'auto')"
        raise InvalidEvent("not_json", reason) from e
    if type(data) is not dict:
        raise InvalidEvent("not_json", f"payload is a JSON {_type_name(data)}, expected an object")
    dup = json_duplicate_key(raw, data)
    if dup is not None:
        raise InvalidEvent("duplicate_key", _duplicate_reason(dup), _event_id_of(data))
    return data


def _duplicate_reason(key: str) -> str:
    return (f"key {_clip(repr(key))} appears more than once in one JSON object; parsers disagree on which "
            "value wins, so the payload is ambiguous")


def _parse_avro(raw: bytes, resolver: SchemaResolver | None = None) -> dict[str, Any]:
    if raw[0] != 0:
        raise InvalidEvent("bad_avro", f"first byte is 0x{raw[0]:02x}, expected Confluent magic byte 0x00")
    if len(raw) < _HEADER.size:
        raise InvalidEvent("bad_avro", f"payload is {len(raw)} bytes, shorter than the 5-byte Confluent header")
    _, sid = _HEADER.unpack_from(raw)
    if resolver is not None:
        # A registry's ids are its own (it numbers from 1 too): the local table must not be consulted.
        try:
            writer = resolver(sid)
        except KeyError as e:
            raise InvalidEvent("unknown_schema_id",
                               f"{e.args[0]}; expected a streamscore.FeatureEvent schema") from None
        if writer is not _FEATURE_SCHEMA:
            return _parse_avro_resolved(raw, sid, writer)
    elif sid != _FEATURE_EVENT_ID:
        known = SCHEMA_IDS.get(sid)
        detail = "is not registered" if known is None else f"is '{known}'"
        raise InvalidEvent(
            "unknown_schema_id", f"schema id {sid} {detail}; expected {_FEATURE_EVENT_ID} (feature_event)"
        )
    buf = io.BytesIO(raw)  # shares the bytes object; seek instead of slicing avoids a copy
    buf.seek(_HEADER.size)
    try:
        data = schemaless_reader(buf, _FEATURE_SCHEMA, None)
    except Exception as e:  # fastavro raises EOFError, IndexError, UnicodeDecodeError, ... on garbage
        detail = "body ended early" if isinstance(e, EOFError) else _clip(f"{type(e).__name__}: {e}")
        raise InvalidEvent("bad_avro", f"Avro body does not decode as feature_event ({detail})") from e
    trailing = len(raw) - buf.tell()
    if trailing:  # a valid prefix followed by junk usually means the wrong writer schema
        raise InvalidEvent("bad_avro", f"Avro body has {trailing} trailing bytes after the feature_event")
    try:
        problem = avro_problem(raw, _HEADER.size, _FEATURE_SCHEMA, data)
    except (TypeError, ValueError) as e:  # fastavro returned a shape the size arithmetic does not expect
        problem = ("bad_avro", _clip(f"Avro body does not decode as feature_event ({type(e).__name__}: {e})"))
    if problem is not None:
        code, reason = problem
        raise InvalidEvent(code, reason, _event_id_of(data))  # type: ignore[arg-type]
    return data


def _parse_avro_resolved(raw: bytes, sid: int, writer: Any) -> dict[str, Any]:
    """A body written with another registered schema, read as a FeatureEvent by Avro schema resolution.

    Strictness is checked against the *writer* schema (a second read in its shape; only on this path), when
    the strict walker supports every type in it; a writer the walker cannot follow is accepted as decoded.
    """
    name = writer.get("name", writer.get("type")) if isinstance(writer, dict) else str(writer)
    buf = io.BytesIO(raw)
    buf.seek(_HEADER.size)
    try:
        data = schemaless_reader(buf, writer, _FEATURE_SCHEMA)
    except SchemaResolutionError as e:
        raise InvalidEvent("unknown_schema_id", _clip(f"schema id {sid} is registered as {name!r}, which cannot be "
                                                      f"read as streamscore.FeatureEvent ({e})")) from e
    except Exception as e:  # garbage bodies: as on the local path
        detail = "body ended early" if isinstance(e, EOFError) else _clip(f"{type(e).__name__}: {e}")
        raise InvalidEvent("bad_avro", f"Avro body does not decode as schema id {sid} ({detail})") from e
    trailing = len(raw) - buf.tell()
    if trailing:
        raise InvalidEvent("bad_avro", f"Avro body has {trailing} trailing bytes after the record of schema id {sid}")
    buf.seek(_HEADER.size)
    try:
        problem = avro_problem(raw, _HEADER.size, writer, schemaless_reader(buf, writer, None))
    except (TypeError, ValueError):  # a type the strict walker does not follow (enum, fixed, named reference)
        problem = None
    if problem is not None and not problem[1].startswith("unsupported type"):
        code, reason = problem
        raise InvalidEvent(code, reason, _event_id_of(data))  # type: ignore[arg-type]
    return data


def _event_id_of(data: dict[str, Any]) -> str | None:
    eid = data.get("event_id")
    return eid if type(eid) is str and eid else None


_TYPE_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    bytes: "bytes",
}
_EXPECTED: dict[str, str] = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "dict_type": "an object",
    "bytes_type": "bytes",
}
_NON_FINITE_WORDS = frozenset({"nan", "inf", "infinity"})
_MAX_REASONS = 5


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _is_non_finite_word(text: str) -> bool:
    return text.strip().lower().lstrip("+-") in _NON_FINITE_WORDS


def _clip(text: str, limit: int = 200) -> str:
    # Names and messages come from the payload; keep a hostile 60 KB key out of logs and dead letters.
    return text if len(text) <= limit else text[:limit] + "..."


def _where(loc: tuple[Any, ...]) -> str:
    if len(loc) == 2 and loc[0] == "features":
        return f"feature '{_clip(str(loc[1]))}'"
    if len(loc) == 2 and loc[0] == "metadata":
        return f"metadata '{_clip(str(loc[1]))}'"
    return "field '" + _clip(".".join(str(p) for p in loc)) + "'"


def _explain_one(err: Any) -> tuple[ReasonCode, str]:
    kind, loc, value = err["type"], err["loc"], err.get("input")
    where = _where(loc)
    if kind == "missing":
        return "schema_violation", f"missing {where}"
    if kind == "extra_forbidden":
        return "schema_violation", f"unknown {where}"
    if kind == "string_too_short":
        return "schema_violation", f"{where} must not be empty"
    if kind == "finite_number":
        shown = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        return "non_finite", f"{where} is {shown}"
    if kind in _EXPECTED:
        if loc[0] == "features" and type(value) is str and _is_non_finite_word(value):
            return "non_finite", f"{where} is the string {_clip(repr(value))}; features must be finite numbers"
        return "wrong_type", f"{where} must be {_EXPECTED[kind]}, got {_type_name(value)}"
    if kind in ("greater_than_equal", "less_than_equal"):  # the Avro int/long bounds from records.py
        bound = abs(next(iter(err.get("ctx", {}).values()), 0))
        avro_type = "int" if bound <= 2**31 else "long"
        return "schema_violation", f"{where} is {value}, outside the range of an Avro {avro_type}"
    return "schema_violation", f"{where}: {err['msg']}"


def _explain(exc: ValidationError) -> tuple[ReasonCode, str]:
    """Code of the first problem (in field order) and a reason listing up to _MAX_REASONS problems."""
    explained = [_explain_one(err) for err in exc.errors(include_url=False)]
    reasons = [reason for _, reason in explained[:_MAX_REASONS]]
    if len(explained) > _MAX_REASONS:
        reasons.append(f"and {len(explained) - _MAX_REASONS} more problems")
    return explained[0][0], "; ".join(reasons)


def encode_feature_event(event: FeatureEvent, fmt: Literal["json", "avro"]) -> bytes:
    """Serialize a FeatureEvent: orjson JSON, or Avro with Confluent framing (schema id 1).

    >>> ev = FeatureEvent(event_id="e", entity_id="u", event_time=0, schema_version=1, features={"x": 1})
    >>> encode_feature_event(ev, "avro")[:5]
    b'\\x00\\x00\\x00\\x00\\x01'
    >>> encode_feature_event(ev, "json")[:16]
    b'{"event_id":"e",'
    """
    data = event.model_dump()
    if fmt == "json":
        return orjson.dumps(data)
    if fmt == "avro":
        buf = io.BytesIO()
        buf.write(_FEATURE_HEADER)
        schemaless_writer(buf, _FEATURE_SCHEMA, data)
        return buf.getvalue()
    raise ValueError(f"unknown format {fmt!r}; expected 'json' or 'avro'")


def prediction_to_json_bytes(d: dict[str, Any]) -> bytes:
    """orjson bytes for a plain dict holding exactly the Prediction fields (the hot path builds dicts).

    Not validated against the model, for speed; only non-finite numbers are refused, because orjson would
    silently write NaN/inf as null and consumers would then fail to decode the record. numpy scalars are
    accepted.

    >>> prediction_to_json_bytes({"score": 0.5, "latency_ms": 1.0, "probabilities": {"yes": 0.5}})
    b'{"score":0.5,"latency_ms":1.0,"probabilities":{"yes":0.5}}'
    >>> prediction_to_json_bytes({"score": float("nan"), "latency_ms": 1.0, "probabilities": {}})
    Traceback (most recent call last):
    ...
    ValueError: prediction has a non-finite score/latency_ms/probability: score=nan
    """
    # One sum catches any NaN/inf; on failure re-check exactly (a sum of huge finite values can overflow).
    if not math.isfinite(d["score"] + d["latency_ms"] + sum(d["probabilities"].values())):
        _raise_non_finite(d)
    return orjson.dumps(d, option=orjson.OPT_SERIALIZE_NUMPY)


def _raise_non_finite(d: dict[str, Any]) -> None:
    """ValueError naming the non-finite numbers of a prediction dict (none: its sum merely overflowed)."""
    bad = [(k, d[k]) for k in ("score", "latency_ms") if not math.isfinite(d[k])]
    bad += [(f"probabilities[{k!r}]", v) for k, v in d["probabilities"].items() if not math.isfinite(v)]
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad)
        raise ValueError(f"prediction has a non-finite score/latency_ms/probability: {shown}")


def encode_prediction_json(p: Prediction) -> bytes:
    """JSON bytes for a Prediction model (convenience; the hot path uses prediction_to_json_bytes)."""
    return prediction_to_json_bytes(p.model_dump())


def decode_prediction(raw: bytes) -> Prediction:
    """Parse Prediction JSON; raises a ValueError subclass (orjson or pydantic) if it is not valid."""
    return Prediction.model_validate(orjson.loads(raw))


_BYTES_FIELDS = ("original_key", "original_value")


def encode_dead_letter(dl: DeadLetter) -> bytes:
    """JSON bytes for a DeadLetter; the bytes fields become standard base64 strings.

    >>> dl = DeadLetter(reason_code="empty", reason="message value is empty", source_topic="t",
    ...                 source_partition=0, source_offset=7, original_value=b"", failed_at=0, worker="w1")
    >>> decode_dead_letter(encode_dead_letter(dl)) == dl
    True
    """
    data = dl.model_dump()
    for name in _BYTES_FIELDS:
        if data[name] is not None:
            data[name] = base64.b64encode(data[name]).decode("ascii")
    return orjson.dumps(data)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Reverse of encode_dead_letter; raises a ValueError subclass on malformed input."""
    data = orjson.loads(raw)
    if type(data) is not dict:
        raise ValueError(f"dead letter is a JSON {_type_name(data)}, expected an object")
    for name in _BYTES_FIELDS:
        if type(data.get(name)) is str:
            data[name] = base64.b64decode(data[name], validate=True)
    return DeadLetter.model_validate(data)
