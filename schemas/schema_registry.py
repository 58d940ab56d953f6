"""Confluent Schema Registry adapter: registry schema ids for Avro input and Avro predictions.

Without a registry, Confluent-framed Avro uses the fixed local table of ``schemas.avro_schemas``
(``feature_event`` is id 1). A real registry hands out its own ids, starting at 1 for whatever was registered
first, so the local ids mean something else there. With ``STREAMSCORE_SCHEMA_REGISTRY_URL`` set:

- input: ``RegistrySchemaResolver`` maps a framed id to the writer schema the registry holds for it (HTTP
  ``GET /schemas/ids/{id}`` through confluent-kafka's ``SchemaRegistryClient``, once per id, then cached).
  ``schemas.codecs.decode_feature_event(raw, "avro", resolver=...)`` then decodes with it: a registered
  schema whose parsing canonical form is ``feature_event.avsc``'s takes the same strict fast path as the
  local table; another record schema is read *as* a FeatureEvent with Avro schema resolution, or, when it
  cannot be (another record, an incompatible change), is dead-lettered as ``unknown_schema_id``.
- output: ``RegistryAvroEncoder`` writes records with confluent-kafka's own ``AvroSerializer`` under the
  configured subject name strategy (``topic``: ``<topic>-value``, ``record``: ``streamscore.Prediction``,
  ``topic_record``: ``<topic>-streamscore.Prediction``), registering the schema (or only looking it up)
  once per subject; any standard ``AvroDeserializer`` reads the result.

A registry that cannot be asked (connection refused, 5xx, timeout, bad credentials) raises
``SchemaRegistryUnavailable``, which is deliberately *not* an ``InvalidEvent`` nor a ``ValueError``: the
record is not at fault, so it must not become a dead letter; the lane fails and retries it (at-least-once).

>>> client = make_client("http://127.0.0.1:8081", basic_auth="svc:pw")
>>> client._rest_client.auth
('svc', 'pw')
>>> make_client("http://127.0.0.1:8081", basic_auth="no-colon")
Traceback (most recent call last):
...
ValueError: schema_registry_basic_auth must be USER:PASSWORD (a colon between them)
>>> subject_name("topic", "predictions", "streamscore.Prediction")
'predictions-value'
>>> subject_name("topic_record", "predictions", "streamscore.Prediction")
'predictions-streamscore.Prediction'
"""

from __future__ import annotations

import io
import json
import math
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from .avro_schemas import SCHEMA_IDS, _load, _strip_logical_types, parsed_schema
from .codecs import _raise_non_finite
from .records import Prediction

__all__ = [
    "STRATEGIES",
    "RegistryAvroEncoder",
    "RegistrySchemaResolver",
    "SchemaRegistryUnavailable",
    "SubjectStrategy",
    "decode_prediction_avro",
    "make_client",
    "subject_name",
]

SubjectStrategy = Literal["topic", "record", "topic_record"]
# The callables (not the newer 'subject.name.strategy.type' strings) work on every confluent-kafka >= 2.6.
STRATEGIES: dict[str, Callable[[SerializationContext, str | None], str | None]] = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic_record": topic_record_subject_name_strategy,
}

# Schema Registry error codes (its REST API reference): a schema id or a subject that does not exist.
_SCHEMA_NOT_FOUND, _SUBJECT_NOT_FOUND, _VERSION_NOT_FOUND = 40403, 40401, 40402


class SchemaRegistryUnavailable(RuntimeError):
    """The registry could not answer (network, 5xx, auth, refused registration): not the record's fault."""


def make_client(
    url: str,
    *,
    basic_auth: str | None = None,
    ca_file: Path | str | None = None,
    timeout_s: float = 5.0,
    max_retries: int = 2,
) -> SchemaRegistryClient:
    """A confluent-kafka ``SchemaRegistryClient`` for ``url`` (comma-separated URLs fail over in turn).

    ``basic_auth`` is ``USER:PASSWORD`` (Confluent Cloud: API key and secret). The client's own default
    timeout is none at all, so a hung registry would hang the lane: 5 s here, and 2 retries 0.2-2 s apart.
    """
    conf: dict[str, Any] = {"url": url, "timeout": timeout_s, "max.retries": max_retries,
                            "retries.wait.ms": 200, "retries.max.wait.ms": 2000}
    if basic_auth is not None:
        if ":" not in basic_auth:  # checked here: the client's own message is fine, but pydantic's would echo it
            raise ValueError("schema_registry_basic_auth must be USER:PASSWORD (a colon between them)")
        conf["basic.auth.user.info"] = basic_auth
    if ca_file is not None:
        conf["ssl.ca.location"] = str(ca_file)
    return SchemaRegistryClient(conf)


