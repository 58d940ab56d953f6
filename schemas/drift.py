"""Pydantic v2 twins of the drift contracts: drift_record.avsc, drift_alert.avsc, retrain_request.avsc.

Same rules as ``schemas.records``: strict, field order and defaults as in the .avsc, timestamps as int
epoch milliseconds, Avro enums as ``Literal`` strings. The three records travel as JSON (they are few
and are read by people and dashboards); ``encode``/``decode`` below are their only codecs.

>>> r = OffsetRange(topic="features", partition=2, first_offset=100, last_offset=599)
>>> decode(OffsetRange, encode(r)) == r
True
>>> stat = DriftStatistic(kind="feature", feature="amount", statistic="psi", value=0.31,
...                       warn_threshold=0.1, alert_threshold=0.25, status="alert")
>>> stat.p_value is None and stat.histogram is None
True
"""

from __future__ import annotations

from typing import Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict

from .records import FiniteDouble, Int, Long, TimestampMillis

__all__ = [
    "STATUS_LEVEL",
    "AlertState",
    "DriftAlert",
    "DriftRecord",
    "DriftStatistic",
    "DriftStatus",
    "DriftSubject",
    "Histogram",
    "OffsetRange",
    "RetrainRequest",
    "decode",
    "encode",
]

DriftStatus = Literal["ok", "warn", "alert"]
DriftSubject = Literal["feature", "prediction", "concept"]
AlertState = Literal["firing", "resolved"]
# Numeric level of a status: the Prometheus gauge value and the order used to take the worst one.
STATUS_LEVEL: dict[str, int] = {"ok": 0, "warn": 1, "alert": 2}

_STRICT = ConfigDict(extra="forbid", strict=True)


class OffsetRange(BaseModel):
    """The contiguous offsets of one input partition held by a window, both ends included."""

    model_config = _STRICT

    topic: str
    partition: Int
    first_offset: Long
    last_offset: Long


class Histogram(BaseModel):
    """Reference vs current proportions over the profile's bins or categories (for plots)."""

    model_config = _STRICT

    edges: list[FiniteDouble]
    categories: list[FiniteDouble]
    reference: list[FiniteDouble]
    current: list[FiniteDouble]


class DriftStatistic(BaseModel):
    """One statistic of one feature or of the score, with its thresholds and status (see the .avsc rule)."""

    model_config = _STRICT

    kind: DriftSubject
    feature: str
    statistic: str
    value: FiniteDouble
    p_value: FiniteDouble | None = None
    effect: FiniteDouble | None = None
    warn_threshold: FiniteDouble | None = None
    alert_threshold: FiniteDouble | None = None
    p_threshold: FiniteDouble | None = None
    status: DriftStatus
    histogram: Histogram | None = None


class DriftRecord(BaseModel):
    """Drift of one window of the input stream against the model's reference profile."""

    model_config = _STRICT

    model_name: str
    model_version: str
    model_sha256: str
    profile_sha256: str
    worker: str
    computed_at: TimestampMillis
    window_start_ms: TimestampMillis
    window_end_ms: TimestampMillis
    window_events: Int
    window_invalid: Int
    window_scored: Int
    offsets: list[OffsetRange]
    statistics: list[DriftStatistic]
    status: DriftStatus


class DriftAlert(BaseModel):
    """A debounced alert notice: firing (first and repeated) or resolved."""

    model_config = _STRICT

    alert_id: str
    model_name: str
    model_version: str
    state: AlertState
    status: DriftStatus
    notice: Int
    started_at: TimestampMillis
    emitted_at: TimestampMillis
    reasons: list[str]
    window_start_ms: TimestampMillis
    window_end_ms: TimestampMillis
    offsets: list[OffsetRange]
    worker: str
    retrain_request_id: str | None = None


class RetrainRequest(BaseModel):
    """A request to retrain ``model_name`` on the data named by ``data_version``."""

    model_config = _STRICT

    request_id: str
    model_name: str
    model_version: str
    model_sha256: str
    requested_at: TimestampMillis
    alert_id: str
    reason: str
    data_version: str
    offsets: list[OffsetRange]
    window_start_ms: TimestampMillis
    window_end_ms: TimestampMillis
    worker: str


Record = TypeVar("Record", bound=BaseModel)


def encode(record: BaseModel) -> bytes:
    """JSON bytes of a drift contract record."""
    return orjson.dumps(record.model_dump())


def decode(model: type[Record], raw: bytes) -> Record:
    """Parse and validate JSON bytes as ``model``; raises a ValueError subclass when they do not fit.

    >>> from pydantic import ValidationError
    >>> try:
    ...     decode(OffsetRange, b'{"topic": "t", "partition": "0", "first_offset": 0, "last_offset": 1}')
    ... except ValidationError as e:
    ...     print(e.errors()[0]["loc"], e.errors()[0]["type"])
    ('partition',) int_type
    """
    return model.model_validate(orjson.loads(raw))
