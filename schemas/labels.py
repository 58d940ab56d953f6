"""Pydantic v2 twins of the online-learning contracts (label.avsc, learner_metrics.avsc) and their codecs.

Same rules as ``schemas.records``: strict, field order and defaults as in the .avsc, timestamps as int epoch
milliseconds. Both records travel as JSON: labels arrive at the rate of outcomes (far below the feature
rate) from many business systems, and the metrics records are read by people and dashboards.

>>> lab = decode_label(b'{"event_id": "evt-1", "label": "risky", "label_time": 1700000000000}')
>>> lab.label, lab.reward, lab.metadata
('risky', None, None)
>>> decode_label(encode_label(lab)) == lab
True
>>> decode_label(b'{"event_id": "evt-2", "label": 1, "label_time": 0}').label  # numbers stay numbers
1.0
>>> try:
...     decode_label(b'{"event_id": "evt-3", "label": true, "label_time": 0}')
... except InvalidLabel as e:
...     print(e.code, "|", e.event_id)
schema_violation | evt-3
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .records import FiniteDouble, Int, Long, TimestampMillis

__all__ = [
    "InvalidLabel",
    "Label",
    "LearnedRange",
    "LearnerMetrics",
    "ResumeOffset",
    "SnapshotKind",
    "decode_label",
    "decode_learner_metrics",
    "encode_label",
    "encode_learner_metrics",
]

_STRICT = ConfigDict(extra="forbid", strict=True)
SnapshotKind = Literal["learned", "rollback"]


class Label(BaseModel):
    """The observed outcome of one event (see label.avsc).

    ``label`` is a class name or a regression target. In strict mode a JSON boolean is neither, so
    ``true`` is refused instead of silently becoming 1.0.
    """

    model_config = _STRICT

    event_id: Annotated[str, Field(min_length=1)]
    label: str | FiniteDouble
    reward: FiniteDouble | None = None
    label_time: TimestampMillis
    metadata: dict[str, str] | None = None


class LearnedRange(BaseModel):
    """Contiguous offsets of one labels partition consumed since the parent snapshot, both ends included."""

    model_config = _STRICT

    topic: str
    partition: Int
    first_offset: Long
    last_offset: Long


class ResumeOffset(BaseModel):
    """The next labels offset to consume after loading a snapshot."""

    model_config = _STRICT

    topic: str
    partition: Int
    offset: Long


class LearnerMetrics(BaseModel):
    """One snapshot's learning accounts and prequential metrics (see learner_metrics.avsc)."""

    model_config = _STRICT

    learner: str
    model_version: str
    parent_version: str | None = None
    kind: SnapshotKind
    worker: str
    emitted_at: TimestampMillis
    learned: Long
    learned_total: Long
    consumed: Long
    unknown: Long
    late: Long
    duplicate: Long
    invalid: Long
    predicted_at_learn: Long
    offsets: list[LearnedRange]
    next_offsets: list[ResumeOffset]
    metrics: dict[str, dict[str, FiniteDouble]]


class InvalidLabel(ValueError):
    """A labels-topic payload that cannot be learned from: ``code`` is not_json or schema_violation.

    >>> str(InvalidLabel("not_json", "payload is not valid JSON"))
    'not_json: payload is not valid JSON'
    """

    def __init__(self, code: str, reason: str, event_id: str | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.event_id = event_id


_validate_label = Label.__pydantic_validator__.validate_python


def decode_label(raw: bytes | None) -> Label:
    """Decode and validate one JSON label; raise InvalidLabel (never anything else) when it is unusable."""
    if not raw:
        raise InvalidLabel("not_json", "message value is empty")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidLabel("not_json", f"payload is not valid JSON ({exc})") from exc
    if type(data) is not dict:
        raise InvalidLabel("not_json", f"payload is a JSON {type(data).__name__}, expected an object")
    try:
        return _validate_label(data)
    except ValidationError as exc:
        eid = data.get("event_id")
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidLabel("schema_violation", f"field '{where}': {first['msg']}"[:300],
                           eid if type(eid) is str and eid else None) from exc


def encode_label(label: Label) -> bytes:
    return orjson.dumps(label.model_dump())


def encode_learner_metrics(record: LearnerMetrics) -> bytes:
    """JSON bytes of a metrics record.

    >>> rec = LearnerMetrics(learner="logreg", model_version="2", parent_version="1", kind="learned", worker="w",
    ...                      emitted_at=0, learned=3, learned_total=5, consumed=4, unknown=1, late=0, duplicate=0,
    ...                      invalid=0, predicted_at_learn=0, offsets=[], next_offsets=[], metrics={"all": {"n": 3.0}})
    >>> decode_learner_metrics(encode_learner_metrics(rec)) == rec
    True
    """
    return orjson.dumps(record.model_dump())


def decode_learner_metrics(raw: bytes) -> LearnerMetrics:
    data: Any = orjson.loads(raw)
    return LearnerMetrics.model_validate(data)
