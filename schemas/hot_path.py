"""Batch codecs for the scoring hot path: raw values -> float32 matrix, scores -> prediction bytes.

``decode_rows`` gives exactly the verdicts of ``decode_feature_event`` + ``FeatureValidator.row`` (same
accepted events and values, same InvalidEvent codes and reasons) at a fraction of the cost: JSON is decoded
by msgspec straight into a typed struct (no dict, no pydantic; for a strict validator the features too, into
a struct of exactly the model's features: ``events[j].features`` is then that struct, and a dict only for the
values the reference decoder decided), then the strictness the parser skips (duplicate keys) and the
model's float32 input range are checked; anything unusual is handed to the reference decoder, which then
also writes the reason. ``encode_predictions`` writes the bytes ``prediction_to_json_bytes`` would write for
each record of a batch, from templates holding the fields that are the same for the whole batch.

Measured with ``python -m schemas.bench`` (100k demo-shaped events, batches of 256, 2-core dev machine, quiet,
2026-12-04; vs the per-event reference codecs): JSON decode+validate 1.29-1.40 us/event vs 4.45-4.83, Avro
7.1-7.5 vs 9.4-10.3 (fastavro itself is ~5 us), prediction bytes 0.92-0.95 vs 2.0-2.2;
``validation.input_hashes`` 0.37-0.40 vs 0.55-0.57.

>>> from schemas.validation import FeatureValidator
>>> ok = b'{"event_id":"e1","entity_id":"u1","event_time":5,"schema_version":1,"features":{"b":2,"a":1}}'
>>> out = decode_rows([ok, b"{", ok.replace(b'"b":2', b'"b":1e39')], "json", FeatureValidator(["a", "b"]))
>>> out.index, out.X.tolist(), [(i, e.code) for i, e in out.errors]
([0], [[1.0, 2.0]], [(1, 'not_json'), (2, 'out_of_range')])
>>> raw = encode_predictions(out.events, ["features"], [0], [41], ["ab" * 32], [0.75], ["risky"], [[0.25, 0.75]],
...     ["legit", "risky"], model_name="m", model_version="1", model_sha256="cd" * 32, scored_at=9, latency_ms=2.0,
...     route="single", worker="w1")
>>> raw[0][:60]
b'{"event_id":"e1","entity_id":"u1","event_time":5,"model_name'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any, Literal

import msgspec
import numpy as np
import orjson
from msgspec import UNSET

from .codecs import InvalidEvent, SchemaResolver, _parse_avro, decode_feature_event
from .event_struct import Event, decode_event_json, keys_are_unique
from .records import SUPPORTED_SCHEMA_VERSIONS, FeatureEvent
from .validation import FeatureValidator, out_of_float32_reason

__all__ = ["DecodedRows", "Event", "decode_rows", "encode_predictions"]

Format = Literal["json", "avro", "auto"]


_DecodeError = msgspec.DecodeError  # ValidationError is a subclass
_SUPPORTED = SUPPORTED_SCHEMA_VERSIONS
_metadata, _schema_version, _features, _event_id, _entity_id, _event_time = map(attrgetter, (
    "metadata", "schema_version", "features", "event_id", "entity_id", "event_time"))


@dataclass(slots=True)
class DecodedRows:
    """What ``decode_rows`` returns; ``index[j]`` is the input position of ``events[j]`` and ``X[j]``."""

    index: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    X: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))  # C-contiguous float32
    errors: list[tuple[int, InvalidEvent]] = field(default_factory=list)  # (input position, error), in order


def decode_rows(values: Sequence[bytes | None], formats: Format | Sequence[Format], validator: FeatureValidator,
                max_bytes: int = 65536, resolver: SchemaResolver | None = None) -> DecodedRows:
    """Decode and validate a batch of message values into model rows (float32, ``validator``'s order).

    ``formats`` is one format for every value or one per value (e.g. by each message's topic). Never raises
    InvalidEvent: every bad value is one ``errors`` entry. ``resolver``: as in ``decode_feature_event``.
    """
    names = validator.feature_names
    k = len(names)
    if k == 0:
        raise ValueError("decode_rows needs a validator with at least one feature")
    per_value = not isinstance(formats, str)
    if per_value and len(formats) != len(values):
        raise ValueError(f"{len(formats)} formats for {len(values)} values")
    codec = _codec(names, validator.allow_extra)
    split = _decode_json_batch(values, max_bytes, codec) if not per_value and formats == "json" else None
    fast_index, fast, slow = split or _decode_each(values, formats, per_value, max_bytes, resolver, codec)
    feats = list(map(_features, fast))
    if codec.exact_struct:  # msgspec checked that each has exactly the model's features
        rows: list[tuple[float, ...]] = list(map(codec.row, feats))
    else:  # rows in bulk (C-level map); a missing feature sends that one value to the reference decoder
        fast_index, fast, rows = _dict_rows(fast_index, fast, feats, slow, codec.row)
    out = DecodedRows(fast_index, fast)
    if slow:
        _decode_slow(out, rows, slow, values, formats, per_value, validator, max_bytes, resolver)
    if not rows:
        out.X = np.empty((0, k), dtype=np.float32)
        return out
    # Straight into the model's dtype: a value beyond float32 becomes inf here and is told from a NaN/inf input
    # by its Python float (``_drop_bad_rows``).
    with np.errstate(over="ignore"):
        X = np.fromiter(chain.from_iterable(rows), dtype=validator.input_dtype, count=len(rows) * k).reshape(
            len(rows), k)
    good = np.isfinite(X).all(axis=1)
    if not good.all():
        X = _drop_bad_rows(out, good, X, rows, names, values, formats, per_value, max_bytes, resolver)
    out.X = np.ascontiguousarray(X)
    return out


@dataclass(frozen=True, slots=True)
class _Codec:
    """How values are decoded for one feature list: into which struct, and how a row is read off its features."""

    names: tuple[str, ...]
    event_type: type[Event]
    decode_json: Callable[[bytes], Event]
    row: Callable[[Any], tuple[float, ...]]
    exact_struct: bool  # features decode into a struct of exactly the model's features


@lru_cache(maxsize=64)
def _codec(names: tuple[str, ...], allow_extra: bool) -> _Codec:
    """A strict validator's events decode their features into a struct of exactly ``names`` (``ModelEvent``):
    msgspec then fails on a missing, extra or non-number feature while it parses (that value goes to the
    reference decoder, which writes the reason), and a row is one attrgetter
    (0.81 vs 0.97 us/event for decoding + rows of 8 demo features, against a ``dict[str, float]``). With
    ``allow_extra`` the features stay a dict, since extra keys must be seen to count the keys."""
    if allow_extra:
        get = itemgetter(*names)
        return _Codec(names, Event, decode_event_json, get if len(names) > 1 else lambda f: (get(f),), False)
    fields = [f"f{j}" for j in range(len(names))]  # a feature's name need not be a Python identifier
    features = msgspec.defstruct("ModelFeatures", [(f, float) for f in fields], forbid_unknown_fields=True,
                                 rename=dict(zip(fields, names, strict=True)), gc=False)
    model_event = msgspec.defstruct("ModelEvent", [("features", features)], bases=(Event,),
                                    forbid_unknown_fields=True, gc=False)
    get = attrgetter(*fields)
    return _Codec(names, model_event, msgspec.json.Decoder(model_event).decode,
                  get if len(fields) > 1 else lambda f: (get(f),), True)


def _dict_rows(fast_index: list[int], fast: list[Event], feats: list[dict[str, float]], slow: list[int],
               get_row: Callable[[Any], tuple[float, ...]]) -> tuple[list[int], list[Event], list[tuple[float, ...]]]:
    """Rows of events whose features are a dict (``allow_extra``); a value missing a feature joins ``slow``."""
    try:
        return fast_index, fast, list(map(get_row, feats))
    except KeyError:
        rows, kept_index, kept = [], [], []
        for i, ev, features in zip(fast_index, fast, feats, strict=True):
            try:
                rows.append(get_row(features))
            except KeyError:
                slow.append(i)
                continue
            kept_index.append(i)
            kept.append(ev)
        return kept_index, kept, rows


def _no_duplicate_keys(raw: bytes, ev: Event) -> bool:
    """The rule of schemas.strict.json_duplicate_key, specialised to the struct's known shape; also turns an
    absent ``metadata`` (UNSET while decoding) into None."""
    if not keys_are_unique(raw, ev):
        return False
    if ev.metadata is UNSET:
        ev.metadata = None
    return True


def _decode_each(values: Sequence[bytes | None], formats: Any, per_value: bool, max_bytes: int,
                 resolver: SchemaResolver | None, codec: _Codec) -> tuple[list[int], list[Event], list[int]]:
    """(positions, events) of the values decoded on the fast path, and the positions the reference decoder
    must decide, one value at a time."""
    fast_index: list[int] = []
    fast: list[Event] = []
    slow: list[int] = []  # values the reference decoder must decide
    decode_json, event_type = codec.decode_json, codec.event_type
    fmt: Any = formats
    for i, raw in enumerate(values):
        if per_value:
            fmt = formats[i]
        if not raw or len(raw) > max_bytes:
            slow.append(i)
            continue
        if fmt == "json" or (fmt == "auto" and raw[0] != 0):
            try:
                ev = decode_json(raw)
            except _DecodeError:
                slow.append(i)
                continue
            if not _no_duplicate_keys(raw, ev):
                slow.append(i)
                continue
        elif fmt == "avro" or fmt == "auto":
            try:
                ev = msgspec.convert(_parse_avro(raw, resolver), event_type)
            except (InvalidEvent, _DecodeError):
                slow.append(i)
                continue
        else:
            slow.append(i)
            continue
        _sort_by_version(i, ev, fast_index, fast, slow)
    return fast_index, fast, slow


def _decode_json_batch(values: Sequence[bytes | None], max_bytes: int, codec: _Codec
                       ) -> tuple[list[int], list[Event], list[int]] | None:
    """``_decode_each`` of an all-JSON batch with C-level maps over the batch (1.15 vs 1.35 us/event for 256
    demo events, of which msgspec's decoding is 0.72 and the ':' count 0.2);
    None when a value is missing, empty, too long or undecodable, and ``_decode_each`` decides.

    The duplicate-key rule is checked for the whole batch at once: every key of a decoded event has its
    own ':' (more only for duplicates or a ':' in a string), so each value's count is >= its keys and the
    batch's total equals the total of keys only when every value's does.
    """
    try:
        lengths = list(map(len, values))  # type: ignore[arg-type]  # TypeError: a None value
        if not values or min(lengths) == 0 or max(lengths) > max_bytes:
            return None
        events = list(map(codec.decode_json, values))  # type: ignore[arg-type]
    except (TypeError, _DecodeError):
        return None
    n = len(events)
    metadata = list(map(_metadata, events))
    if metadata.count(UNSET) != n or not set(map(_schema_version, events)) <= _SUPPORTED:
        return _check_each(values, events)
    n_feature_keys = n * len(codec.names) if codec.exact_struct else sum(map(len, map(_features, events)))
    if b"".join(values).count(b":") != 5 * n + n_feature_keys:  # type: ignore[arg-type]
        return _check_each(values, events)
    list(map(setattr, events, repeat("metadata"), repeat(None)))
    return list(range(n)), events, []


def _sort_by_version(i: int, ev: Event, fast_index: list[int], fast: list[Event], slow: list[int]) -> None:
    """A decoded value of a supported schema version joins the fast path; any other goes to the reference
    decoder, which names the version in its dead letter."""
    if ev.schema_version in _SUPPORTED:
        fast_index.append(i)
        fast.append(ev)
    else:
        slow.append(i)


def _check_each(values: Sequence[Any], events: list[Event]) -> tuple[list[int], list[Event], list[int]]:
    """The checks of ``_decode_each`` after its JSON decoding, value by value."""
    fast_index: list[int] = []
    fast: list[Event] = []
    slow: list[int] = []
    for i, (raw, ev) in enumerate(zip(values, events, strict=True)):
        if not _no_duplicate_keys(raw, ev):
            slow.append(i)
            continue
        _sort_by_version(i, ev, fast_index, fast, slow)
    return fast_index, fast, slow


def _decode_slow(out: DecodedRows, rows: list, slow: list[int], values: Sequence[bytes | None], formats: Any,
                 per_value: bool, validator: FeatureValidator, max_bytes: int,
                 resolver: SchemaResolver | None = None) -> None:
    """The reference decoder's verdict for each ``slow`` value, merged into ``out``/``rows`` in input order."""
    index, events = out.index, out.events
    for i in slow:
        fmt = formats[i] if per_value else formats
        try:
            event = decode_feature_event(values[i], fmt, max_bytes, resolver)
            row = tuple(validator.row(event))
        except InvalidEvent as e:
            out.errors.append((i, e))
            continue
        index.append(i)
        events.append(_from_model(event))
        rows.append(row)
    out.errors.sort(key=itemgetter(0))
    if len(index) != len(set(index)) or index != sorted(index):
        order = sorted(range(len(index)), key=index.__getitem__)
        index[:] = [index[j] for j in order]
        events[:] = [events[j] for j in order]
        rows[:] = [rows[j] for j in order]


def _drop_bad_rows(out: DecodedRows, good: np.ndarray, X: np.ndarray, rows: list, names: Sequence[str],
                   values: Sequence[bytes | None], formats: Any, per_value: bool, max_bytes: int,
                   resolver: SchemaResolver | None = None) -> np.ndarray:
    for j in np.flatnonzero(~good).tolist():
        i, ev = out.index[j], out.events[j]
        if all(map(math.isfinite, rows[j])):  # finite as a float64, not as the model's float32 input
            err = InvalidEvent("out_of_range", out_of_float32_reason(names, rows[j]), ev.event_id)
        else:  # NaN/inf from Avro: the reference decoder rejects it with its usual reason
            fmt = formats[i] if per_value else formats
            try:
                decode_feature_event(values[i], fmt, max_bytes, resolver)
            except InvalidEvent as e:
                err = e
            else:  # unreachable while FeatureEvent refuses non-finite floats; kept as a clear verdict
                err = InvalidEvent("non_finite", "a feature is not a finite number", ev.event_id)
        out.errors.append((i, err))
    out.errors.sort(key=itemgetter(0))
    keep = np.flatnonzero(good).tolist()
    out.index[:] = [out.index[j] for j in keep]
    out.events[:] = [out.events[j] for j in keep]
    return X[good]


def _from_model(event: FeatureEvent) -> Event:
    return Event(event.event_id, event.entity_id, event.event_time, event.schema_version, event.features,
                 event.metadata)


# --- encoding -------------------------------------------------------------------------------------------


# Bytes that are their own JSON form inside a string (printable ASCII but '"' and a backslash), and '"'.
_PLAIN_JSON = bytes(c for c in range(0x20, 0x7F) if c != 0x5C)


def _json_str(s: str) -> str:
    return orjson.dumps(s).decode()


def _floats(values: Any) -> bytes:
    """orjson's text of a flat list of the floats (row-major for 2-d)."""
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    elif len(values) and isinstance(values[0], (list, tuple, np.ndarray)):
        values = [float(v) for row in values for v in row]
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)


def _split_floats(text: bytes) -> list[bytes]:
    # A list of numbers only, so every comma separates two of them.
    return text[1:-1].split(b",") if len(text) > 2 else []


def _inner_json(strings: Sequence[str]) -> list[bytes]:
    """Each string's JSON form without its quotes, as bytes.

    Printable ASCII without '"' or a backslash is its own JSON form (ids usually are): one join, encode,
    table check and split for the batch, with '"' as the separator since no such string holds one
    (~0.01 us/id, 0.09 for a 64-char hash, vs 0.02/0.2 with ``str.isprintable``), instead of one orjson
    call each (~0.07 us).
    """
    if not strings:
        return []
    raw = '"'.join(strings).encode()
    if not raw.translate(None, _PLAIN_JSON) and raw.count(b'"') == len(strings) - 1:
        return raw.split(b'"')
    return [orjson.dumps(s)[1:-1] for s in strings]


def encode_predictions(events: Sequence[Any], topics: Sequence[str], partitions: Sequence[int],
                       offsets: Sequence[int], input_hashes: Sequence[str], scores: Any, labels: Sequence[Any],
                       probabilities: Any, classes: Sequence[Any], *, model_name: str, model_version: str,
                       model_sha256: str, scored_at: int, latency_ms: float, route: str, worker: str) -> list[bytes]:
    """One Prediction JSON record per event, byte-identical to ``prediction_to_json_bytes`` of the dict the
    pipeline builds (same field order, orjson's number format).

    ``events`` have ``event_id``, ``entity_id``, ``event_time`` and ``schema_version`` (an ``Event`` or a
    FeatureEvent); the other sequences are row-aligned with them (numpy arrays are fine); ``probabilities``
    is (n, len(classes)). ValueError (naming the event) on a non-finite score, probability or latency,
    which orjson would write as null.
    """
    n = len(events)
    n_classes = len(classes)
    if not (len(topics) == len(partitions) == len(offsets) == len(input_hashes) == len(labels) == len(scores) == n):
        raise ValueError("encode_predictions: every per-event sequence must have one entry per event")
    score_json, prob_json = _floats(scores), _floats(probabilities)
    latency_json = orjson.dumps(latency_ms, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" in score_json or b"null" in prob_json or latency_json == b"null":  # NaN/inf
        _raise_non_finite(events, _split_floats(score_json), _split_floats(prob_json), latency_json, classes)
    score_text, prob_text = _split_floats(score_json), _split_floats(prob_json)
    if len(prob_text) != n * n_classes:
        raise ValueError(f"probabilities must be ({n}, {n_classes}), got {len(prob_text)} values")
    if n == 0:
        return []
    ids = _inner_json(list(map(_event_id, events)))
    entities = _inner_json(list(map(_entity_id, events)))
    hashes = _inner_json(input_hashes)
    label_json = {lab: orjson.dumps(str(lab)) for lab in set(labels)}
    labels_b = [label_json[lab] for lab in labels]
    if isinstance(partitions, np.ndarray) or isinstance(offsets, np.ndarray):
        partitions, offsets = [int(p) for p in partitions], [int(o) for o in offsets]

    # Fields constant over the batch are baked into one %-template per source topic ('%' escaped).
    def const(text: str) -> bytes:
        return text.replace("%", "%%").encode()

    head = b'{"event_id":"%b","entity_id":"%b","event_time":%d' + const(
        f',"model_name":{_json_str(model_name)},"model_version":{_json_str(model_version)},'
        f'"model_sha256":{_json_str(model_sha256)},"score":') + b'%b,"label":%b,"probabilities":{'
    probs = b",".join(const(_json_str(str(c)) + ":") + b"%b" for c in classes)
    tail = b'},"input_hash":"%b"' + const(
        f',"scored_at":{int(scored_at)},"latency_ms":{latency_json.decode()},"route":{_json_str(route)},'
        f'"worker":{_json_str(worker)},"source_topic":')
    templates = {topic: head + probs + tail + const(_json_str(topic)) +
                 b',"source_partition":%d,"source_offset":%d,"schema_version":%d}' for topic in set(topics)}
    # One C-level map over the batch's columns (no Python frame per record): 0.43 vs 0.50-0.73 us/record for a
    # comprehension unpacking each row (256 records, loaded 2-core box).
    columns = (ids, entities, map(_event_time, events), score_text, labels_b,
               *(prob_text[j::n_classes] for j in range(n_classes)), hashes, partitions, offsets,
               map(_schema_version, events))
    if len(templates) == 1:
        return list(map(templates[topics[0]].__mod__, zip(*columns, strict=True)))
    return list(map(bytes.__mod__, map(templates.__getitem__, topics), zip(*columns, strict=True)))


def _raise_non_finite(events: Sequence[Any], score_text: list[bytes], prob_text: list[bytes], latency_json: bytes,
                      classes: Sequence[Any]) -> None:
    if latency_json == b"null":
        raise ValueError("prediction has a non-finite score/latency_ms/probability: latency_ms is not finite")
    n_classes = len(classes)
    for i, e in enumerate(events):
        bad = ["score"] if score_text[i] == b"null" else []
        bad += [f"probabilities[{c!r}]" for j, c in enumerate(classes) if prob_text[n_classes * i + j] == b"null"]
        if bad:
            raise ValueError(f"prediction has a non-finite score/latency_ms/probability: {', '.join(bad)} of "
                             f"event {e.event_id!r}")
    raise ValueError("prediction has a non-finite score/latency_ms/probability")
