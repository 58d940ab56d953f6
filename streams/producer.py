"""Producing feature events: demo samples, files, and a catalogue of bad inputs.

Every event is keyed by its event id, the convention on every topic of the flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson

from schemas.codecs import encode_feature_event
from schemas.records import FeatureEvent
from streams.publisher import Outbound, Publisher
from streams.settings import Settings

KeyedPayload = tuple[bytes | None, bytes]


def encode_events(events: Iterable[dict], fmt: str = "json") -> Iterator[KeyedPayload]:
    for event in events:
        key = str(event["event_id"]).encode()
        if fmt == "json":
            yield key, orjson.dumps(event)
        else:
            yield key, encode_feature_event(FeatureEvent.model_validate(event), "avro")


def read_jsonl(path: Path) -> Iterator[dict]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


def bad_payloads(feature_names: Iterable[str]) -> list[tuple[str, KeyedPayload]]:
    """One example of each kind of bad input, labelled with the dead-letter reason it must get."""
    names = list(feature_names)
    good = {name: 1.0 for name in names}

    def event(i: int, **overrides: object) -> dict:
        base = {"event_id": f"bad-{i}", "entity_id": "acct-bad", "event_time": int(time.time() * 1000),
                "schema_version": 1, "features": dict(good)}
        base.update(overrides)
        return base

    missing = dict(good)
    missing.pop(names[0])
    avro_ok = encode_feature_event(FeatureEvent.model_validate(event(9)), "avro")
    return [
        ("not_json", (b"bad-0", b"this is not json")),
        ("schema_violation", (b"bad-1", orjson.dumps({k: v for k, v in event(1).items() if k != "entity_id"}))),
        ("wrong_type", (b"bad-2", orjson.dumps(event(2, features={**good, names[1]: "high"})))),
        ("non_finite", (b"bad-3", orjson.dumps(event(3, features={**good, names[2]: "NaN"})))),
        ("oversized", (b"bad-4", orjson.dumps(event(4, metadata={"blob": "x" * 70_000})))),
        ("unknown_schema_version", (b"bad-5", orjson.dumps(event(5, schema_version=99)))),
        ("missing_feature", (b"bad-6", orjson.dumps(event(6, features=missing)))),
        ("extra_feature", (b"bad-7", orjson.dumps(event(7, features={**good, "surprise": 1.0})))),
        ("bad_avro", (b"bad-8", avro_ok[:5] + b"\xff\xff\xff")),
        ("empty", (b"bad-10", b"")),
    ]


def produce(
    settings: Settings,
    topic: str,
    payloads: Iterable[KeyedPayload],
    rate: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 1000,
) -> int:
    """Produce keyed payloads (optionally at ``rate`` events/s) and wait until all are delivered."""
    publisher = Publisher(settings, **{"linger.ms": 5})
    sent, started, buffer = 0, time.monotonic(), []
    deliveries = []

    def flush_chunk() -> None:
        nonlocal sent
        deliveries.append(publisher.send_batch(buffer))
        sent += len(buffer)
        if on_progress:
            on_progress(len(buffer))
        buffer.clear()

    step = max(1, min(chunk, int(rate / 20) if rate else chunk))  # ~20 paced sends a second
    for key, value in payloads:
        buffer.append(Outbound(topic, key, value))
        if len(buffer) >= step:
            flush_chunk()
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    if buffer:
        flush_chunk()
    publisher.close()
    for delivery in deliveries:
        delivery.raise_for_errors()
    return sent
