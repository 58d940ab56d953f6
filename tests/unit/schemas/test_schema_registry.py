"""Schema Registry: the real confluent-kafka client and serializers against a stand-in registry server.

No Confluent Schema Registry can be installed here, so ``StandInRegistry`` (tests/support/schema_registry_server.py)
is a small HTTP server on 127.0.0.1 that implements only the REST endpoints confluent-kafka 2.16's
``SchemaRegistryClient``, ``AvroSerializer`` and ``AvroDeserializer`` call on these paths, with the registry's
response shapes and error codes:

- ``POST /subjects/{subject}/versions``   register (the serializer, auto.register.schemas=true)
- ``POST /subjects/{subject}``            look up a schema under a subject (auto.register.schemas=false)
- ``GET  /schemas/ids/{id}``              a writer schema by id (the deserializer, our resolver)
- ``GET  /subjects/{subject}/versions/latest``  (use.latest.version; used by the tests to inspect)
- ``GET  /associations/resources/{ns}/{topic}``  answered 404, as a registry without the associations API:
  the serializer's default (associated) subject strategy then falls back to the topic strategy.

Ids are global and start at 1; the same schema under two subjects keeps its id (as the registry does).
Everything else the client might ask is answered 404 and recorded in ``unexpected`` (asserted empty).
The interop tests use the ``avro`` package (the reference implementation) against our fastavro bytes.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import struct
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import numpy as np
import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_reader, schemaless_writer

from models.scorer import ScoreBatch
from schemas.avro_schemas import parsed_schema, raw_schema
from schemas.codecs import (
    InvalidEvent,
    decode_feature_event,
    decode_prediction,
    encode_feature_event,
    prediction_to_json_bytes,
)
from schemas.hot_path import decode_rows
from schemas.records import FeatureEvent
from schemas.schema_registry import (
    RegistryAvroEncoder,
    RegistrySchemaResolver,
    SchemaRegistryUnavailable,
    decode_prediction_avro,
    make_client,
    subject_name,
)
from schemas.validation import FeatureValidator
from streams.scoring.records import InboundMessage, RecordBuilder
from streams.settings import SECRET_FIELDS, Settings
from tests.conftest import free_port
from tests.support.schema_registry_server import StandInRegistry

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
FEATURE_AVSC = (SCHEMAS / "feature_event.avsc").read_text()
PREDICTION_AVSC = (SCHEMAS / "prediction.avsc").read_text()
ORDER_AVSC = json.dumps({"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "order_id", "type": "string"}, {"name": "customer", "type": "string"},
    {"name": "amount_cents", "type": "long"}]})
TOPIC = "features-avro"


# --- the stand-in registry --------------------------------------------------------------------------------


@pytest.fixture
def registry():
    server = StandInRegistry()
    # Something else was registered first, as in any shared registry: it gets id 1, the local feature_event id.
    assert server.register("orders-value", ORDER_AVSC) == 1
    yield server
    assert server.unexpected == []  # the client asked nothing the stand-in does not implement
    server.close()


def client_for(server: StandInRegistry, **kw: Any):
    return make_client(server.url, **kw)


def events(n: int, tag: str = "e") -> list[FeatureEvent]:
    return [FeatureEvent(event_id=f"{tag}{i}", entity_id=f"acct-{i % 7}", event_time=1_700_000_000_000 + i,
                         schema_version=1, features={"amount": 12.5 + i, "age_days": float(i)},
                         metadata={"src": "t"} if i % 2 else None) for i in range(n)]


def prediction(i: int, topic: str = "predictions") -> dict[str, Any]:
    return {"event_id": f"e{i}", "entity_id": f"acct-{i}", "event_time": 1_700_000_000_000 + i,
            "model_name": "demo-risk", "model_version": "1", "model_sha256": "ab" * 32, "score": i / 100,
            "label": "risky" if i % 2 else "legit", "probabilities": {"legit": 1 - i / 100, "risky": i / 100},
            "input_hash": "cd" * 32, "scored_at": 1_700_000_000_500 + i, "latency_ms": 1.5, "route": "single",
            "worker": "w1", "source_topic": TOPIC, "source_partition": i % 4, "source_offset": i,
            "schema_version": 1}


def millis(value: Any) -> Any:
    """Timestamps as epoch millis: readers that honour logicalType return datetimes."""
    if isinstance(value, dt.datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: millis(v) for k, v in value.items()}
    return value


def avro_read(body: bytes, avsc: str) -> dict[str, Any]:
    """The reference implementation's reading of an Avro body."""
    schema = avro.schema.parse(avsc)
    return avro.io.DatumReader(schema, schema).read(avro.io.BinaryDecoder(io.BytesIO(body)))


