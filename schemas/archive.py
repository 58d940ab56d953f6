"""Archived Kafka records: pydantic twins of archived_{event,prediction,label}.avsc and their schemas.

The archiver (streams/archive/lane.py) writes every record it consumes into Avro container segments. A segment
keeps the exact Kafka record (topic, partition, offset, timestamp, key, value, headers) - that is the data,
and what dataset version ids are computed over - plus the decoded FeatureEvent, Prediction or Label when the
value decodes, so lineage and replay need no second decoding pass.

The .avsc files refer to ``streamscore.FeatureEvent``, ``streamscore.Prediction``, ``streamscore.Label`` and
``streamscore.KafkaHeader`` by name; ``archive_schema`` expands those references into one standalone schema
(each named type defined at its first use), which is what every segment file carries in its header, so any
Avro tool can read a segment without this code.

>>> rec = ArchivedEvent(topic="features", partition=0, offset=7, key=b"e1", value=b"{}", headers=[],
...                     invalid_reason="schema_violation")
>>> rec.event is None, rec.timestamp_ms
(True, None)
>>> [f["name"] for f in archive_schema("archived_event")["fields"]][-2:]
['event', 'invalid_reason']
>>> parsed_archive_schema("archived_prediction")["name"]
'streamscore.ArchivedPrediction'
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any, Literal

from fastavro import parse_schema
from pydantic import BaseModel, ConfigDict

from .avro_schemas import _strip_logical_types  # timestamps stay int epoch millis on read
from .labels import Label
from .records import FeatureEvent, Int, Long, Prediction, TimestampMillis

__all__ = ["ARCHIVE_SCHEMAS", "ArchivedEvent", "ArchivedLabel", "ArchivedPrediction", "KafkaHeader", "archive_schema",
           "parsed_archive_schema"]

ArchiveSchemaName = Literal["archived_event", "archived_prediction", "archived_label"]
ARCHIVE_SCHEMAS: tuple[str, ...] = ("archived_event", "archived_prediction", "archived_label")
_STRICT = ConfigDict(extra="forbid", strict=True)


class KafkaHeader(BaseModel):
    """One Kafka record header (see archived_event.avsc)."""

    model_config = _STRICT

    key: str
    value: bytes | None = None


class _ArchivedRecord(BaseModel):
    """The Kafka record as consumed: the leading fields every archived_*.avsc shares, in their order."""

    model_config = _STRICT

    topic: str
    partition: Int
    offset: Long
    timestamp_ms: TimestampMillis | None = None
    key: bytes | None = None
    value: bytes | None = None
    headers: list[KafkaHeader]


class ArchivedEvent(_ArchivedRecord):
    """An input-topic record as archived (see archived_event.avsc)."""

    event: FeatureEvent | None = None
    invalid_reason: str | None = None


class ArchivedPrediction(_ArchivedRecord):
    """A prediction-topic record as archived (see archived_prediction.avsc)."""

    prediction: Prediction | None = None
    invalid_reason: str | None = None


class ArchivedLabel(_ArchivedRecord):
    """A labels-topic record as archived (see archived_label.avsc)."""

    label: Label | None = None
    invalid_reason: str | None = None


def _read(name: str) -> dict[str, Any]:
    return json.loads((resources.files(__package__) / f"{name}.avsc").read_text(encoding="utf-8"))


@functools.cache
def _named_definitions() -> dict[str, dict[str, Any]]:
    """Full definitions of the named types the archive schemas refer to, by full name."""
    header = next(f["type"]["items"] for f in _read("archived_event")["fields"] if f["name"] == "headers")
    return {
        "streamscore.FeatureEvent": _read("feature_event"),
        "streamscore.Prediction": _read("prediction"),
        "streamscore.Label": _read("label"),
        "streamscore.KafkaHeader": {**header, "namespace": "streamscore"},
    }


def _expand(node: Any, defined: set[str]) -> Any:
    # Avro allows a named type to be defined once per schema; later uses must be the bare name.
    if isinstance(node, str):
        if node in _named_definitions() and node not in defined:
            defined.add(node)
            return _expand(copy.deepcopy(_named_definitions()[node]), defined)
        return node
    if isinstance(node, list):
        return [_expand(item, defined) for item in node]
    if isinstance(node, dict):
        if node.get("type") == "record":
            full = node["name"] if "." in node["name"] else f"{node.get('namespace', 'streamscore')}.{node['name']}"
            defined.add(full)
        return {k: (_expand(v, defined) if k in ("type", "items", "values", "fields") else v) for k, v in node.items()}
    return node


def archive_schema(name: ArchiveSchemaName) -> dict[str, Any]:
    """The standalone schema (named references expanded, logical types kept) as a fresh dict.

    >>> s = archive_schema("archived_prediction")
    >>> next(f for f in s["fields"] if f["name"] == "headers")["type"]["items"]["name"]
    'KafkaHeader'
    """
    if name not in ARCHIVE_SCHEMAS:
        raise KeyError(f"unknown archive schema {name!r}; known: {list(ARCHIVE_SCHEMAS)}")
    return _expand(_read(name), set())


@functools.cache
def parsed_archive_schema(name: ArchiveSchemaName) -> dict[str, Any]:
    """fastavro-parsed form of ``archive_schema(name)`` (cached, shared: treat as read-only)."""
    return parse_schema(_strip_logical_types(archive_schema(name)))
