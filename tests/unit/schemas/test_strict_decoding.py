"""Strict input edge: duplicate keys, non-canonical Avro, float32 range, bounded dead letters."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import numpy as np
import orjson
import pytest

from schemas.codecs import InvalidEvent, decode_dead_letter, decode_feature_event, encode_dead_letter
from schemas.dead_letters import DEFAULT_MAX_ORIGINAL_BYTES, build_dead_letter, dead_letter_bytes
from schemas.hot_path import decode_rows
from schemas.records import DeadLetter
from schemas.strict import json_duplicate_key
from schemas.validation import FLOAT32_OVERFLOW, FeatureValidator

VALIDATOR = FeatureValidator(["a", "b"])


def verdict(raw: bytes | None, fmt: str = "auto") -> tuple[str, str]:
    """(code, reason) from the reference decoder + validator, ("ok", "") when scorable."""
    try:
        VALIDATOR.row(decode_feature_event(raw, fmt))  # type: ignore[arg-type]
    except InvalidEvent as e:
        return e.code, e.reason
    return "ok", ""


def batch_verdict(raw: bytes | None, fmt: str = "auto") -> tuple[str, str]:
    out = decode_rows([raw], fmt, VALIDATOR)  # type: ignore[arg-type]
    return ("ok", "") if out.index == [0] else (out.errors[0][1].code, out.errors[0][1].reason)


# --- JSON duplicate keys --------------------------------------------------------------------------------

HEAD = b'{"event_id":"e1","entity_id":"u1","event_time":5,"schema_version":1,'

DUPLICATES = [
    (HEAD + b'"features":{"a":1,"b":2,"a":3}}', "a"),
    (HEAD + b'"features":{"a":1,"b":2},"event_id":"e2"}', "event_id"),
    (HEAD + b'"features":{"a":1,"b":2},"metadata":{"k":"1","k":"2"}}', "k"),
    (HEAD + b'"features":{"a":1,"b":2}, "features" : {"a":1,"b":9}}', "features"),
    # whitespace between key and colon, or tabs and newlines, must not hide a duplicate
    (HEAD + b'"features":{"a" :1,\n"b"\t:\t2,\r\n"a"   :   3}}', "a"),
    # the same key spelt with an escape is the same key
    (HEAD + b'"features":{"a":1,"b":2,"\\u0061":3}}', "a"),
    # colons inside strings must not cancel the count of a duplicate
    (HEAD + b'"features":{"a":1,"b":2,"a":3},"metadata":{"t":"12:30"}}', "a"),
    (HEAD.replace(b'"u1"', b'"u:1"') + b'"features":{"a:b":1,"a:b":2}}', "a:b"),
    # an escaped colon (\u003a) counts in the parsed string but not in the text
    (HEAD + b'"features":{"a":1,"b":2,"b":3},"metadata":{"t":"x\\u003ay"}}', "b"),
]


@pytest.mark.parametrize(("raw", "key"), DUPLICATES, ids=[f"dup-{i}" for i in range(len(DUPLICATES))])
def test_duplicate_json_keys_are_dead_lettered(raw: bytes, key: str) -> None:
    code, reason = verdict(raw, "json")
    assert code == "duplicate_key"
    assert f"key {key!r} appears more than once" in reason
    assert batch_verdict(raw, "json") == (code, reason)


NOT_DUPLICATES = [
    HEAD + b'"features":{"a":1,"b":2},"metadata":{"url":"http://x:8080/a:b","t":"12:30:00"}}',
    HEAD.replace(b'"e1"', b'"e:\\"1\\""') + b'"features":{"a":1,"b":2}}',
    HEAD + b'"features":{"a":1,"b":2},"metadata":{"\\u003a":"\\u003a:"}}',
    HEAD + b'"features" : {"a" : 1 , "b" : 2} }',
]


@pytest.mark.parametrize("raw", NOT_DUPLICATES, ids=[f"ok-{i}" for i in range(len(NOT_DUPLICATES))])
def test_colons_and_escapes_in_strings_are_not_duplicates(raw: bytes) -> None:
    assert verdict(raw, "json") == ("ok", "")
    out = decode_rows([raw], "json", VALIDATOR)
    assert out.index == [0] and out.X.tolist() == [[1.0, 2.0]]
    assert out.events[0].event_id == decode_feature_event(raw).event_id


def test_duplicate_key_helper_on_nested_and_deep_values() -> None:
    raw = b'{"a": {"b": {"c": 1, "c": 2}}}'
    assert json_duplicate_key(raw, orjson.loads(raw)) == "c"  # below the two counted levels: exact slow path
    raw = b'{"a": [{"x": 1}, {"x": 2}]}'
    assert json_duplicate_key(raw, orjson.loads(raw)) is None  # the same key in two objects is fine
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    assert json_duplicate_key(deep, None, keys=0) is not None  # too deep to check: treated as a problem


# --- Avro: overlong varints, blocks, duplicate map keys -------------------------------------------------


def zz(n: int, extra: int = 0) -> bytes:
    """Zig-zag varint of n, padded with ``extra`` redundant continuation bytes (overlong when extra > 0)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if not z:
            out.append(b)
            break
        out.append(b | 0x80)
    if extra:  # the same value with ``extra`` more groups of zero bits
        out[-1] |= 0x80
        out += b"\x80" * (extra - 1) + b"\x00"
    return bytes(out)


