"""End to end: a real worker's /metrics, with the archiver as its child process, is a clean exposition.

Real embedded broker, a real worker (``python -m streams.cli.main worker``) with ``STREAMSCORE_ARCHIVE_MODE=process``
and ``STREAMSCORE_LOG_FORMAT=json``. After it has archived every record, its /metrics must pass
``promtool check metrics`` (when installed: `make promtool`) and the strict checker (streams.metrics.
exposition_problems) either way, list each archive family exactly once with the child's non-zero values, and carry
no ``*_created`` series; every line the worker and its child logged must be one JSON object.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from datastore.catalog import list_manifests
from datastore.storage import LocalStorage
from models.demo import sample_events
from streams.cli.produce import encode_events, produce
from streams.metrics import exposition_problems

pytestmark = pytest.mark.e2e

ARCHIVE_FAMILIES = {"streamscore_archive_records", "streamscore_archive_records_skipped",
                    "streamscore_archive_epochs", "streamscore_archive_segments_sealed",
                    "streamscore_archive_sealed_bytes", "streamscore_archive_open_records"}


@pytest.fixture
def engine() -> str:
    return "faust"  # the page is the worker's, not the engine's: one engine keeps the shared machine free


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def sample_values(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_live_metrics_pass_promtool_with_the_archiver_childs_values_once(flow):
    s = flow.settings = flow.settings.model_copy(update={"archive": True, "log_format": "json"})
    events = sample_events(51, 400)
    produce(s, flow.json_topic, encode_events(events, "json"))
    # info: the child's "archiver stopped" line is an info line, and every process honours --loglevel
    worker = flow.start_worker(archive_mode="process", archive_segment_records=100, archive_segment_seconds=0.5,
                               loglevel="info")
    port = worker.settings.web_port
    store = LocalStorage(s.data_path)
    wanted = {flow.json_topic: len(events), s.prediction_topic: len(events)}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        sealed = {t: sum(m.record_count for m in list_manifests(store, [t])) for t in wanted}
        if sealed == wanted:
            break
        time.sleep(0.5)
    assert sealed == wanted, flow.log()

    # the child's counters reach the worker's page on the next scrape; wait for the last seal to show
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = scrape(port)
        values = sample_values(text)
        if values.get(("streamscore_archive_records_total", (("topic", s.prediction_topic),))) == len(events):
            break
        time.sleep(0.5)
    segment_bytes = sum(m.bytes for m in list_manifests(store, list(wanted)))

    assert exposition_problems(text) == []
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "_created" not in text
    families = [f.name for f in text_string_to_metric_families(text)]
    assert {f for f in families if f.startswith("streamscore_archive_")} == ARCHIVE_FAMILIES
    assert all(families.count(f) == 1 for f in ARCHIVE_FAMILIES)
    typed = [line.split()[2].removesuffix("_total") for line in text.splitlines() if line.startswith("# TYPE ")]
    assert all(typed.count(f) == 1 for f in ARCHIVE_FAMILIES), typed
    # the child's values, exactly: the records of both topics, and the bytes of every segment it sealed
    assert values[("streamscore_archive_records_total", (("topic", flow.json_topic),))] == len(events)
    assert values[("streamscore_archive_records_total", (("topic", s.prediction_topic),))] == len(events)
    assert values[("streamscore_archive_sealed_bytes_total", ())] == segment_bytes > 0
    assert values[("streamscore_archive_open_records", ())] == 0
    assert values[("streamscore_predictions_total", (("model", "demo-risk"), ("version", "1")))] == len(events)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/archive", timeout=5) as resp:
        child_pid = json.loads(resp.read())["pid"]

    # one log format across the worker and its archiver child: every line is a JSON object
    flow.stop_all()
    lines = [line for line in (flow.log_dir / "worker-0.log").read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
    assert all({"time", "level", "logger", "pid", "message"} <= r.keys() for r in records)
    pids = {r["pid"] for r in records}
    assert worker.pid in pids, pids
    assert child_pid in pids, (child_pid, pids)
    # the child (run as ``python -m streams.archive.lane``, so its logger is __main__) logged its stop in JSON
    assert any(r["pid"] == child_pid and r["message"].startswith("archiver stopped: ") for r in records), \
        [r for r in records if r["pid"] == child_pid]
