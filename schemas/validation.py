"""Checks a decoded FeatureEvent against a model's input signature and turns it into an ordered row.

>>> v = FeatureValidator(["age", "amount"])
>>> ev = FeatureEvent(event_id="e1", entity_id="u1", event_time=0, schema_version=1,
...                   features={"amount": 12, "age": 41})
>>> v.row(ev)
[41.0, 12.0]
>>> import numpy as np
>>> len(input_hash(np.asarray(v.row(ev), dtype="<f4").tobytes()))
64
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from .codecs import InvalidEvent
from .records import FeatureEvent

__all__ = ["FeatureValidator", "input_hash"]


def _names(names: list[str] | set[str]) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names))


class FeatureValidator:
    """Maps ``event.features`` onto the model's feature order, strictly by default.

    >>> FeatureValidator(["a", "b"]).row(FeatureEvent(event_id="e", entity_id="u", event_time=0,
    ...                                               schema_version=1, features={"a": 1, "c": 2}))
    Traceback (most recent call last):
    ...
    schemas.codecs.InvalidEvent: missing_feature: missing 1 of 2 features: 'b'
    """

    __slots__ = ("_name_set", "allow_extra", "feature_names")

    def __init__(self, feature_names: Sequence[str], allow_extra: bool = False) -> None:
        names = tuple(feature_names)
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in model signature: {names}")
        self.feature_names: tuple[str, ...] = names
        self.allow_extra = allow_extra
        self._name_set = frozenset(names)

    def row(self, event: FeatureEvent) -> list[float]:
        """Feature values in ``feature_names`` order; InvalidEvent on missing/extra/non-finite features."""
        features = event.features
        try:
            values = [features[n] for n in self.feature_names]
        except KeyError:
            missing = [n for n in self.feature_names if n not in features]
            raise InvalidEvent(
                "missing_feature",
                f"missing {len(missing)} of {len(self.feature_names)} features: {_names(missing)}",
                event.event_id,
            ) from None
        # Every expected name is present, so a longer map can only mean unexpected names.
        if not self.allow_extra and len(features) != len(values):
            extra = set(features) - self._name_set
            raise InvalidEvent("extra_feature", f"unexpected features {_names(extra)}", event.event_id)
        # Defence in depth: FeatureEvent already rejects NaN/inf, but events built with model_construct or
        # mutated after validation would not be. One sum catches NaN/inf; re-check exactly since a sum of
        # huge finite values can overflow.
        if not math.isfinite(sum(values)):
            bad = [n for n, v in zip(self.feature_names, values, strict=True) if not math.isfinite(v)]
            if bad:
                raise InvalidEvent("non_finite", f"non-finite features {_names(bad)}", event.event_id)
        return values


def input_hash(row_float32_bytes: bytes) -> str:
    """sha256 hex of one row as float32 little-endian bytes: the model's exact input, after the cast.

    Hashing the float32 bytes (not the JSON or the float64 values) means two events that differ only below
    float32 precision hash equal, because the model cannot tell them apart either. Pass e.g.
    ``np.asarray(row, dtype="<f4").tobytes()`` or ``batch[i].tobytes()`` of a C-contiguous ``<f4`` batch.

    >>> import struct
    >>> input_hash(struct.pack("<2f", 1.0, 2.0))[:16]
    'b9c80b5adeca4507'
    """
    return hashlib.sha256(row_float32_bytes).hexdigest()
