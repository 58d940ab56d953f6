"""Prometheus metrics of the scoring flow.

Label children are cached by the callers (``.labels()`` costs more than the increment itself).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("streamscore_events_in_total", "Input events consumed", ["topic"])
PREDICTIONS_OUT = Counter("streamscore_predictions_total", "Predictions published", ["model", "version"])
DEAD_LETTERS = Counter("streamscore_dead_letters_total", "Inputs sent to the dead-letter topic", ["topic", "reason"])
BATCH_SECONDS = Histogram(
    "streamscore_batch_seconds",
    "Time to validate and score one micro-batch",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
BATCH_SIZE = Histogram("streamscore_batch_size", "Events per micro-batch", buckets=(1, 8, 32, 64, 128, 256, 512, 1024))
EVENT_LATENCY = Histogram(
    "streamscore_event_latency_seconds",
    "Event time to prediction (end to end)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MODEL_INFO = Gauge("streamscore_model_info", "Loaded model (value 1)", ["model", "version", "sha256"])
