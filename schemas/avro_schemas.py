"""The packaged Avro schemas (.avsc) with their Confluent wire ids, parsed once and cached.

Schema ids for Confluent wire framing (``0x00`` + 4-byte big-endian id + Avro body) come from the fixed
local table ``SCHEMA_IDS``: the offline default. With a Confluent Schema Registry configured
(``STREAMSCORE_SCHEMA_REGISTRY_URL``) the registry's ids are used instead: ``schemas.schema_registry``.

>>> schema_id("feature_event")
1
>>> parsed_schema_by_id(1) is parsed_schema("feature_event")
True
>>> parsed_schema("prediction")["name"]
'streamscore.Prediction'
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from fastavro import parse_schema

SCHEMA_IDS: dict[int, str] = {1: "feature_event", 2: "prediction", 3: "dead_letter"}
_IDS_BY_NAME: dict[str, int] = {name: sid for sid, name in SCHEMA_IDS.items()}


# Contracts that only travel as JSON (never Confluent-framed Avro) need no wire id, but their .avsc is
# still the contract their pydantic twin is checked against.
JSON_ONLY_SCHEMAS: frozenset[str] = frozenset({"drift_record", "drift_alert", "retrain_request",
                                              "label", "learner_metrics"})


@functools.cache
def _load(name: str) -> str:
    if name not in _IDS_BY_NAME and name not in JSON_ONLY_SCHEMAS:
        raise KeyError(f"unknown schema {name!r}; known: {sorted(_IDS_BY_NAME.keys() | JSON_ONLY_SCHEMAS)}")
    return (resources.files(__package__) / f"{name}.avsc").read_text(encoding="utf-8")


def raw_schema(name: str) -> dict[str, Any]:
    """The .avsc exactly as shipped, as a fresh dict (callers may mutate it).

    >>> [f["name"] for f in raw_schema("dead_letter")["fields"]][:3]
    ['event_id', 'reason_code', 'reason']
    """
    return json.loads(_load(name))


def _strip_logical_types(node: Any) -> Any:
    # logicalType does not change the binary encoding; removing it stops fastavro from turning every
    # timestamp-millis into a datetime on read, so timestamps stay int epoch millis like the pydantic twins.
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


@functools.cache
def parsed_schema(name: str) -> dict[str, Any]:
    """fastavro-parsed schema for reading/writing (cached; logical types stripped, timestamps are ints).

    Treat the result as read-only: it is shared by every caller.

    >>> parsed_schema("feature_event") is parsed_schema("feature_event")
    True
    """
    return parse_schema(_strip_logical_types(raw_schema(name)))


def parsed_schema_by_id(schema_id: int) -> dict[str, Any]:
    """Parsed schema for a wire schema id; KeyError if the id is not in SCHEMA_IDS.

    >>> parsed_schema_by_id(99)
    Traceback (most recent call last):
    ...
    KeyError: 'unknown schema id 99; known: [1, 2, 3]'
    """
    name = SCHEMA_IDS.get(schema_id)
    if name is None:
        raise KeyError(f"unknown schema id {schema_id}; known: {sorted(SCHEMA_IDS)}")
    return parsed_schema(name)


def schema_id(name: str) -> int:
    """Wire schema id for a schema name; KeyError if unknown.

    >>> schema_id("dead_letter")
    3
    """
    try:
        return _IDS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown schema {name!r}; known: {sorted(_IDS_BY_NAME)}") from None
