"""Prometheus metrics of online learning (``streamscore_learner_*``), served on the worker's /metrics.

Label children are cached by the callers, as in ``streams.metrics``. Per-version metric gauges are
set at each snapshot, not per label, and removed when their version leaves the metrics window.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PREDICTIONS = Counter("streamscore_learner_predictions_total", "Online predictions published", ["learner"])
SKIPPED_EVENTS = Counter(
    "streamscore_learner_skipped_events_total",
    "Feature events the learner did not score (invalid input, dead-lettered by the ONNX path; or a non-finite "
    "prediction)",
    ["learner", "reason"],
)
LABELS = Counter(
    "streamscore_learner_labels_total",
    "Labels consumed by the learning owner, by outcome: learned, unknown, late, duplicate, invalid",
    ["learner", "outcome"],
)
PREDICTED_AT_LEARN = Counter(
    "streamscore_learner_predicted_at_learn_total",
    "Learned labels without a served prediction in the join window (evaluated on a prediction made at learn time)",
    ["learner"],
)
LEARNED_TOTAL = Gauge("streamscore_learner_learned", "Labels the served model has learned over its lineage",
                      ["learner"])
VERSION = Gauge("streamscore_learner_version", "Snapshot version this worker serves (0: none yet)", ["learner"])
OWNER = Gauge("streamscore_learner_owner", "1 on the worker that learns (it holds the labels partition)",
              ["learner"])
SNAPSHOTS = Counter("streamscore_learner_snapshots_total", "Snapshots written by this worker", ["learner", "kind"])
SNAPSHOT_LOADS = Counter("streamscore_learner_snapshot_loads_total", "Snapshots loaded (verified) by this worker",
                         ["learner"])
JOIN_ENTRIES = Gauge("streamscore_learner_join_entries", "Events held in the join window", ["learner"])
METRIC = Gauge(
    "streamscore_learner_metric",
    "Prequential metric of the predictions served by a model version ('all' = every version), as of the last "
    "snapshot",
    ["learner", "version", "metric"],
)


def set_metric_gauges(learner: str, values: dict[str, dict[str, float]], shown: set[tuple[str, str]]) -> None:
    """Set ``streamscore_learner_metric`` from ``PrequentialMetrics.values()``; drop children no longer present."""
    current = {(version, name) for version, row in values.items() for name in row}
    for version, name in shown - current:
        METRIC.remove(learner, version, name)
    for version, row in values.items():
        for name, value in row.items():
            METRIC.labels(learner, version, name).set(value)
    shown.clear()
    shown.update(current)
