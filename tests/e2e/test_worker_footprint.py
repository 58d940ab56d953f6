"""A worker loads only the libraries its capabilities use (issue 13: peak RSS ≤ 300 MB).

``river.drift`` imports scikit-learn, pandas and pyarrow (209 MB of RSS in a fresh interpreter), ``scipy.stats``
~100 MB. A scoring-only worker needs none of them: it used to load them all, through the CLI's drift commands and a
model-card check that built a scikit-learn estimator (378 MB at ready, 184 MB now). A worker as deployed needs scipy
for its drift statistics, and River's detectors (without scikit-learn) only once a label reaches the drift lane.

Read from the worker's own ``/proc/<pid>/maps`` (the compiled extension of each library), after it has scored.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import orjson
import pytest

from models.demo import sample_events
from streams.cli.produce import encode_events, produce
from streams.kafka.reader import read_all
from tests.conftest import Flow, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

HEAVY = ("sklearn", "scipy", "pandas", "pyarrow", "river", "onnx")  # site-packages folders with compiled parts


def loaded(pid: int) -> set[str]:
    """Which of HEAVY have a file mapped into process ``pid``."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}
    return {name for name in HEAVY for p in paths if f"site-packages/{name}/" in p}


def test_a_scoring_only_worker_loads_none_of_the_training_and_statistics_libraries(flow: Flow) -> None:
    s = flow.settings
    proc = flow.start_worker()  # the flow fixture's worker scores only (drift_window 0, no archiver)
    produce(s, flow.json_topic, encode_events(sample_events(5, 200)))
    wait_until("200 predictions", lambda: len(read_all(s, s.prediction_topic)) >= 200 or None, flow)
    assert loaded(proc.pid) == set(), flow.log()


@pytest.mark.parametrize("engine", ["batch"])
def test_a_deployed_worker_loads_scipy_for_drift_and_river_without_sklearn_at_the_first_label(flow: Flow) -> None:
    run = flow.settings.app_id.removeprefix("test-")
    # drift_window 500: a window is evaluated from min(window, 2000) inputs
    flow.settings = s = flow.settings.model_copy(update={
        "drift_topic": f"drift-{run}", "alerts_topic": f"alerts-{run}", "retrain_topic": f"retrain-{run}",
        "labels_topic": f"labels-{run}", "drift_interval_s": 0.3, "drift_window": 500, "archive": True})
    port = free_port()
    proc = flow.start_worker(web_port=port)
    produce(s, flow.json_topic, encode_events(sample_events(6, 1000)))
    wait_until("1000 predictions", lambda: len(read_all(s, s.prediction_topic)) >= 1000 or None, flow)

    def evaluated() -> bool | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/drift", timeout=5) as resp:
            return (json.loads(resp.read())["messages_evaluated"] or 0) >= 1000 or None

    wait_until("a drift evaluation of the 1000 inputs", evaluated, flow)  # the statistics ran: scipy is in
    assert loaded(proc.pid) == {"scipy"}, flow.log()

    # Labels build River's detectors; River loads scikit-learn (and pandas, pyarrow: 68 MB) for nothing unless
    # kept from it (online_learning/river_import.py).
    events = sample_events(6, 1000)[:300]
    produce(s, s.labels_topic, [(e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": "legit",
                                                                         "label_time": e["event_time"]}))
                                for e in events])

    def labels_evaluated() -> bool | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/drift", timeout=5) as resp:
            return (json.loads(resp.read())["labels_evaluated"] or 0) >= 300 or None

    wait_until("300 labels evaluated by the concept detectors", labels_evaluated, flow)
    assert loaded(proc.pid) == {"scipy", "river"}, flow.log()
