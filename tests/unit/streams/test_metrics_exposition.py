"""The worker's /metrics page, strictly: each family once, no *_created series, the archiver child's values.

The archiver child is played by a real prometheus_client HTTP server on 127.0.0.1 serving its own registry (what
``python -m streams.archive.lane --metrics-port`` serves); the worker side is a registry holding the worker's own,
never-updated copies, as the real worker does after importing streams.archive.lane. The live version of this
test, over a real worker and its child process, is tests/e2e/test_metrics_live.py.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from streams import metrics
from streams.archive import lane
from streams.archive.lane import ChildMetrics
from tests.conftest import free_port


def archive_metrics(registry: CollectorRegistry) -> tuple[Counter, Counter, Gauge]:
    records = Counter("streamscore_archive_records_total", "Records written", ["topic"], registry=registry)
    sealed_bytes = Counter("streamscore_archive_sealed_bytes_total", "Bytes of sealed segment files",
                           registry=registry)
    open_records = Gauge("streamscore_archive_open_records", "Records in unsealed segments", registry=registry)
    return records, sealed_bytes, open_records


@pytest.fixture
def child() -> tuple[int, tuple[Counter, Counter, Gauge]]:
    """A stand-in archiver child: its own registry with non-zero values, served over HTTP."""
    registry = CollectorRegistry()
    records, sealed_bytes, open_records = archive_metrics(registry)
    records.labels("predictions").inc(300)
    sealed_bytes.inc(1_048_576)
    open_records.set(12)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port, (records, sealed_bytes, open_records)
    server.shutdown()
    thread.join(5)


def values(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def promtool_problems(text: str) -> str | None:
    """promtool's verdict when it is installed (`make promtool`), else None."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_the_old_wiring_lists_each_archive_family_twice_and_the_checker_says_so(child):
    port, _ = child
    worker = CollectorRegistry()
    archive_metrics(worker)  # the worker's own copies, never updated in process mode
    old = ChildMetrics(port, replaces=())  # before the fix: every streamscore_archive_* family of the child,
    old.names = {"streamscore_archive_records", "streamscore_archive_sealed_bytes", "streamscore_archive_open_records"}
    worker.register(old)  # registered beside the worker's copies
    text = generate_latest(worker).decode()
    problems = metrics.exposition_problems(text)
    assert "family streamscore_archive_sealed_bytes listed 2 times (its samples are not contiguous)" in problems
    assert "# HELP streamscore_archive_records_total given more than once" in problems
    assert "streamscore_archive_open_records{}: the same series twice" in problems
    # and the copy a scraper meets first is the dead one: what Prometheus stored (sealed bytes 0)
    first = next(line for line in text.splitlines() if line.startswith("streamscore_archive_sealed_bytes_total"))
    assert first == "streamscore_archive_sealed_bytes_total 0.0"
    verdict = promtool_problems(text)
    assert verdict is None or verdict != ""


def test_child_metrics_replace_the_workers_copies_each_family_once_with_the_childs_values(child):
    port, _ = child
    worker = CollectorRegistry()
    copies = archive_metrics(worker)
    collector = ChildMetrics(port, replaces=copies)
    collector.install(worker)
    text = generate_latest(worker).decode()
    assert metrics.exposition_problems(text) == []
    assert promtool_problems(text) in (None, "")
    got = values(text)
    assert got == {("streamscore_archive_records_total", (("topic", "predictions"),)): 300.0,
                   ("streamscore_archive_sealed_bytes_total", ()): 1_048_576.0,
                   ("streamscore_archive_open_records", ()): 12.0}
    assert text.count("# TYPE streamscore_archive_sealed_bytes_total counter") == 1
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # a second copy can no longer be registered
        worker.register(copies[1])
    collector.uninstall(worker)  # the archiver stopped: the worker's own copies are back, once
    assert metrics.exposition_problems(generate_latest(worker).decode()) == []
    assert values(generate_latest(worker).decode())[("streamscore_archive_sealed_bytes_total", ())] == 0.0


def test_while_the_child_is_down_its_series_are_absent_not_stale(child):
    worker = CollectorRegistry()
    copies = archive_metrics(worker)
    ChildMetrics(free_port(), replaces=copies).install(worker)  # nobody listens there
    text = generate_latest(worker).decode()
    assert metrics.exposition_problems(text) == []
    assert "streamscore_archive" not in text


def test_the_workers_registry_with_the_default_child_collector_is_clean_and_has_no_created_series(child):
    port, _ = child
    collector = ChildMetrics(port)  # replaces every streamscore_archive_* metric of streams.archive.lane
    assert collector.names == {"streamscore_archive_records", "streamscore_archive_records_skipped",
                               "streamscore_archive_epochs", "streamscore_archive_segments_sealed",
                               "streamscore_archive_sealed_bytes", "streamscore_archive_open_records"}
    metrics.PREDICTIONS_OUT.labels("demo-risk", "1").inc(0)
    metrics.BATCH_SECONDS.observe(0.003)
    collector.install()
    try:
        text = generate_latest(REGISTRY).decode()
    finally:
        collector.uninstall()
    assert metrics.exposition_problems(text) == []
    assert promtool_problems(text) in (None, "")
    assert "_created" not in text
    assert values(text)[("streamscore_archive_sealed_bytes_total", ())] == 1_048_576.0
    assert lane.SEALED_BYTES in REGISTRY._collector_to_names  # uninstall put the worker's copy back


@pytest.mark.parametrize(("page", "problem"), [
    ("# TYPE a counter\na_total 1\na_created 1.7e9\n", "a_created: a *_created series (disable_created_metrics)"),
    ("# TYPE a counter\na_total 1\n# TYPE b gauge\nb 1\n# TYPE a counter\na_total 2\n",
     "# TYPE a given more than once"),
    ("# TYPE g gauge\ng{x=\"1\"} 1\ng{x=\"1\"} 2\n", "g{'x': '1'}: the same series twice"),
    ("# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 3\nh_count 3\nh_sum 1\n",
     "h{}: buckets not cumulative in increasing le"),
    ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 3\nh_count 4\nh_sum 1\n",
     "h{}: _count 4 != +Inf bucket 3"),
    ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\nh_sum 1\n", 'h{}: no le="+Inf" bucket last'),
    ("a{x=1} 1\n", "does not parse: "),
])
def test_the_checker_finds_each_kind_of_problem(page, problem):
    problems = metrics.exposition_problems(page)
    assert any(p.startswith(problem) for p in problems), problems
