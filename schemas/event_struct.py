"""The FeatureEvent contract as a msgspec struct, and the duplicate-key rule for JSON decoded into it.

Both fast decoders use it: ``schemas.hot_path`` (scoring: model rows) and ``datastore.records`` (the archiver's
rows). It imports no numpy, so the archiver child does not load it (20 MB of the child's RSS, measured).

>>> ok = b'{"event_id":"e1","entity_id":"u","event_time":0,"schema_version":1,"features":{"a":1}}'
>>> ev = decode_event_json(ok)
>>> ev.features, ev.metadata is UNSET, keys_are_unique(ok, ev)
({'a': 1.0}, True, True)
>>> dup = ok.replace(b'"a":1', b'"a":1,"a":2')  # msgspec keeps the last value; the contract refuses it
>>> keys_are_unique(dup, decode_event_json(dup))
False
>>> colon = ok.replace(b'"u"', b'"acct:7"')  # a ':' inside a string is not a key
>>> keys_are_unique(colon, decode_event_json(colon))
True
"""

from __future__ import annotations

from collections.abc import Collection
from itertools import chain
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = ["Event", "decode_event_json", "feature_keys", "keys_are_unique"]


class Event(Struct, forbid_unknown_fields=True, gc=False):
    """The FeatureEvent contract as a msgspec struct (same fields, types and bounds as records.FeatureEvent).

    Has the attributes the pipeline reads from a FeatureEvent. ``metadata`` is UNSET only while decoding
    (so an absent key can be told from ``null`` when counting keys); the decoders return None instead.
    """

    event_id: Annotated[str, Meta(min_length=1)]
    entity_id: str
    event_time: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
    schema_version: Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
    features: dict[str, float]
    metadata: dict[str, str] | None | UnsetType = UNSET


decode_event_json = msgspec.json.Decoder(Event).decode


def feature_keys(ev: Event) -> Collection[str]:
    """The keys of ``ev.features``: a dict's, or a features struct's JSON names (``schemas.hot_path``'s per-model
    events decode the features into a struct of exactly the model's features)."""
    features = ev.features
    return features if isinstance(features, dict) else features.__struct_encode_fields__


def keys_are_unique(raw: bytes, ev: Event) -> bool:
    """Whether the JSON ``raw`` that decoded into ``ev`` had no duplicate key (``schemas.strict.json_duplicate_key``,
    which msgspec does not check: it keeps the last value).

    Every key of the event has its own ':', so more colons than keys mean a duplicate or a ':' inside a string;
    the strings' colons are counted then. An escape (``\\``) could hide either, so such a value is not proven
    unique and goes to the reference decoder.
    """
    md = ev.metadata
    keys = 5 + len(feature_keys(ev)) + (0 if md is UNSET else 1 + (len(md) if md else 0))
    colons = raw.count(b":")
    return colons == keys or (b"\\" not in raw and colons - _string_colons(ev) == keys)


def _string_colons(ev: Event) -> int:
    md = ev.metadata
    text = "".join(chain((ev.event_id, ev.entity_id), feature_keys(ev), md or (), (md or {}).values()))
    return text.count(":")
