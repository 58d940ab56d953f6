"""Strictness checks the fast parsers skip: duplicate JSON keys, non-canonical Avro (overlong varints).

orjson and msgspec keep the *last* value of a duplicated JSON key and fastavro accepts overlong varints
(``0x80 0x00`` for 0), so one payload can mean different things to different consumers. These checks run
after a successful parse and cost little on the common path:

- JSON: outside strings a ``:`` only separates a key from its value, so ``raw.count(b":")`` is at least
  the number of keys the text holds. When it equals the number of keys the parser kept, nothing was
  dropped (~0.1 us). Otherwise, colons inside strings are subtracted (exact when the text has no escape),
  and only then does the stdlib parser with an ``object_pairs_hook`` decide (~15 us, rare).
- Avro: the canonical (shortest) encoding of the decoded record is computed arithmetically; every
  non-canonical choice (an overlong varint, a map split into several blocks, a duplicated map key) makes
  the body longer, so equal lengths prove canonical bytes. Otherwise a small strict walker over the schema
  tells an overlong varint or a duplicate key (rejected) from a legal multi-block map (accepted).

>>> json_duplicate_key(b'{"a": 1, "b": {"c": "x:y"}}', {"a": 1, "b": {"c": "x:y"}}) is None
True
>>> json_duplicate_key(b'{"a": 1, "a" : 2}', {"a": 2})
'a'
>>> from schemas.avro_schemas import parsed_schema
>>> schema = parsed_schema("feature_event")
>>> body = bytes([2]) + b"e" + bytes([2]) + b"u" + bytes([0, 2]) + bytes([2, 2]) + b"x" + bytes(8) + bytes([0, 0])
>>> avro_problem(body, 0, schema, {"event_id": "e", "entity_id": "u", "event_time": 0, "schema_version": 1,
...                                "features": {"x": 0.0}, "metadata": None}) is None
True
>>> overlong = bytes([2]) + b"e" + bytes([2]) + b"u" + bytes([0x80, 0x00, 2]) + bytes([2, 2]) + b"x" + bytes(10)
>>> avro_problem(overlong, 0, schema, {"event_id": "e", "entity_id": "u", "event_time": 0, "schema_version": 1,
...                                    "features": {"x": 0.0}, "metadata": None})
('bad_avro', "overlong varint at body byte 4 (field 'event_time'): 2 bytes where 1 suffice")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["avro_canonical_size", "avro_problem", "json_duplicate_key", "json_key_count"]


# --- JSON -----------------------------------------------------------------------------------------------


def json_key_count(data: Any) -> int:
    """Keys of a parsed JSON object and of the objects directly in it (a FeatureEvent has no deeper ones).

    Deeper keys are not counted: that only makes ``json_duplicate_key`` take its exact slow path, for
    payloads that are not FeatureEvents anyway (~0.3 us instead of ~1.8 us for a full recursive count).

    >>> json_key_count({"a": [{"b": 1}, 2], "c": {"d": {"e": 1}}})
    3
    """
    if type(data) is not dict:
        return 0
    n = len(data)
    for v in data.values():
        if type(v) is dict:
            n += len(v)
    return n


def _string_colons(data: Any) -> int:
    """':' characters in every string (keys included) of a parsed JSON value."""
    if type(data) is str:
        return data.count(":")
    if type(data) is dict:
        return sum(k.count(":") for k in data) + sum(_string_colons(v) for v in data.values())
    if type(data) is list:
        return sum(_string_colons(v) for v in data)
    return 0


class _Duplicate(Exception):
    pass


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out


def json_duplicate_key(raw: bytes, data: Any, keys: int | None = None, string_colons: int | None = None) -> str | None:
    """The first key that appears twice in one object of ``raw``, or None; ``data`` is ``raw`` already parsed.

    ``raw`` must be valid JSON (it parsed). ``keys`` (at most the number of keys in ``data``) and
    ``string_colons`` (the ``:`` in its strings) may be passed by a caller that knows the shape.
    """
    colons = raw.count(b":")
    if keys is None:
        keys = json_key_count(data)
    # colons = keys in the text + colons inside strings >= kept keys >= keys; equality means none dropped.
    if colons == keys:
        return None
    if b"\\" not in raw:  # no escapes: the strings' colons in the text are exactly those in ``data``
        if string_colons is None:
            string_colons = _string_colons(data)
        if colons - string_colons == keys:  # an undercount of keys (deep nesting) only fails this test
            return None
    try:  # exact and slow; only for a likely duplicate or escaped text with colons in its strings
        json.loads(raw, object_pairs_hook=_pairs_hook)
    except _Duplicate as dup:
        return str(dup.args[0])
    except RecursionError:  # orjson allows 1024 levels, the stdlib fewer; nothing that deep is an event
        return "<nested too deeply to check>"
    return None


# --- Avro -----------------------------------------------------------------------------------------------


def _varint_size(n: int) -> int:
    """Bytes of the canonical zig-zag varint of ``n``."""
    if -64 <= n < 64:
        return 1
    z = (n << 1) if n >= 0 else ((-n << 1) - 1)
    return (z.bit_length() + 6) // 7


def _str_size(s: str) -> int:
    n = len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))
    return n + 1 if n < 64 else _varint_size(n) + n


def _keys_size(m: dict[str, Any]) -> int:
    """Encoded size of a map's keys; short ASCII keys (feature names) without a call per key."""
    if m and max(map(len, m)) < 64:
        text = "".join(m)
        if text.isascii():
            return len(text) + len(m)
    return sum(map(_str_size, m))