def subject_name(strategy: str, topic: str, record_name: str) -> str:
    """The subject ``strategy`` gives a value of ``record_name`` written to ``topic``."""
    try:
        func = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown subject name strategy {strategy!r}; expected one of {sorted(STRATEGIES)}") from None
    subject = func(SerializationContext(topic, MessageField.VALUE), record_name)
    assert subject is not None  # record_name is given, so every strategy names a subject
    return subject


def _unavailable(action: str, exc: Exception) -> SchemaRegistryUnavailable:
    return SchemaRegistryUnavailable(f"Schema Registry could not {action}: {type(exc).__name__}: {exc}")


# Local contracts by parsing canonical form: a registered schema that encodes exactly like one of ours
# (docs, defaults, logical types and field order of JSON keys aside) is decoded with our shared parsed object.
_LOCAL_BY_CANONICAL: dict[str, str] = {
    to_parsing_canonical_form(parse_schema(json.loads(_load(name)))): name for name in SCHEMA_IDS.values()
}


class RegistrySchemaResolver:
    """Registry schema id -> fastavro-parsed writer schema, for ``decode_feature_event(..., resolver=)``.

    Returns the very object ``parsed_schema(name)`` when the registered schema has the parsing canonical
    form of a local contract (so the decoder can tell "ours" by identity, no comparison per message).
    Raises ``KeyError(reason)`` for an id the registry does not have, a non-Avro schema or one with
    references (both not supported), and ``SchemaRegistryUnavailable`` when the registry cannot answer.

    Ids are immutable in a registry, so found schemas are cached for good (at most ``max_ids``, the
    oldest dropped first); an id it does not have is remembered for ``negative_ttl_s`` (a stream of bad
    ids must not become one HTTP request each, but the id may be registered later).
    """

    def __init__(self, client: SchemaRegistryClient, *, max_ids: int = 10_000, negative_ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.max_ids = max_ids
        self.negative_ttl_s = negative_ttl_s
        self._clock = clock
        self._found: dict[int, Any] = {}
        self._missing: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()  # one lookup per id even when lanes in several threads miss together
        self.lookups = 0  # registry round trips made (the client caches too; this counts ours)

    def __call__(self, schema_id: int) -> Any:
        hit = self._found.get(schema_id)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._found.get(schema_id)
            if hit is not None:
                return hit
            missing = self._missing.get(schema_id)
            if missing is not None and missing[0] > self._clock():
                raise KeyError(missing[1])
            try:
                parsed = self._fetch(schema_id)
            except KeyError as e:
                if len(self._missing) >= self.max_ids:
                    self._missing.clear()
                self._missing[schema_id] = (self._clock() + self.negative_ttl_s, e.args[0])
                raise
            if len(self._found) >= self.max_ids:
                self._found.pop(next(iter(self._found)))
            self._found[schema_id] = parsed
            self._missing.pop(schema_id, None)
            return parsed

    def _fetch(self, schema_id: int) -> Any:
        self.lookups += 1
        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as e:
            if e.http_status_code == 404 and e.error_code in (_SCHEMA_NOT_FOUND, SchemaRegistryError.UNKNOWN):
                raise KeyError(f"schema id {schema_id} is not in the Schema Registry") from None
            raise _unavailable(f"resolve schema id {schema_id}", e) from e
        except Exception as e:  # httpx transport errors, TLS errors: the registry is unreachable
            raise _unavailable(f"resolve schema id {schema_id}", e) from e
        kind = schema.schema_type or "AVRO"
        if kind != "AVRO":
            raise KeyError(f"schema id {schema_id} is a {kind} schema, not Avro")
        if schema.references:
            raise KeyError(f"schema id {schema_id} uses schema references, which are not supported")
        try:
            raw = json.loads(schema.schema_str)
            canonical = to_parsing_canonical_form(parse_schema(raw))
        except Exception as e:  # the registry validates schemas, so this is a registry we do not understand
            raise KeyError(f"schema id {schema_id} is not a schema fastavro can parse ({type(e).__name__})") from e
        local = _LOCAL_BY_CANONICAL.get(canonical)
        if local is not None:
            return parsed_schema(local)
        return parse_schema(_strip_logical_types(raw))


class RegistryAvroEncoder:
    """Confluent-framed Avro bytes with a registry id, written by confluent-kafka's ``AvroSerializer``.

    ``schema_name`` is a local contract (``prediction`` or ``feature_event``); its .avsc as shipped is what
    gets registered. ``auto_register=False`` only looks the schema up (``POST /subjects/{subject}``), for
    registries where producers may not register.
    """

    def __init__(self, client: SchemaRegistryClient, schema_name: str = "prediction", *,
                 strategy: SubjectStrategy = "topic", auto_register: bool = True) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown subject name strategy {strategy!r}; expected one of {sorted(STRATEGIES)}")
        self.schema_name = schema_name
        self.strategy = strategy
        self.record_name = parsed_schema(schema_name)["name"]
        self._serializer = AvroSerializer(
            client, Schema(_load(schema_name), "AVRO"),
            conf={"auto.register.schemas": auto_register, "subject.name.strategy": STRATEGIES[strategy]},
        )
        self._contexts: dict[str, SerializationContext] = {}

    def subject(self, topic: str) -> str:
        """The subject the schema is registered under for ``topic``."""
        return subject_name(self.strategy, topic, self.record_name)

    def encode(self, record: dict[str, Any], topic: str) -> bytes:
        """``record`` (plain values; timestamps as int epoch millis) as framed Avro for ``topic``.

        Raises ValueError for a record that does not fit the schema, ``SchemaRegistryUnavailable`` when the
        schema cannot be registered or looked up (only the first record of each subject asks the registry).
        """
        ctx = self._contexts.get(topic)
        if ctx is None:
            ctx = self._contexts[topic] = SerializationContext(topic, MessageField.VALUE)
        try:
            out = self._serializer(record, ctx)
        except SchemaRegistryError as e:
            raise _unavailable(f"register or look up subject {self.subject(topic)!r}", e) from e
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # fastavro: the record does not fit
            raise ValueError(f"record does not fit {self.schema_name}.avsc: {type(e).__name__}: {e}") from e
        except Exception as e:  # httpx transport errors: the registry is unreachable
            raise _unavailable(f"register or look up subject {self.subject(topic)!r}", e) from e
        assert out is not None  # only a None record serializes to None
        return out

    def encode_prediction(self, record: dict[str, Any], topic: str) -> bytes:
        """Like ``encode``, refusing non-finite numbers exactly as ``prediction_to_json_bytes`` does.

        Avro could carry a NaN, but a NaN score is a diverged model, not a prediction: the same ValueError
        as on the JSON path lets ``RecordBuilder`` treat both formats alike.
        """
        if not math.isfinite(record["score"] + record["latency_ms"] + sum(record["probabilities"].values())):
            _raise_non_finite(record)
        return self.encode(record, topic)


def decode_prediction_avro(raw: bytes, resolver: RegistrySchemaResolver) -> Prediction:
    """A Prediction from registry-framed Avro (what ``RegistryAvroEncoder`` writes), for our own readers of the
    prediction topic (archiver, tail). Raises ValueError if it is not one; ``SchemaRegistryUnavailable`` as above.
    """
    if len(raw) < 5 or raw[0] != 0:
        raise ValueError("not Confluent Avro framing (0x00 + 4-byte schema id + body)")
    (sid,) = struct.unpack_from(">I", raw, 1)
    try:
        writer = resolver(sid)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    buf = io.BytesIO(raw)
    buf.seek(5)
    try:
        ours = parsed_schema("prediction")
        data = schemaless_reader(buf, writer, None if writer is ours else ours)
    except Exception as e:  # fastavro: a truncated body, or a writer schema that is not a Prediction
        raise ValueError(f"schema id {sid} does not decode as streamscore.Prediction ({type(e).__name__}: {e})") from e
    if buf.tell() != len(raw):
        raise ValueError(f"Avro body has {len(raw) - buf.tell()} trailing bytes after the prediction")
    return Prediction.model_validate(data)
