"""Prometheus metrics of the scoring flow.

Label children are cached by the callers (``.labels()`` costs more than the increment itself).

No ``*_created`` series: prometheus_client exports one per counter/histogram child by default (a second
series for every labelled counter that no dashboard or rule reads, and that OpenMetrics-unaware Prometheus
ingests as a separate gauge). Importing this module switches them off for the process; the archiver child
does the same (streams/archive/lane.py).
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # read at collect time, so it holds for metrics defined before this import too

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
# Set by streams/worker/lag.py on its own timer; every worker reports every partition of its group.
CONSUMER_LAG = Gauge("streamscore_consumer_lag", "Records the group has yet to consume", ["topic", "partition"])
BROKER_REACHABLE = Gauge("streamscore_broker_reachable", "1 if the broker answered the lag monitor recently")


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe a batch of values with one increment per bucket instead of one ``observe`` per value.

    Per-event ``observe`` cost ~3 µs, a third of the scoring pipeline. This mirrors
    ``Histogram.observe`` (a value lands in the first bucket whose upper bound is >= value) and
    relies on prometheus_client's ``_upper_bounds``/``_buckets``/``_sum``; tests compare the two.
    """
    if len(values) == 0:
        return
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))