def s(text: str, extra: int = 0) -> bytes:
    data = text.encode()
    return zz(len(data), extra) + data


def d(x: float) -> bytes:
    return struct.pack("<d", x)


def frame(eid: bytes = s("e1"), ent: bytes = s("u1"), time: bytes = zz(5), version: bytes = zz(1),
          features: bytes | None = None, metadata: bytes = zz(0)) -> bytes:
    if features is None:
        features = zz(2) + s("a") + d(1.0) + s("b") + d(2.0) + zz(0)
    return b"\x00\x00\x00\x00\x01" + eid + ent + time + version + features + metadata


OVERLONG = {
    "event_id length": frame(eid=s("e1", extra=1)),
    "event_time": frame(time=zz(5, extra=2)),
    "schema_version": frame(version=zz(1, extra=1)),
    "map count": frame(features=zz(2, extra=1) + s("a") + d(1.0) + s("b") + d(2.0) + zz(0)),
    "map key length": frame(features=zz(2) + s("a", extra=3) + d(1.0) + s("b") + d(2.0) + zz(0)),
    "map end": frame(features=zz(2) + s("a") + d(1.0) + s("b") + d(2.0) + zz(0, extra=1)),
    "union index": frame(metadata=zz(0, extra=1)),
    "metadata value": frame(metadata=zz(1) + zz(1) + s("k") + s("v", extra=1) + zz(0)),
}


@pytest.mark.parametrize("where", list(OVERLONG))
def test_overlong_avro_varints_are_rejected(where: str) -> None:
    code, reason = verdict(OVERLONG[where], "avro")
    assert code == "bad_avro", reason
    assert "overlong varint" in reason
    assert batch_verdict(OVERLONG[where], "avro") == (code, reason)


def test_avro_varint_longer_than_ten_bytes_is_rejected() -> None:
    code, reason = verdict(frame(time=b"\x80" * 11 + b"\x01"), "avro")
    assert code == "bad_avro"


def test_legal_multi_block_maps_are_accepted_with_their_values() -> None:
    two_blocks = frame(features=zz(1) + s("a") + d(1.0) + zz(1) + s("b") + d(2.0) + zz(0))
    entry_b = s("b") + d(2.0)
    sized_block = frame(features=zz(1) + s("a") + d(1.0) + zz(-1) + zz(len(entry_b)) + entry_b + zz(0))
    for raw in (two_blocks, sized_block):
        assert verdict(raw, "avro") == ("ok", "")
        assert decode_feature_event(raw, "avro").features == {"a": 1.0, "b": 2.0}
        assert decode_rows([raw], "avro", VALIDATOR).X.tolist() == [[1.0, 2.0]]