_FIXED = {"double": 8, "float": 4, "boolean": 1, "null": 0}


def _compile(schema: Any) -> Callable[[Any], int]:
    """A function computing the canonical encoded size of a value of ``schema`` (compiled once per schema)."""
    if type(schema) is str:
        if schema == "string":
            return _str_size
        if schema in ("long", "int"):
            return _varint_size
        if schema == "bytes":
            return lambda v: _varint_size(len(v)) + len(v)
        if schema in _FIXED:
            size = _FIXED[schema]
            return lambda v: size
        raise ValueError(f"avro_canonical_size: unsupported type {schema!r}")
    if type(schema) is list:
        if len(schema) != 2 or schema[0] != "null":  # only nullable unions occur in the checked inputs
            raise ValueError(f"avro_canonical_size: unsupported union {schema!r}")
        inner = _compile(schema[1])
        return lambda v: 1 if v is None else 1 + inner(v)
    kind = schema["type"]
    if kind == "record":
        fields = [(f["name"], _compile(f["type"])) for f in schema["fields"]]

        def record(v: Any) -> int:
            total = 0
            for name, size in fields:
                total += size(v[name])
            return total
        return record
    if kind == "map":
        values = schema["values"]
        if values in _FIXED:  # e.g. the feature map of doubles
            fixed = _FIXED[values]
            return lambda m: (_varint_size(len(m)) + _keys_size(m) + fixed * len(m) + 1) if m else 1
        value_size = _compile(values)
        return lambda m: (_varint_size(len(m)) + _keys_size(m) + sum(map(value_size, m.values())) + 1) if m else 1
    if kind == "array":
        item_size = _compile(schema["items"])
        return lambda a: (_varint_size(len(a)) + sum(map(item_size, a)) + 1) if a else 1
    return _compile(kind)  # {"type": "long", ...} and the like


def avro_canonical_size(schema: Any, value: Any) -> int:
    """Length of the shortest Avro binary encoding of ``value`` (single-block maps and arrays).

    >>> avro_canonical_size({"type": "map", "values": "double"}, {"a": 1.0, "bc": 2.0})
    23
    """
    return _sizer_of(schema)(value)


_SIZERS: dict[int, tuple[Any, Callable[[Any], int]]] = {}


def _sizer_of(schema: Any) -> Callable[[Any], int]:
    # Parsed schemas are shared objects (avro_schemas.parsed_schema caches them): compile once per object.
    hit = _SIZERS.get(id(schema))
    if hit is None or hit[0] is not schema:
        if len(_SIZERS) > 64:  # callers with throwaway schemas (tests, doctests) must not grow this forever
            _SIZERS.clear()
        hit = _SIZERS[id(schema)] = (schema, _compile(schema))
    return hit[1]


