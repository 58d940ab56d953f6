"""Per-event Python cost of the scoring hot path without ONNX: decode+validate, input hash, prediction bytes.

Measures the per-event path the pipeline uses today (``decode_feature_event`` + ``FeatureValidator.row``,
``input_hash`` per row, a dict + ``prediction_to_json_bytes`` per record) against the batch API of
``schemas.hot_path`` on the same events in the same run, in batches like the worker's. Numbers are
microseconds per event (best of ``repeat`` runs: these 2-core machines are shared and noisy).

    python -m schemas.bench [n] [batch]

>>> r = measure_hot_path(n=512, batch=256, repeat=1)
>>> [key for key in r if key.startswith("json.")]
['json.legacy.decode_validate', 'json.batch.decode_validate']
>>> all(v > 0 for v in r.values())
True
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import orjson

from .codecs import InvalidEvent, decode_feature_event, encode_feature_event, prediction_to_json_bytes
from .hot_path import decode_rows, encode_predictions
from .records import FeatureEvent
from .validation import FeatureValidator, input_hash, input_hashes

__all__ = ["measure_hot_path"]

FEATURES = ("amount", "hour_of_day", "merchant_risk", "account_age_days", "txn_count_24h", "distance_km",
            "is_foreign", "device_score")  # the demo model's signature (models/demo.py)
CLASSES = ("legit", "risky")


def _events(n: int, seed: int = 7) -> list[dict]:
    rng = np.random.default_rng(seed)
    X = rng.lognormal(2.0, 1.5, (n, len(FEATURES))).round(3).tolist()
    return [{"event_id": f"evt-{seed}-{i}", "entity_id": f"acct-{i % 300}", "event_time": 1_700_000_000_000 + i,
             "schema_version": 1, "features": dict(zip(FEATURES, X[i], strict=True))} for i in range(n)]


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_hot_path(n: int = 100_000, batch: int = 256, repeat: int = 3) -> dict[str, float]:
    """µs/event per stage, ``legacy.*`` (today's per-event calls) and ``batch.*`` (schemas.hot_path).

    Keys: ``{json,avro}.{legacy,batch}.decode_validate``, ``{legacy,batch}.input_hash``,
    ``{legacy,batch}.encode_prediction`` and ``{legacy,batch}.total`` (JSON decode+validate, hash, encode).
    """
    validator = FeatureValidator(FEATURES)
    events = _events(n)
    payloads = {fmt: [encode_feature_event(FeatureEvent.model_validate(e), fmt) for e in events]  # type: ignore[arg-type]
                for fmt in ("json", "avro")}
    chunks = {fmt: [p[i:i + batch] for i in range(0, n, batch)] for fmt, p in payloads.items()}
    rng = np.random.default_rng(1)
    probs = rng.random((n, 2))
    probs /= probs.sum(axis=1, keepdims=True)
    scores_all, labels_all = probs[:, 1].copy(), [CLASSES[int(p > 0.5)] for p in probs[:, 1]]
    const = {"model_name": "fraud", "model_version": "3", "model_sha256": "ab" * 32, "scored_at": 1_700_000_000_500,
             "latency_ms": 4.0, "route": "single", "worker": "w-1"}
    decoded: dict[str, list] = {}

    def legacy_decode(fmt: str, keep: bool = False) -> None:
        out = []  # only the last batch is kept while timing: the worker drops each batch once published
        for chunk in chunks[fmt]:
            good, rows = [], []
            for raw in chunk:
                try:
                    ev = decode_feature_event(raw, fmt)  # type: ignore[arg-type]
                    rows.append(validator.row(ev))
                except InvalidEvent:
                    continue
                good.append(ev)
            batch_out = (good, np.asarray(rows, dtype=np.float32))
            out = [*out, batch_out] if keep else [batch_out]
        decoded["legacy"] = out

    def batch_decode(fmt: str, keep: bool = False) -> None:
        out = []
        for chunk in chunks[fmt]:
            batch_out = decode_rows(chunk, fmt, validator)  # type: ignore[arg-type]
            out = [*out, batch_out] if keep else [batch_out]
        decoded["batch"] = out

    result: dict[str, float] = {}
    per_event = 1e6 / n
    for fmt in ("json", "avro"):
        result[f"{fmt}.legacy.decode_validate"] = _best(lambda f=fmt: legacy_decode(f), repeat) * per_event
        result[f"{fmt}.batch.decode_validate"] = _best(lambda f=fmt: batch_decode(f), repeat) * per_event
    legacy_decode("json", keep=True)
    batch_decode("json", keep=True)
    hashes: dict[str, list[list[str]]] = {}

    def legacy_hash() -> None:
        hashes["legacy"] = [[input_hash(X[i].tobytes()) for i in range(len(X))] for _, X in decoded["legacy"]]

    def batch_hash() -> None:
        hashes["batch"] = [input_hashes(d.X) for d in decoded["batch"]]

    result["legacy.input_hash"] = _best(legacy_hash, repeat) * per_event
    result["batch.input_hash"] = _best(batch_hash, repeat) * per_event

    def legacy_encode() -> None:
        for c, (good, _X) in enumerate(decoded["legacy"]):
            base = c * batch
            probabilities, scores = probs[base:base + len(good)].tolist(), scores_all[base:base + len(good)].tolist()
            hs = hashes["legacy"][c]
            for i, ev in enumerate(good):
                prediction_to_json_bytes({
                    "event_id": ev.event_id, "entity_id": ev.entity_id, "event_time": ev.event_time,
                    "model_name": const["model_name"], "model_version": const["model_version"],
                    "model_sha256": const["model_sha256"], "score": scores[i], "label": labels_all[base + i],
                    "probabilities": dict(zip(CLASSES, probabilities[i], strict=True)), "input_hash": hs[i],
                    "scored_at": const["scored_at"], "latency_ms": const["latency_ms"], "route": const["route"],
                    "worker": const["worker"], "source_topic": "features", "source_partition": 0,
                    "source_offset": base + i, "schema_version": ev.schema_version})

    def batch_encode() -> None:
        for c, d in enumerate(decoded["batch"]):
            base, m = c * batch, len(d.events)
            encode_predictions(d.events, ["features"] * m, [0] * m, range(base, base + m), hashes["batch"][c],
                               scores_all[base:base + m], labels_all[base:base + m], probs[base:base + m], CLASSES,
                               **const)  # type: ignore[arg-type]

    result["legacy.encode_prediction"] = _best(legacy_encode, repeat) * per_event
    result["batch.encode_prediction"] = _best(batch_encode, repeat) * per_event
    for kind in ("legacy", "batch"):
        result[f"{kind}.total"] = (result[f"json.{kind}.decode_validate"] + result[f"{kind}.input_hash"]
                                   + result[f"{kind}.encode_prediction"])
    return result


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 100_000
    batch = int(argv[1]) if len(argv) > 1 else 256
    result = measure_hot_path(n, batch)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:6.2f} us/event")
    print(orjson.dumps({"n": n, "batch": batch, "us_per_event": result}).decode())


if __name__ == "__main__":
    main(sys.argv[1:])
