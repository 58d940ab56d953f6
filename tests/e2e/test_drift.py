"""End to end over the embedded broker: drift monitoring in a real worker process.

Feature drift: an unshifted stream, then events drawn with a known shift, produced in chunks so that
each chunk is judged before the next one arrives — the alert must come within the stated number of
shifted events (tests/test_drift_monitor.py: MAX_DELAY) and never before the shift. Concept drift: the
labels of the same kind of stream change rule half-way; ADWIN must alert after the change only.
"""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from datastore.catalog import coverage_of
from datastore.dataset import list_versions
from datastore.storage import LocalStorage
from models.demo import FEATURE_NAMES, sample_events
from schemas.drift import DriftAlert, DriftRecord, RetrainRequest, decode
from streams.cli.main import app as cli_app
from streams.cli.produce import encode_events, produce
from streams.drift.alerts import parse_data_version
from streams.drift.sim import concept_labels
from streams.kafka.reader import read_all
from streams.settings import Settings
from tests.conftest import Flow, free_port
from tests.support.waiting import wait_until
from tests.unit.streams.test_drift_monitor import MAX_DELAY, SHIFT

pytestmark = pytest.mark.e2e

CHUNK = 100
# What models.demo's ``shift`` moves: larger amounts, riskier merchants, busier accounts, more foreign.
SHIFTED_FEATURES = {"amount", "merchant_risk", "txn_count_24h", "is_foreign"}


@pytest.fixture
def engine() -> str:
    return "batch"  # the drift lane is its own consumer group: it does not depend on the scoring engine


@pytest.fixture
def dflow(flow: Flow) -> Flow:
    run = flow.settings.app_id.removeprefix("test-")
    flow.settings = flow.settings.model_copy(update={
        "drift_topic": f"drift-{run}",
        "alerts_topic": f"alerts-{run}",
        "retrain_topic": f"retrain-{run}",
        "labels_topic": f"labels-{run}",
        "drift_interval_s": 0.3,
        "drift_window": 2000,
        "archive": True,  # every default capability on: this worker is configured as in production
        "archive_segment_seconds": 1.0,  # so the retrain request's data is sealed within the test
    })
    return flow


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.read().decode()




def records(s: Settings) -> list[DriftRecord]:
    return sorted((decode(DriftRecord, m.value()) for m in read_all(s, s.drift_topic)), key=lambda r: r.computed_at)


def judged(s: Settings, port: int, n_seen: int, flow: Flow, key: str = "messages_evaluated") -> DriftRecord:
    """The drift record computed once the drift lane had seen ``n_seen`` messages (or evaluated that many labels)."""
    def evaluated() -> int | None:
        status = json.loads(get(port, "/drift"))
        return status["last_computed_at"] if (status[key] or 0) >= n_seen else None

    computed_at = wait_until(f"{key} >= {n_seen}", evaluated, flow)
    return wait_until("its drift record", lambda: next((r for r in records(s) if r.computed_at >= computed_at), None),
                      flow)


