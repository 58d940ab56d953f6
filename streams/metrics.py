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
# Up to the Faust engine's MAX_BATCH_EVENTS (2048; the batch engine's is Settings.batch_size).
BATCH_SIZE = Histogram("streamscore_batch_size", "Events per micro-batch",
                       buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096))
EVENT_LATENCY = Histogram(
    "streamscore_event_latency_seconds",
    "Event time to prediction (end to end)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MODEL_INFO = Gauge("streamscore_model_info", "Loaded model (value 1)", ["model", "version", "sha256"])
# Set by streams/worker/lag.py on its own timer; every worker reports every partition of its group.
CONSUMER_LAG = Gauge("streamscore_consumer_lag", "Records the group has yet to consume", ["topic", "partition"])
BROKER_REACHABLE = Gauge("streamscore_broker_reachable", "1 if the broker answered the lag monitor recently")
# Control-plane events, for the dashboard's registry row: each one a log line too (streams/routing, streams/drift).
ROUTING_SWAPS = Counter("streamscore_routing_swaps_total", "Routing tables swapped in from the model registry")
CANARY_ROLLBACKS = Counter("streamscore_canary_rollbacks_total", "Canary or shadow lanes rolled back by their guard",
                           ["topic"])
DRIFT_ALERTS = Counter("streamscore_drift_alerts_total", "Drift alerts published to the alerts topic", ["model"])


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


_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("", "_sum", "_count"), "info": ("_info",), "untyped": ("",)}


def exposition_problems(text: str) -> list[str]:
    """What is wrong with a Prometheus text exposition (format 0.0.4), stricter than the parser; [] when clean.

    ``prometheus_client.parser`` accepts a page with a family listed twice (it was: the archive families, the
    worker's dead copy first) and ``*_created`` series; Prometheus then stores the first copy. Checked here, as
    ``promtool check metrics`` does where it is installed: it parses; HELP and TYPE at most once per family and
    before its samples; a family's samples contiguous, each with the names its type allows and each series once;
    no ``*_created``; histogram buckets cumulative and ending at +Inf with ``_count`` equal to it.
    """
    from prometheus_client.parser import text_string_to_metric_families  # tests and tools only, not the hot path

    problems: list[str] = []
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    seen: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if line.startswith("# ") and len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
            key = (parts[1], parts[2])
            seen[key] = seen.get(key, 0) + 1
            if seen[key] == 2:
                problems.append(f"# {parts[1]} {parts[2]} given more than once")
    names = [f.name for f in families]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"family {name} listed {names.count(name)} times (its samples are not contiguous)")
    series: set[tuple[str, tuple]] = set()
    for family in families:
        allowed = {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        if family.name.endswith("_created"):
            problems.append(f"{family.name}: a *_created series (disable_created_metrics)")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                problems.append(f"{sample.name}: a *_created series (disable_created_metrics)")
            elif sample.name not in allowed:
                problems.append(f"{sample.name}: not a sample name of {family.type} {family.name}")
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in series:
                problems.append(f"{sample.name}{sample.labels}: the same series twice")
            series.add(key)
        if family.type == "histogram":
            problems += _histogram_problems(family)
    return problems


def _histogram_problems(family: object) -> list[str]:
    problems = []
    groups: dict[tuple, dict[str, object]] = {}
    for s in family.samples:  # type: ignore[attr-defined]
        labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        group = groups.setdefault(labels, {"buckets": [], "count": None})
        if s.name.endswith("_bucket"):
            group["buckets"].append((float(s.labels["le"]), s.value))  # type: ignore[union-attr]
        elif s.name.endswith("_count"):
            group["count"] = s.value
    for labels, group in groups.items():
        buckets = group["buckets"]
        where = f"{family.name}{dict(labels)}"  # type: ignore[attr-defined]
        if not buckets or buckets[-1][0] != float("inf"):
            problems.append(f"{where}: no le=\"+Inf\" bucket last")
            continue
        if any(b[1] > a[1] for a, b in zip(buckets[1:], buckets, strict=False)) or sorted(buckets) != buckets:
            problems.append(f"{where}: buckets not cumulative in increasing le")
        if group["count"] != buckets[-1][1]:
            problems.append(f"{where}: _count {group['count']} != +Inf bucket {buckets[-1][1]}")
    return problems