def test_duplicate_avro_map_keys_are_rejected() -> None:
    raw = frame(features=zz(3) + s("a") + d(1.0) + s("b") + d(2.0) + s("a") + d(3.0) + zz(0))
    code, reason = verdict(raw, "avro")
    assert code == "duplicate_key" and "'a'" in reason
    assert batch_verdict(raw, "avro") == (code, reason)
    split = frame(features=zz(2) + s("a") + d(1.0) + s("b") + d(2.0) + zz(1) + s("b") + d(5.0) + zz(0))
    assert verdict(split, "avro")[0] == "duplicate_key"  # across blocks too


def test_canonical_avro_and_trailing_bytes() -> None:
    assert verdict(frame(), "avro") == ("ok", "")
    code, reason = verdict(frame() + b"\x00", "avro")
    assert code == "bad_avro" and "1 trailing bytes" in reason


# --- float32 range --------------------------------------------------------------------------------------


def json_event(a: float, b: float = 1.0) -> bytes:
    return orjson.dumps({"event_id": "e1", "entity_id": "u1", "event_time": 5, "schema_version": 1,
                         "features": {"a": a, "b": b}})


def test_float32_boundary_is_exact() -> None:
    just_below = float(np.nextafter(FLOAT32_OVERFLOW, 0.0))
    with np.errstate(over="ignore"):
        assert np.isfinite(np.float32(just_below)) and not np.isfinite(np.float32(FLOAT32_OVERFLOW))
    for x in (just_below, -just_below, 3.4e38):
        assert verdict(json_event(x)) == ("ok", ""), x
        assert np.isfinite(decode_rows([json_event(x)], "json", VALIDATOR).X).all()
    for x in (FLOAT32_OVERFLOW, -FLOAT32_OVERFLOW, 1e39, -1.7e308):
        code, reason = verdict(json_event(x))
        assert code == "out_of_range", x
        assert "'a'" in reason and "float32" in reason
        assert batch_verdict(json_event(x), "json") == (code, reason)


def test_out_of_range_reason_names_every_feature_and_event() -> None:
    with pytest.raises(InvalidEvent) as exc:
        VALIDATOR.row(decode_feature_event(json_event(1e39, -2e39)))
    assert exc.value.code == "out_of_range" and exc.value.event_id == "e1"
    assert "features 'a' is 1e+39, 'b' is -2e+39" in exc.value.reason


def test_non_finite_from_avro_stays_non_finite() -> None:
    raw = frame(features=zz(2) + s("a") + d(float("nan")) + s("b") + d(1e39) + zz(0))
    assert verdict(raw, "avro")[0] == "non_finite"
    assert batch_verdict(raw, "avro") == verdict(raw, "avro")
    raw = frame(features=zz(2) + s("a") + d(1.0) + s("b") + d(1e39) + zz(0))
    assert verdict(raw, "avro")[0] == "out_of_range" == batch_verdict(raw, "avro")[0]


def test_float64_validator_keeps_huge_finite_values() -> None:
    v = FeatureValidator(["a", "b"], input_dtype="float64")
    out = decode_rows([json_event(1e39)], "json", v)
    assert out.X.dtype == np.float64 and out.X.tolist() == [[1e39, 1.0]]
    with pytest.raises(ValueError, match="input_dtype"):
        FeatureValidator(["a"], input_dtype="float16")  # type: ignore[arg-type]