def test_shift_alerts_within_stated_delay_debounced_with_retrain_request_metrics_and_views(dflow: Flow) -> None:
    s, flow = dflow.settings, dflow
    port = free_port()
    flow.start_worker(web_port=port)
    produce(s, flow.json_topic, encode_events(sample_events(31, 2400)))
    baseline = judged(s, port, 2400, flow)
    assert baseline.window_events == 2000 and baseline.status != "alert", baseline.status
    assert not any(r.status == "alert" for r in records(s))

    shifted = sample_events(32, 1500, shift=SHIFT)
    sent, first_alert = 0, None
    while sent < len(shifted) and first_alert is None:
        produce(s, flow.json_topic, encode_events(shifted[sent:sent + CHUNK]))
        sent += CHUNK
        record = judged(s, port, 2400 + sent, flow)
        if record.status == "alert":
            first_alert = record
    assert first_alert is not None, f"no alert after {sent} shifted events"
    assert sent <= MAX_DELAY + CHUNK, sent  # the chunk granularity on top of the stated bound
    alerted = {st.feature for st in first_alert.statistics if st.status == "alert"}
    assert alerted and alerted <= SHIFTED_FEATURES | {"score"}, alerted  # only what the shift moves

    # more alert-level evaluations follow, but the alert is debounced (cooldown 300 s): one firing notice
    for start in range(sent, len(shifted), 400):
        produce(s, flow.json_topic, encode_events(shifted[start:start + 400]))
        judged(s, port, 2400 + min(start + 400, len(shifted)), flow)
    assert sum(r.status == "alert" for r in records(s)) >= 3
    alerts = [decode(DriftAlert, m.value()) for m in read_all(s, s.alerts_topic)]
    requests = [decode(RetrainRequest, m.value()) for m in read_all(s, s.retrain_topic)]
    assert [(a.state, a.notice) for a in alerts] == [("firing", 1)], alerts
    assert len(requests) == 1 and requests[0].request_id == alerts[0].retrain_request_id
    assert requests[0].data_version.startswith(f"kafka:{flow.json_topic}[")
    assert requests[0].model_name == "demo-risk" and requests[0].reason

    # the request's data version becomes a content-addressed dataset version of exactly those messages
    ranges = parse_data_version(requests[0].data_version)
    store = LocalStorage(s.data_path)
    wait_until("the window's messages sealed in the archive", lambda: all(
        coverage_of(store, r.topic, r.partition).contains(r.last_offset) for r in ranges), flow)
    env = s.as_env()
    out = CliRunner().invoke(cli_app, ["data", "snapshot", "--offsets", requests[0].data_version, "-m", "retrain"],
                             env=env)
    assert out.exit_code == 0, out.output
    version = next(v for v in list_versions(store) if v.description == "retrain")
    assert version.record_count == sum(r.last_offset - r.first_offset + 1 for r in ranges) == 2000

    metrics = get(port, "/metrics")
    assert 'streamscore_drift_status{model="demo-risk"} 2.0' in metrics
    psi = next(line for line in metrics.splitlines()
               if line.startswith('streamscore_drift_statistic{feature="amount",model="demo-risk",statistic="psi"}'))
    latest = records(s)[-1]  # no new input since: the gauges hold the latest record's values
    assert float(psi.split()[-1]) == next(st.value for st in latest.statistics
                                          if (st.feature, st.statistic) == ("amount", "psi"))

    tail = CliRunner().invoke(cli_app, ["tail", s.drift_topic, "--from-beginning", "--no-follow"], env=env,
                              terminal_width=200)
    assert tail.exit_code == 0, tail.output
    assert "ALERT" in tail.output and all(name in tail.output for name in FEATURE_NAMES)
    tail_alerts = CliRunner().invoke(cli_app, ["tail", s.alerts_topic, "--from-beginning", "--no-follow"], env=env,
                                     terminal_width=200)
    assert "ALERT firing" in tail_alerts.output and "retrain" in tail_alerts.output
    report = flow.log_dir / "drift.html"
    out = CliRunner().invoke(cli_app, ["drift", "report", "--out", str(report)], env=env)
    assert out.exit_code == 0, out.output
    page = report.read_text()
    assert page.count("<svg") >= len(FEATURE_NAMES) + 1 and ">alert<" in page


def test_concept_drift_on_labels_is_detected_by_adwin_after_the_change_only(dflow: Flow) -> None:
    s, flow = dflow.settings, dflow
    port = free_port()
    flow.start_worker(web_port=port)
    n_half = 3000
    events = sample_events(41, 2 * n_half)
    X = np.array([[e["features"][f] for f in FEATURE_NAMES] for e in events])
    truth = concept_labels(np.random.default_rng(42), X, changed_from=n_half)
    labels = [(e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": "risky" if y else "legit",
                                                      "label_time": int(time.time() * 1000)}))
              for e, y in zip(events, truth, strict=True)]

    def concept(record: DriftRecord) -> dict[str, str]:
        return {st.statistic: st.status for st in record.statistics if st.kind == "concept"}

    produce(s, flow.json_topic, encode_events(events[:n_half]))
    produce(s, s.labels_topic, labels[:n_half])
    before = judged(s, port, n_half, flow, key="labels_evaluated")
    assert set(concept(before)) == {"adwin", "page_hinkley"}
    assert all(concept(r).get("adwin", "ok") == "ok" for r in records(s)), "ADWIN alarm before the change"

    produce(s, flow.json_topic, encode_events(events[n_half:]))
    produce(s, s.labels_topic, labels[n_half:])
    judged(s, port, 2 * n_half, flow, key="labels_evaluated")
    alerted = [r for r in records(s) if concept(r).get("adwin") == "alert"]
    assert alerted, [concept(r) for r in records(s)]
    alerts = [decode(DriftAlert, m.value()) for m in read_all(s, s.alerts_topic)]
    assert any("concept drift: adwin" in reason for a in alerts for reason in a.reasons), alerts
    status = json.loads(get(port, "/drift"))
    assert status["labels"]["labels"] == 2 * n_half and status["labels_evaluated"] == 2 * n_half

