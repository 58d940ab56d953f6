"""The flow's output records, built in exactly one place: predictions and dead letters.

Every lane that scores (the ONNX pipeline, routed arms, shadow arms, the online learner) calls
``RecordBuilder.predictions``; every lane that refuses an input calls ``RecordBuilder.dead_letter``.
So the 18 fields of a prediction, its key and its headers cannot drift apart between lanes.

>>> import numpy as np
>>> from models.scorer import ScoreBatch
>>> from schemas.codecs import decode_prediction
>>> class Model:
...     name, version, sha256, classes = "m", "3", "ab" * 32, ["legit", "risky"]
>>> class Event:
...     event_id, entity_id, event_time, schema_version = "e-1", "acct-1", 1_000, 1
>>> builder = RecordBuilder(worker="w-1", dead_letter_topic="dead-letter")
>>> msg = InboundMessage("features", 0, 41, b"e-1", b"{}", headers=[("traceparent", b"00-ab-cd-01")])
>>> batch = ScoreBatch(np.array([0.25]), np.array(["legit"], dtype=object), np.array([[0.75, 0.25]]))
>>> [out] = builder.predictions([(msg, Event())], np.zeros((1, 2), np.float32), batch, Model(),
...                             route="single", topic="predictions", received_ms=1_000)
>>> out.topic, out.key, [k for k, _ in out.headers]
('predictions', b'e-1', ['event_id', 'model_version', 'route', 'traceparent'])
>>> p = decode_prediction(out.value)
>>> p.model_version, p.score, p.source_offset, p.probabilities
('3', 0.25, 41, {'legit': 0.75, 'risky': 0.25})
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.scorer import ScoreBatch
from schemas.codecs import InvalidEvent, encode_dead_letter, prediction_to_json_bytes
from schemas.records import DeadLetter
from schemas.validation import input_hash
from streams.kafka.publisher import Headers, Outbound

__all__ = ["InboundMessage", "ModelIdentity", "RecordBuilder", "now_ms", "passthrough_headers"]

# Headers of an input that its outputs carry on: W3C trace context and our request id.
PASSTHROUGH_HEADERS = ("traceparent", "tracestate", "request_id")


@dataclass(slots=True)
class InboundMessage:
    """One consumed input record, whatever client read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: Headers | None = None


class ModelIdentity(Protocol):
    """What a prediction record names of the model that made it (every ``Scorer`` has these)."""

    name: str
    version: str
    sha256: str
    classes: Sequence[str]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def passthrough_headers(headers: Headers | None) -> Headers:
    """Keep the caller's trace context on the outputs."""
    if not headers:
        return []
    return [(k, v) for k, v in headers if k in PASSTHROUGH_HEADERS]


class RecordBuilder:
    """Builds prediction and dead-letter messages for one worker."""

    def __init__(self, worker: str, dead_letter_topic: str) -> None:
        self.worker = worker
        self.dead_letter_topic = dead_letter_topic

    def predictions(
        self,
        good: Sequence[tuple[InboundMessage, Any]],
        X: np.ndarray,
        batch: ScoreBatch,
        model: ModelIdentity,
        *,
        route: str,
        topic: str,
        received_ms: int,
        on_unencodable: Callable[[InboundMessage], None] | None = None,
    ) -> list[Outbound]:
        """One prediction per ``(message, event)`` of ``good``; ``X`` holds their model inputs (float32 rows).

        A record that cannot be encoded (a non-finite score from a diverged learner) raises, unless
        ``on_unencodable`` is given: then it is reported there and left out.
        """
        scored_at = now_ms()
        latency_ms = float(scored_at - received_ms)
        classes = [str(c) for c in model.classes]
        probabilities = batch.probabilities.tolist()
        scores = batch.scores.tolist()
        labels = [str(label) for label in batch.labels]
        name, version, sha256 = model.name, str(model.version), model.sha256
        version_header, route_header = version.encode(), route.encode()
        rows = np.ascontiguousarray(X, dtype="<f4")  # the hash is of the float32 model input, whatever X was
        outputs = []
        for i, (msg, event) in enumerate(good):
            record = {
                "event_id": event.event_id,
                "entity_id": event.entity_id,
                "event_time": event.event_time,
                "model_name": name,
                "model_version": version,
                "model_sha256": sha256,
                "score": scores[i],
                "label": labels[i],
                "probabilities": dict(zip(classes, probabilities[i], strict=True)),
                "input_hash": input_hash(rows[i].tobytes()),
                "scored_at": scored_at,
                "latency_ms": latency_ms,
                "route": route,
                "worker": self.worker,
                "source_topic": msg.topic,
                "source_partition": msg.partition,
                "source_offset": msg.offset,
                "schema_version": event.schema_version,
            }
            try:
                value = prediction_to_json_bytes(record)
            except ValueError:
                if on_unencodable is None:
                    raise
                on_unencodable(msg)
                continue
            headers = [
                ("event_id", event.event_id.encode()),
                ("model_version", version_header),
                ("route", route_header),
                *passthrough_headers(msg.headers),
            ]
            key = msg.key if msg.key is not None else event.event_id.encode()
            outputs.append(Outbound(topic, key, value, headers))
        return outputs

    def dead_letter(self, msg: InboundMessage, exc: InvalidEvent) -> Outbound:
        """The dead letter of an input that cannot be scored: reason, original key and bytes, coordinates."""
        letter = DeadLetter(
            event_id=exc.event_id,
            reason_code=exc.code,
            reason=exc.reason,
            source_topic=msg.topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
            original_key=msg.key,
            original_value=msg.value or b"",
            failed_at=now_ms(),
            worker=self.worker,
        )
        headers = [("reason_code", exc.code.encode()), *passthrough_headers(msg.headers)]
        return Outbound(self.dead_letter_topic, msg.key, encode_dead_letter(letter), headers)