def avro_write(datum: dict[str, Any], avsc: str) -> bytes:
    buf = io.BytesIO()
    avro.io.DatumWriter(avro.schema.parse(avsc)).write(datum, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def framed(sid: int, body: bytes) -> bytes:
    return struct.pack(">BI", 0, sid) + body


# --- input: events from a standard AvroSerializer ----------------------------------------------------------


def test_events_from_a_standard_avro_serializer_are_decoded_with_one_registry_lookup(registry):
    # A producer of another team: the stock serializer with its default config and our .avsc.
    serializer = AvroSerializer(client_for(registry), FEATURE_AVSC)
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    sent = events(50)
    values = [serializer(ev.model_dump(), ctx) for ev in sent]
    assert registry.subjects["features-avro-value"] == [2]  # the registry's id, not the local table's 1
    assert {v[:5] for v in values} == {b"\x00\x00\x00\x00\x02"}

    # Today's decoder (local table): id 2 is 'prediction' there, so every event would be dead-lettered.
    for value in values:
        with pytest.raises(InvalidEvent) as err:
            decode_feature_event(value, "avro")
        assert err.value.code == "unknown_schema_id"

    resolver = RegistrySchemaResolver(client_for(registry))
    assert resolver(2) is parsed_schema("feature_event")  # the registered text is ours: the local fast path
    got = [decode_feature_event(v, "avro", resolver=resolver) for v in values]
    assert got == sent
    assert [decode_feature_event(v, "auto", resolver=resolver) for v in values] == sent
    assert resolver.lookups == 1 and registry.count("GET", "/schemas/ids/2") == 1  # once for 100 decodes

    rows = decode_rows(values, "avro", FeatureValidator(["amount", "age_days"]), resolver=resolver)
    assert rows.index == list(range(50)) and rows.errors == []
    assert rows.X[:, 0].tolist() == [ev.features["amount"] for ev in sent]
    assert registry.count("GET", "/schemas/ids/2") == 1


def test_registry_ids_are_authoritative_id_1_is_not_ours_there(registry):
    resolver = RegistrySchemaResolver(client_for(registry))
    local = encode_feature_event(events(1)[0], "avro")  # framed with the local id 1 = shop.Order here
    with pytest.raises(InvalidEvent) as err:
        decode_feature_event(local, "avro", resolver=resolver)
    assert err.value.code == "unknown_schema_id"
    assert "'shop.Order'" in err.value.reason and "cannot be read as streamscore.FeatureEvent" in err.value.reason
    assert decode_feature_event(local, "avro") == events(1)[0]  # without a registry: unchanged


def test_unknown_ids_are_dead_letters_and_looked_up_once_per_ttl(registry):
    clock = [0.0]
    resolver = RegistrySchemaResolver(client_for(registry), negative_ttl_s=30.0, clock=lambda: clock[0])
    value = framed(999, b"\x02e")
    for _ in range(20):
        with pytest.raises(InvalidEvent) as err:
            decode_feature_event(value, "avro", resolver=resolver)
        assert err.value.code == "unknown_schema_id"
        assert err.value.reason.startswith("schema id 999 is not in the Schema Registry")
    assert registry.count("GET", "/schemas/ids/999") == 1
    clock[0] = 31.0  # the id may have been registered meanwhile: asked again once the TTL is over
    assert registry.register("features-avro-value", FEATURE_AVSC) == 2  # (still not 999)
    with pytest.raises(InvalidEvent):
        decode_feature_event(value, "avro", resolver=resolver)
    assert registry.count("GET", "/schemas/ids/999") == 2


def test_non_avro_schema_ids_are_dead_letters(registry):
    sid = registry.register("features-json-value", '{"type": "object"}', "JSON")
    with pytest.raises(InvalidEvent) as err:
        decode_feature_event(framed(sid, b"{}"), "avro", resolver=RegistrySchemaResolver(client_for(registry)))
    assert (err.value.code, err.value.reason) == (
        "unknown_schema_id", f"schema id {sid} is a JSON schema, not Avro; expected a streamscore.FeatureEvent schema")


def test_an_evolved_writer_schema_is_read_as_a_feature_event(registry):
    # v2 of a producer: no metadata field (ours defaults it to null), one field we do not know (ignored).
    evolved = raw_schema("feature_event")
    evolved["fields"] = [f for f in evolved["fields"] if f["name"] != "metadata"]
    evolved["fields"].append({"name": "source", "type": "string", "default": "web"})
    serializer = AvroSerializer(client_for(registry), json.dumps(evolved))
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    value = serializer({"event_id": "v2-1", "entity_id": "u", "event_time": 5, "schema_version": 1,
                        "features": {"amount": 3.0}, "source": "app"}, ctx)
    resolver = RegistrySchemaResolver(client_for(registry))
    ev = decode_feature_event(value, "avro", resolver=resolver)
    assert ev == FeatureEvent(event_id="v2-1", entity_id="u", event_time=5, schema_version=1,
                              features={"amount": 3.0}, metadata=None)
    assert resolver(2) is not parsed_schema("feature_event")

    # The strict checks still apply, against the writer's layout: a feature map key written twice.
    schema = resolver(2)
    body = io.BytesIO()
    schemaless_writer(body, schema, {"event_id": "v2-2", "entity_id": "u", "event_time": 5, "schema_version": 1,
                                     "features": {"amount": 3.0}, "source": "app"})
    raw = body.getvalue()
    # features block: count 1, key "amount", 8 bytes, end 0 -> count 2 with the same entry twice
    entry = bytes([12]) + b"amount" + struct.pack("<d", 3.0)
    start = raw.index(bytes([2]) + entry)
    doubled = raw[:start] + bytes([4]) + entry + entry + raw[start + 1 + len(entry):]
    with pytest.raises(InvalidEvent) as err:
        decode_feature_event(framed(2, doubled), "avro", resolver=resolver)
    assert err.value.code == "duplicate_key" and err.value.event_id == "v2-2"


def test_strict_checks_apply_on_the_registry_fast_path(registry):
    sid = registry.register(f"{TOPIC}-value", FEATURE_AVSC)
    resolver = RegistrySchemaResolver(client_for(registry))
    body = encode_feature_event(events(1)[0], "avro")[5:]
    for bad, code in ((body + b"\x00", "bad_avro"), (body[:4], "bad_avro")):
        with pytest.raises(InvalidEvent) as err:
            decode_feature_event(framed(sid, bad), "avro", resolver=resolver)
        assert err.value.code == code
    # event_time 1700000000000 re-encoded as an overlong varint (one extra 0x80 .. 0x00 pair)
    ev = FeatureEvent(event_id="e", entity_id="u", event_time=0, schema_version=1, features={"x": 1.0})
    canonical = encode_feature_event(ev, "avro")[5:]
    overlong = canonical[:4] + b"\x80\x00" + canonical[5:]
    with pytest.raises(InvalidEvent) as err:
        decode_feature_event(framed(sid, overlong), "avro", resolver=resolver)
    assert err.value.code == "bad_avro" and "overlong varint" in err.value.reason


# --- output: our records read by a standard AvroDeserializer ----------------------------------------------


@pytest.mark.parametrize(("strategy", "subject"), [
    ("topic", "predictions-value"), ("record", "streamscore.Prediction"),
    ("topic_record", "predictions-streamscore.Prediction")])
def test_our_avro_predictions_are_read_by_a_standard_avro_deserializer(registry, strategy, subject):
    encoder = RegistryAvroEncoder(client_for(registry), "prediction", strategy=strategy)
    assert encoder.subject("predictions") == subject == subject_name(strategy, "predictions", "streamscore.Prediction")
    records = [prediction(i) for i in range(30)]
    values = [encoder.encode_prediction(r, "predictions") for r in records]
    assert registry.subjects == {"orders-value": [1], subject: [2]}
    assert registry.count("POST", f"/subjects/{subject}/versions") == 1  # registered once, then cached
    assert {v[:5] for v in values} == {b"\x00\x00\x00\x00\x02"}

    # A consumer of another team: its own client, the stock deserializer, no schema of its own.
    deserializer = AvroDeserializer(client_for(registry))
    ctx = SerializationContext("predictions", MessageField.VALUE)
    assert [millis(deserializer(v, ctx)) for v in values] == records
    assert registry.count("GET", "/schemas/ids/2") == 1


def test_our_own_readers_decode_avro_predictions(registry):
    encoder = RegistryAvroEncoder(client_for(registry), "prediction")
    resolver = RegistrySchemaResolver(client_for(registry))
    records = [prediction(i) for i in range(5)]
    got = [decode_prediction_avro(encoder.encode_prediction(r, "predictions"), resolver) for r in records]
    assert [p.model_dump() for p in got] == records
    value = encoder.encode_prediction(records[0], "predictions")
    for bad, message in ((value + b"\x00", "1 trailing bytes"), (value[:20], "does not decode"),
                         (framed(1, value[5:]), "does not decode as streamscore.Prediction"),
                         (framed(77, value[5:]), "schema id 77 is not in the Schema Registry"),
                         (b'{"score": 1}', "not Confluent Avro framing")):
        with pytest.raises(ValueError, match=message):
            decode_prediction_avro(bad, resolver)


def test_predictions_to_two_topics_share_the_registry_id(registry):
    encoder = RegistryAvroEncoder(client_for(registry), "prediction")
    a = encoder.encode_prediction(prediction(1), "predictions")
    b = encoder.encode_prediction(prediction(1), "predictions-shadow")
    assert a == b and a[:5] == b"\x00\x00\x00\x00\x02"
    assert registry.subjects == {"orders-value": [1], "predictions-value": [2], "predictions-shadow-value": [2]}


def test_lookup_only_mode_finds_a_registered_schema_and_fails_clearly_without_one(registry):
    encoder = RegistryAvroEncoder(client_for(registry), "prediction", auto_register=False)
    with pytest.raises(SchemaRegistryUnavailable, match="subject 'predictions-value'.*not found"):
        encoder.encode_prediction(prediction(0), "predictions")
    assert registry.subjects.get("predictions-value") is None  # nothing was registered
    sid = registry.register("predictions-value", PREDICTION_AVSC)  # by the platform team
    value = encoder.encode_prediction(prediction(0), "predictions")
    assert value[:5] == framed(sid, b"")
    assert registry.count("POST", "/subjects/predictions-value") == 2  # the failed look-up and the good one
    assert registry.count("POST", "/subjects/predictions-value/versions") == 0


def test_feature_events_written_by_our_encoder_are_read_back_by_both_sides(registry):
    encoder = RegistryAvroEncoder(client_for(registry), "feature_event")
    sent = events(10)
    values = [encoder.encode(ev.model_dump(), TOPIC) for ev in sent]
    resolver = RegistrySchemaResolver(client_for(registry))
    assert [decode_feature_event(v, "avro", resolver=resolver) for v in values] == sent
    deserializer = AvroDeserializer(client_for(registry))
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    assert [millis(deserializer(v, ctx)) for v in values] == [ev.model_dump() for ev in sent]


def test_a_prediction_that_is_not_finite_or_does_not_fit_is_a_value_error(registry):
    encoder = RegistryAvroEncoder(client_for(registry), "prediction")
    bad = {**prediction(0), "score": float("nan")}
    with pytest.raises(ValueError) as avro_err:
        encoder.encode_prediction(bad, "predictions")
    with pytest.raises(ValueError) as json_err:
        prediction_to_json_bytes(bad)
    assert str(avro_err.value) == str(json_err.value) == (
        "prediction has a non-finite score/latency_ms/probability: score=nan")
    missing = prediction(0)
    del missing["label"]
    with pytest.raises(ValueError, match="does not fit prediction.avsc"):
        encoder.encode_prediction(missing, "predictions")


# --- faults: the registry cannot answer --------------------------------------------------------------------


def test_an_unreachable_registry_is_not_a_dead_letter(registry):
    dead = make_client(f"http://127.0.0.1:{free_port()}", timeout_s=1.0, max_retries=1)
    with pytest.raises(SchemaRegistryUnavailable, match="resolve schema id 2"):
        decode_feature_event(framed(2, b"\x02e"), "avro", resolver=RegistrySchemaResolver(dead))
    with pytest.raises(SchemaRegistryUnavailable, match="register or look up subject 'predictions-value'"):
        RegistryAvroEncoder(dead, "prediction").encode_prediction(prediction(0), "predictions")
    assert not issubclass(SchemaRegistryUnavailable, ValueError | InvalidEvent)


def test_a_failing_registry_is_retried_then_reported_and_nothing_is_cached(registry):
    registry.register(f"{TOPIC}-value", FEATURE_AVSC)
    resolver = RegistrySchemaResolver(client_for(registry, max_retries=2))
    registry.fail_status = 503
    with pytest.raises(SchemaRegistryUnavailable, match="HTTP status code 503"):
        resolver(2)
    assert registry.count("GET", "/schemas/ids/2") == 3  # the first try and max_retries=2 retries
    registry.fail_status = None  # recovered: the same id now resolves (a failure is not remembered)
    assert resolver(2) is parsed_schema("feature_event")
    assert registry.count("GET", "/schemas/ids/2") == 4


def test_basic_auth_reaches_the_registry_and_a_wrong_one_fails_clearly():
    server = StandInRegistry(auth=("svc-score", "pa55"))
    try:
        sid = server.register("features-avro-value", FEATURE_AVSC)
        good = RegistrySchemaResolver(make_client(server.url, basic_auth="svc-score:pa55"))
        assert good(sid) is parsed_schema("feature_event")
        wrong = RegistrySchemaResolver(make_client(server.url, basic_auth="svc-score:nope"))
        with pytest.raises(SchemaRegistryUnavailable, match="Unauthorized"):
            wrong(sid)
        assert server.unexpected == []
    finally:
        server.close()


# --- interop with the reference implementation (the avro package) -----------------------------------------


def test_our_feature_event_bytes_decode_with_the_avro_package_and_back(registry):
    sid = registry.register(f"{TOPIC}-value", FEATURE_AVSC)
    resolver = RegistrySchemaResolver(client_for(registry))
    for ev in events(6):
        ours = encode_feature_event(ev, "avro")  # fastavro, local framing
        assert millis(avro_read(ours[5:], FEATURE_AVSC)) == ev.model_dump()
        theirs = avro_write({**ev.model_dump(), "event_time": dt.datetime.fromtimestamp(
            ev.event_time / 1000, dt.timezone.utc)}, FEATURE_AVSC)
        assert theirs == ours[5:]  # both write the one canonical encoding
        assert decode_feature_event(framed(sid, theirs), "avro", resolver=resolver) == ev
        assert decode_feature_event(framed(1, theirs), "avro") == ev


def test_our_prediction_bytes_decode_with_the_avro_package_and_back(registry):
    encoder = RegistryAvroEncoder(client_for(registry), "prediction")
    deserializer = AvroDeserializer(client_for(registry))
    ctx = SerializationContext("predictions", MessageField.VALUE)
    for i in range(6):
        record = prediction(i)
        ours = encoder.encode_prediction(record, "predictions")
        assert millis(avro_read(ours[5:], PREDICTION_AVSC)) == record
        as_datetimes = {**record, **{k: dt.datetime.fromtimestamp(record[k] / 1000, dt.timezone.utc)
                                     for k in ("event_time", "scored_at")}}
        theirs = framed(2, avro_write(as_datetimes, PREDICTION_AVSC))
        assert theirs == ours
        assert millis(deserializer(theirs, ctx)) == record
        assert schemaless_reader(io.BytesIO(theirs[5:]), parsed_schema("prediction"), None) == record


# --- settings ----------------------------------------------------------------------------------------------


def test_schema_registry_settings_and_the_secret_never_printed(tmp_path, monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("STREAMSCORE_")]:
        monkeypatch.delenv(key)
    secret = "svc-score:s3cr3t-registry-0123456789"
    s = Settings(schema_registry_url="https://sr-0:8081,https://sr-1:8081", schema_registry_basic_auth=secret,
                 schema_registry_subject_strategy="topic_record", avro_predictions=True)
    assert "schema_registry_basic_auth" in SECRET_FIELDS
    field = Settings.model_fields["schema_registry_basic_auth"]
    assert field.repr is False and field.exclude is True
    for text in (repr(s), str(s), json.dumps(s.model_dump(mode="json")), s.model_dump_json(), repr(s.kafka),
                 repr(s.scoring)):
        assert "s3cr3t" not in text
    env = s.as_env()
    assert env["STREAMSCORE_SCHEMA_REGISTRY_BASIC_AUTH"] == secret
    assert env["STREAMSCORE_SCHEMA_REGISTRY_URL"] == "https://sr-0:8081,https://sr-1:8081"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = Settings()
    assert child == s and child.schema_registry_basic_auth == secret and child.avro_predictions

    auth_file = tmp_path / "sr-auth"
    auth_file.write_text(secret + "\n")
    monkeypatch.delenv("STREAMSCORE_SCHEMA_REGISTRY_BASIC_AUTH")
    monkeypatch.setenv("STREAMSCORE_SCHEMA_REGISTRY_BASIC_AUTH_FILE", str(auth_file))
    from_file = Settings()
    assert from_file.schema_registry_basic_auth == secret
    assert "STREAMSCORE_SCHEMA_REGISTRY_BASIC_AUTH" not in from_file.as_env()  # the child reads the file


def test_schema_registry_settings_refuse_mistakes():
    with pytest.raises(ValueError, match="avro_predictions needs schema_registry_url"):
        Settings(avro_predictions=True)
    with pytest.raises(ValueError, match=re.escape("schema_registry_url must be http(s)://host:port")):
        Settings(schema_registry_url="sr-0:8081")
    with pytest.raises(ValueError, match="schema_registry_subject_strategy"):
        Settings(schema_registry_subject_strategy="topic-name")
    assert Settings().schema_registry_url is None and not Settings().avro_predictions  # offline default


# --- wiring: RecordBuilder writes the same predictions as Avro ----------------------------------------------


def test_record_builder_avro_predictions_equal_its_json_ones(registry):
    class Model:
        name, version, sha256, classes = "m", "3", "ab" * 32, ["legit", "risky"]

    sent = events(20)
    good = [(InboundMessage(TOPIC, 2, 100 + i, None, b""), ev) for i, ev in enumerate(sent)]
    scores = np.linspace(0.05, 0.95, 20)
    batch = ScoreBatch(scores, np.where(scores > 0.5, "risky", "legit").astype(object),
                       np.stack([1 - scores, scores], axis=1))
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    kw = dict(route="canary", topic="predictions", received_ms=1_000)
    as_json = RecordBuilder("w-1", "dead-letter").predictions(good, X, batch, Model(), **kw)
    encoder = RegistryAvroEncoder(client_for(registry), "prediction")
    as_avro = RecordBuilder("w-1", "dead-letter", encoder=encoder).predictions(good, X, batch, Model(), **kw)
    resolver = RegistrySchemaResolver(client_for(registry))
    assert len(as_avro) == len(as_json) == 20 and {o.value[:5] for o in as_avro} == {b"\x00\x00\x00\x00\x02"}
    for j, a in zip(as_json, as_avro, strict=True):
        pj, pa = decode_prediction(j.value), decode_prediction_avro(a.value, resolver)
        assert pa.model_dump(exclude={"scored_at", "latency_ms"}) == pj.model_dump(exclude={"scored_at", "latency_ms"})
        assert (a.key, a.headers) == (j.key, j.headers)
