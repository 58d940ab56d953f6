"""Pydantic v2 twins of the .avsc contracts (field names, order, types, nullability and defaults match).

Models are strict: a boolean or a string never silently becomes a number, and ints are range-checked so
anything that validates can also be Avro-encoded. Timestamps are ``int`` epoch milliseconds (the Avro
``timestamp-millis`` wire value), not ``datetime``: converting on every event would cost time on the hot path.

>>> ev = FeatureEvent(event_id="e1", entity_id="u1", event_time=1_700_000_000_000, schema_version=1,
...                   features={"amount": 3, "age": 41.5})
>>> ev.features
{'amount': 3.0, 'age': 41.5}
>>> ev.metadata is None
True
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

SUPPORTED_SCHEMA_VERSIONS: frozenset[int] = frozenset({1})

# Avro int/long ranges: a value outside them validates in Python but cannot be written to Avro.
Int = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Long = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TimestampMillis = Long  # epoch milliseconds UTC (Avro long + logicalType timestamp-millis)
# NaN/inf have no meaning as model input and orjson would silently write them as null.
FiniteDouble = Annotated[float, Field(allow_inf_nan=False)]

_STRICT = ConfigDict(extra="forbid", strict=True)


class FeatureEvent(BaseModel):
    """Input event: one entity's features (see feature_event.avsc).

    >>> from pydantic import ValidationError
    >>> try:
    ...     FeatureEvent(event_id="", entity_id="u", event_time=0, schema_version=1, features={"x": True})
    ... except ValidationError as e:
    ...     print([err["type"] for err in e.errors()])
    ['string_too_short', 'float_type']
    """

    model_config = _STRICT

    event_id: Annotated[str, Field(min_length=1)]
    entity_id: str
    event_time: TimestampMillis
    schema_version: Int
    features: dict[str, FiniteDouble]
    metadata: dict[str, str] | None = None


class Prediction(BaseModel):
    """Output record: a score plus the lineage needed to audit it (see prediction.avsc).

    The hot path builds plain dicts (see ``codecs.prediction_to_json_bytes``); this model is for
    consumers, tests and the CLI.
    """

    model_config = _STRICT

    event_id: str
    entity_id: str
    event_time: TimestampMillis
    model_name: str
    model_version: str
    model_sha256: str
    score: FiniteDouble
    label: str
    probabilities: dict[str, FiniteDouble]
    input_hash: str
    scored_at: TimestampMillis
    latency_ms: FiniteDouble
    route: str = "single"
    worker: str
    source_topic: str
    source_partition: Int
    source_offset: Long
    schema_version: Int


class DeadLetter(BaseModel):
    """A message that could not be scored (see dead_letter.avsc).

    ``original_value`` is a bounded prefix of the message value (``schemas.dead_letters`` keeps the letter
    under the broker's message size); ``original_size``/``original_sha256`` describe the whole value and
    the archive keeps it. The three are optional so letters written before they existed still decode.
    """

    model_config = _STRICT

    event_id: str | None = None
    reason_code: str
    reason: str
    source_topic: str
    source_partition: Int
    source_offset: Long
    original_key: bytes | None = None
    original_value: bytes
    original_size: Long | None = None
    original_sha256: str | None = None
    original_truncated: bool = False
    failed_at: TimestampMillis
    worker: str
