"""End to end with a Schema Registry: a real worker process, the embedded broker and the stand-in registry.

Input is written by confluent-kafka's stock ``AvroSerializer`` (another team's producer), predictions are read
back by its stock ``AvroDeserializer`` (another team's consumer); the worker only gets
``STREAMSCORE_SCHEMA_REGISTRY_URL`` and ``STREAMSCORE_AVRO_PREDICTIONS``. One event carries W3C trace context
and a CloudEvents id: its prediction continues the trace as a child span and keeps the ce_* headers.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from models.demo import sample_events
from streams.kafka.publisher import Outbound, Publisher
from streams.kafka.reader import read_all, wait_for
from tests.e2e.test_scoring import direct_scores
from tests.support.schema_registry_server import StandInRegistry

pytestmark = pytest.mark.e2e

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
ORDER_AVSC = json.dumps({"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "order_id", "type": "string"}, {"name": "amount_cents", "type": "long"}]})
PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
N = 300


@pytest.fixture
def registry():
    server = StandInRegistry()
    # Something else was registered first, as in any shared registry: id 1 (the local feature_event id) is not ours.
    assert server.register("orders-value", ORDER_AVSC) == 1
    yield server
    assert server.unexpected == []  # the client asked nothing the stand-in does not implement
    server.close()


def millis(value: object) -> object:
    return int(value.timestamp() * 1000) if isinstance(value, dt.datetime) else value


def test_stock_avro_in_and_out_through_the_registry(flow, registry):
    s = flow.settings
    client = SchemaRegistryClient({"url": registry.url})
    serializer = AvroSerializer(client, (SCHEMAS / "feature_event.avsc").read_text())
    ctx = SerializationContext(flow.avro_topic, MessageField.VALUE)
    events = sample_events(31, N + 1)
    values = [serializer(e, ctx) for e in events]
    assert registry.subjects[f"{flow.avro_topic}-value"] == [2]  # a registry id, not the local table's 1
    traced = events[-1]["event_id"]
    publisher = Publisher(s.kafka)
    try:
        publisher.send_batch([
            Outbound(flow.avro_topic, e["entity_id"].encode(), v,
                     [("traceparent", PARENT), ("ce_id", b"ce-42"), ("ce_source", b"/tests"), ("noise", b"x")]
                     if e["event_id"] == traced else None)
            for e, v in zip(events, values, strict=True)]).wait(30)
    finally:
        publisher.close()

    flow.start_worker(schema_registry_url=registry.url, avro_predictions=True)
    wait_for(s, s.prediction_topic, lambda messages: len(messages) >= N + 1, 120)
    messages = read_all(s, s.prediction_topic)
    deserializer = AvroDeserializer(client)
    out_ctx = SerializationContext(s.prediction_topic, MessageField.VALUE)
    records = [deserializer(m.value(), out_ctx) for m in messages]

    assert len(records) == N + 1  # every event scored exactly once
    by_id = {r["event_id"]: r for r in records}
    assert set(by_id) == {e["event_id"] for e in events}
    expected = direct_scores(s.model_dir, events)
    for e in events:
        r = by_id[e["event_id"]]
        assert r["score"] == expected[e["event_id"]]  # bit for bit through Avro's double
        assert r["entity_id"] == e["entity_id"] and millis(r["event_time"]) == e["event_time"]
        assert r["source_topic"] == flow.avro_topic and r["schema_version"] == 1
    assert {m.value()[:5] for m in messages} == {b"\x00\x00\x00\x00\x03"}  # the registry's id of prediction.avsc
    assert registry.subjects[f"{s.prediction_topic}-value"] == [3]
    assert registry.count("GET", "/schemas/ids/2") == 1  # the worker resolved the input id once for N+1 events
    assert not read_all(s, s.dead_letter_topic)

    [traced_msg] = [m for m in messages if dict(m.headers() or [])["event_id"] == traced.encode()]
    headers = dict(traced_msg.headers())
    child = headers["traceparent"]
    assert child[:36] == PARENT[:36] and child[36:52] != PARENT[36:52] and child[52:] == b"-01"  # a child span
    assert headers["ce_id"] == b"ce-42" and headers["ce_source"] == b"/tests" and "noise" not in headers
    untraced = [m for m in messages if m is not traced_msg]
    assert all("traceparent" not in dict(m.headers()) for m in untraced)  # no trace in, no trace out