class _Problem(Exception):
    pass


class _Walker:
    """Reads an Avro body strictly: minimal varints, no duplicate map keys, nothing beyond ``end``."""

    def __init__(self, raw: bytes, pos: int) -> None:
        self.raw, self.pos, self.start = raw, pos, pos

    def varint(self, where: str) -> int:
        raw, start, shift, z = self.raw, self.pos, 0, 0
        while True:
            if self.pos >= len(raw):
                raise _Problem(("bad_avro", f"body ended inside a varint ({where})"))
            b = raw[self.pos]
            self.pos += 1
            z |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift >= 70:
                raise _Problem(("bad_avro", f"varint longer than 10 bytes at body byte {start - self.start} ({where})"))
        size = self.pos - start
        if size > 1 and b == 0:
            raise _Problem(("bad_avro", f"overlong varint at body byte {start - self.start} ({where}): "
                                        f"{size} bytes where {_varint_size((z >> 1) ^ -(z & 1))} suffice"))
        return (z >> 1) ^ -(z & 1)

    def take(self, n: int, where: str) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise _Problem(("bad_avro", f"body ended early ({where})"))
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def read(self, schema: Any, where: str) -> Any:
        if type(schema) is str:
            if schema in ("string", "bytes"):
                data = self.take(self.varint(where), where)
                return data.decode("utf-8", "surrogatepass") if schema == "string" else data
            if schema in ("long", "int"):
                return self.varint(where)
            if schema in ("double", "float"):
                return self.take(8 if schema == "double" else 4, where)
            if schema == "boolean":
                return self.take(1, where)
            if schema == "null":
                return None
            raise _Problem(("bad_avro", f"unsupported type {schema!r}"))
        if type(schema) is list:
            index = self.varint(f"{where} union index")
            if not 0 <= index < len(schema):
                raise _Problem(("bad_avro", f"union index {index} out of range ({where})"))
            return self.read(schema[index], where)
        kind = schema["type"]
        if kind == "record":
            return {f["name"]: self.read(f["type"], f"field '{f['name']}'") for f in schema["fields"]}
        if kind in ("map", "array"):
            out: Any = {} if kind == "map" else []
            while True:
                count = self.varint(f"{where} block count")
                if count == 0:
                    return out
                if count < 0:  # a negative count is followed by the block's size in bytes
                    count = -count
                    self.varint(f"{where} block size")
                for _ in range(count):
                    if kind == "array":
                        out.append(self.read(schema["items"], where))
                        continue
                    key = self.read("string", f"{where} key")
                    if key in out:
                        raise _Problem(("duplicate_key", f"key {_clip(key)!r} appears twice in {where}"))
                    out[key] = self.read(schema["values"], f"{where}[{_clip(key)!r}]")
        return self.read(kind, where)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def avro_problem(raw: bytes, offset: int, schema: Any, data: Any) -> tuple[str, str] | None:
    """``(code, reason)`` when the Avro body ``raw[offset:]`` (which decoded to ``data``) is not acceptable.

    Accepted: the canonical encoding, or one that differs only by splitting maps/arrays into blocks (legal
    Avro that some writers produce). Rejected: an overlong varint (``bad_avro``), a map key that appears
    twice (``duplicate_key``). ``raw`` must hold nothing after the record (trailing bytes are checked first).
    """
    if len(raw) - offset == _sizer_of(schema)(data):
        return None
    walker = _Walker(raw, offset)
    try:
        walker.read(schema, "record")
    except _Problem as p:
        return p.args[0]
    except UnicodeDecodeError as e:
        return "bad_avro", f"a string is not UTF-8 ({e.reason})"
    if walker.pos != len(raw):  # fastavro and the walker disagree on where the record ends
        return "bad_avro", f"Avro body has {len(raw) - walker.pos} trailing bytes after the record"
    return None