def test_oversized_value_is_one_dead_letter_not_a_crash() -> None:
    # A compressed batch is inflated by the client; the per-message check bounds what the decoder sees.
    bomb = b'{"event_id":"' + b"x" * 10_000_000 + b'"}'
    out = decode_rows([bomb, json_event(1.0)], "json", VALIDATOR)
    assert out.index == [1]
    assert [(i, e.code) for i, e in out.errors] == [(0, "oversized")]


# --- dead letters ---------------------------------------------------------------------------------------

ERR = InvalidEvent("oversized", "payload is 800000 bytes, limit is 65536", event_id="e1")


def letter(value: bytes | None, key: bytes | None = b"k", err: InvalidEvent = ERR,
           **kw: Any) -> tuple[DeadLetter, bytes]:
    return dead_letter_bytes(err, topic="features", partition=3, offset=99, key=key, value=value, worker="w-1",
                             failed_at=1_700_000_000_000, **kw)


def test_large_original_is_cut_to_a_prefix_with_size_and_hash() -> None:
    value = bytes(range(256)) * 3125  # 800 000 bytes, the size that broke the lane
    dl, raw = letter(value)
    assert len(raw) < 32_000
    assert dl.original_truncated and dl.original_size == 800_000
    assert dl.original_value == value[:DEFAULT_MAX_ORIGINAL_BYTES]
    assert dl.original_sha256 == hashlib.sha256(value).hexdigest()
    assert (dl.source_topic, dl.source_partition, dl.source_offset, dl.event_id) == ("features", 3, 99, "e1")
    assert decode_dead_letter(raw) == dl


def test_small_original_is_kept_whole() -> None:
    dl, raw = letter(b'{"x": 1}')
    assert not dl.original_truncated and dl.original_value == b'{"x": 1}' and dl.original_size == 8
    assert orjson.loads(raw)["original_value"] == base64.b64encode(b'{"x": 1}').decode()


@pytest.mark.parametrize("limit", [8_000, 20_000, 1_000_000])
def test_encoded_letter_never_exceeds_the_limit_even_with_hostile_fields(limit: int) -> None:
    hostile = InvalidEvent("schema_violation", "r" * 100_000, event_id='"\\\x01' * 20_000)
    dl, raw = letter(b"\xff" * 900_000, key=b"\x00" * 900_000, err=hostile, max_message_bytes=limit)
    assert len(raw) <= limit
    assert dl.original_truncated and dl.original_size == 900_000
    assert len(dl.event_id or "") <= 515 and len(dl.reason) <= 2003


def test_letter_that_cannot_fit_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="without original bytes"):
        letter(b"x" * 1000, max_message_bytes=100)


def test_tombstone_letter_and_max_original_bytes() -> None:
    dl = build_dead_letter(InvalidEvent("empty", "message value is null (tombstone)"), topic="t", partition=0,
                           offset=1, key=None, value=None, worker="w", failed_at=0, max_original_bytes=4)
    assert (dl.original_value, dl.original_size, dl.original_truncated) == (b"", 0, False)
    dl = build_dead_letter(ERR, topic="t", partition=0, offset=1, key=b"123456", value=b"abc", worker="w",
                           failed_at=0, max_original_bytes=4)
    assert dl.original_truncated and dl.original_key == b"1234" and dl.original_value == b"abc"
    with pytest.raises(ValueError, match="max_original_bytes"):
        build_dead_letter(ERR, topic="t", partition=0, offset=1, key=None, value=b"", worker="w", failed_at=0,
                          max_original_bytes=-1)


def test_letters_written_before_the_new_fields_still_decode() -> None:
    old = {"event_id": None, "reason_code": "empty", "reason": "message value is empty", "source_topic": "t",
           "source_partition": 0, "source_offset": 7, "original_key": None, "original_value": "", "failed_at": 0,
           "worker": "w1"}
    dl = decode_dead_letter(orjson.dumps(old))
    assert (dl.original_size, dl.original_sha256, dl.original_truncated) == (None, None, False)
    assert decode_dead_letter(encode_dead_letter(dl)) == dl
