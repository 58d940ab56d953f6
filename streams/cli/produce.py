"""Producing feature events: demo samples, files, and a catalogue of bad inputs.

Every event is keyed by its event id, the convention on every topic of the flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
from pydantic import ValidationError

from models.demo import CLASS_NAMES, FEATURE_NAMES, risk_probability
from schemas.codecs import encode_feature_event
from schemas.records import FeatureEvent
from streams.kafka.publisher import Outbound, Publisher
from streams.settings import Settings

KeyedPayload = tuple[bytes | None, bytes]


FORMATS = ("json", "avro")


def encode_events(events: Iterable[dict], fmt: str = "json") -> Iterator[KeyedPayload]:
    """Keyed payloads; ``ValueError`` (one line, with the event's position) for an unknown format or an event that
    cannot be encoded (no event_id; for Avro, anything the schema refuses)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: accepted: {', '.join(FORMATS)}")
    for number, event in enumerate(events, start=1):
        if "event_id" not in event:
            raise ValueError(f"event {number}: no event_id (every event is keyed by it)")
        key = str(event["event_id"]).encode()
        if fmt == "json":
            yield key, orjson.dumps(event)
            continue
        try:
            yield key, encode_feature_event(FeatureEvent.model_validate(event), "avro")
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"event {number} ({key.decode()}): field {where!r}: {first['msg']} (Avro needs a "
                             "valid FeatureEvent)") from None


def fresh_seed() -> int:
    """A seed no earlier run used (to the millisecond): sample ids are ``evt-<seed>-<i>``, so a run with the
    default seed never re-sends the event ids of the one before."""
    return time.time_ns() // 1_000_000 % 10**10


def stamped_now(events: Iterable[dict]) -> Iterator[dict]:
    """Events with ``event_time`` set as each is produced, so latency starts at the producer."""
    for event in events:
        yield {**event, "event_time": time.time_ns() // 1_000_000}


def read_jsonl(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file; ``ValueError`` naming the file and the 1-based line of a bad line
    (each line is parsed alone, so orjson's own "line 1" would always be wrong)."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc} (give a JSON-lines file: one JSON object a line)") from None
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg}): {line[:60].decode(errors='replace')!r}"
                                 ) from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{number}: a JSON {type(obj).__name__}, expected one object a line")
            yield obj


def bad_payloads(feature_names: Iterable[str], tag: str = "0") -> list[tuple[str, KeyedPayload]]:
    """One bad input of each kind for a JSON topic, labelled with the dead-letter reason it must get.

    Keys are ``bad-<tag>-<n>``, so runs with different tags can be told apart on a shared topic.
    """
    names = list(feature_names)
    good = {name: 1.0 for name in names}

    def key(i: int) -> bytes:
        return f"bad-{tag}-{i}".encode()

    def event(i: int, **overrides: object) -> bytes:
        base = {"event_id": key(i).decode(), "entity_id": "acct-bad", "event_time": int(time.time() * 1000),
                "schema_version": 1, "features": dict(good)}
        base.update(overrides)
        return orjson.dumps({k: v for k, v in base.items() if v is not _DROP})

    missing = {k: v for k, v in good.items() if k != names[0]}
    return [
        ("not_json", (key(0), b"this is not json")),
        ("schema_violation", (key(1), event(1, entity_id=_DROP))),
        ("wrong_type", (key(2), event(2, features={**good, names[1]: "high"}))),
        ("non_finite", (key(3), event(3, features={**good, names[2]: "NaN"}))),
        ("oversized", (key(4), event(4, metadata={"blob": "x" * 70_000}))),
        ("unknown_schema_version", (key(5), event(5, schema_version=99))),
        ("missing_feature", (key(6), event(6, features=missing))),
        ("extra_feature", (key(7), event(7, features={**good, "surprise": 1.0}))),
        ("empty", (key(8), b"")),
    ]


def bad_avro_payloads(feature_names: Iterable[str], tag: str = "0") -> list[tuple[str, KeyedPayload]]:
    """Bad inputs for an Avro topic (Confluent framing), labelled with their dead-letter reason."""
    good = {name: 1.0 for name in feature_names}
    event = FeatureEvent(event_id=f"bad-{tag}-avro", entity_id="acct-bad", event_time=int(time.time() * 1000),
                         schema_version=1, features=good)
    framed = encode_feature_event(event, "avro")
    return [
        ("bad_avro", (f"bad-{tag}-a0".encode(), framed[:5] + b"\xff\xff\xff")),
        ("unknown_schema_id", (f"bad-{tag}-a1".encode(), b"\x00\x00\x00\x03\xe7" + framed[5:])),
        ("bad_avro", (f"bad-{tag}-a2".encode(), b'{"event_id": "json-on-an-avro-topic"}')),
    ]


_DROP = object()  # marks a field to leave out of a bad event


def produce(
    settings: Settings,
    topic: str,
    payloads: Iterable[KeyedPayload],
    rate: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 1000,
) -> int:
    """Produce keyed payloads (optionally at ``rate`` events/s) and wait until all are delivered."""
    publisher = Publisher(settings.kafka, **{"linger.ms": 5})
    publisher.connect(topic)  # so a paced stream is not held up behind the first metadata request
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


# --- labels ------------------------------------------------------------------------------------
def true_label(event: FeatureEvent) -> int:
    """The demo's ground truth for one event: a Bernoulli draw from ``models.demo.risk_probability`` of its
    features, with a generator seeded by the event id (so the same event always gets the same label, whichever
    run or file it came from; over many events the labels follow the demo's concept exactly)."""
    import hashlib  # stdlib; only the label producer uses it

    import numpy as np  # heavy (~0.1 s): only `produce --labels` uses it


    x = np.array([[float(event.features[name]) for name in FEATURE_NAMES]])
    seed = int.from_bytes(hashlib.sha256(event.event_id.encode()).digest()[:8], "big")
    return int(np.random.default_rng(seed).random() < risk_probability(x)[0])


def label_payloads(events: Iterable[FeatureEvent], *, delay_ms: int = 0, noise: float = 0.0,
                   seed: int | None = None) -> Iterator[KeyedPayload]:
    """One JSON label per event (schemas/label.avsc), class names as the demo model's; each label flipped with
    probability ``noise``, and sent no earlier than ``delay_ms`` after its event time (labels come late)."""
    import random  # stdlib; only the label producer uses it


    flip = random.Random(seed)
    for event in sorted(events, key=lambda e: e.event_time):
        wait_s = (event.event_time + delay_ms) / 1000 - time.time()
        if delay_ms and wait_s > 0:
            time.sleep(wait_s)
        label = true_label(event)
        if noise and flip.random() < noise:
            label = 1 - label
        yield event.event_id.encode(), orjson.dumps({"event_id": event.event_id, "label": CLASS_NAMES[label],
                                                     "label_time": time.time_ns() // 1_000_000})
