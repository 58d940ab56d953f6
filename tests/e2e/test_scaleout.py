"""Scale-out and consumer lag, end to end over the embedded broker (each test runs once per engine).

* Two workers in one consumer group share the input partitions; when one is stopped (SIGTERM)
  mid-stream its partitions move to the other and every event still gets a prediction.
* The lag monitor measures exactly the backlog of a group, each worker exposes it per partition at
  /metrics, and it falls to 0 once the backlog is scored and committed.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
import urllib.request

import orjson
import pytest
from confluent_kafka import KafkaException

from models.demo import sample_events
from streams.cli.produce import encode_events, produce
from streams.kafka.reader import read_all, wait_for
from streams.worker.lag import LagMonitor
from tests.conftest import free_port
from tests.support.metrics import metric_families

pytestmark = pytest.mark.e2e


def lag_by_partition(port: int, topic: str) -> dict[int, float]:
    samples = metric_families(port, timeout=2).get("streamscore_consumer_lag", [])
    return {int(s.labels["partition"]): s.value for s in samples if s.labels["topic"] == topic}


def partition_counts(settings, topic: str) -> dict[int, int]:
    return collections.Counter(m.partition() for m in read_all(settings, topic))


def test_two_workers_share_partitions_and_one_takes_over_when_the_other_stops(flow):
    s = flow.settings
    procs = flow.start_workers("worker-a", "worker-b")

    events = sample_events(71, 24_000)
    producer = threading.Thread(target=produce, args=(s, flow.json_topic, list(encode_events(events))),
                                kwargs={"rate": 4000})  # a steady stream of ~6 s
    producer.start()

    def both_scored(messages) -> bool:
        return len(messages) >= 3000 and {orjson.loads(m.value())["worker"] for m in messages} == set(procs)

    wait_for(s, s.prediction_topic, both_scored, timeout=60)
    stopped_at_ms = time.time_ns() // 1_000_000
    assert producer.is_alive(), "the stream ended before the stop; proves nothing"
    procs["worker-b"].send_signal(signal.SIGTERM)
    assert procs["worker-b"].wait(30) == 0, flow.log()
    exit_s = time.time() - stopped_at_ms / 1000
    # what was scored before the stop (after it, worker-a takes worker-b's partitions over: that is checked below)
    before = [p for m in read_all(s, s.prediction_topic) if (p := orjson.loads(m.value()))["scored_at"] < stopped_at_ms]
    owned_by = collections.defaultdict(set)
    for p in before:
        owned_by[p["worker"]].add(p["source_partition"])
    assert owned_by["worker-a"] and owned_by["worker-b"], owned_by  # the partitions were shared...
    assert not owned_by["worker-a"] & owned_by["worker-b"], owned_by  # ...not scored twice
    assert procs["worker-a"].poll() is None

    producer.join()
    wanted = {e["event_id"] for e in events}
    messages = wait_for(s, s.prediction_topic, lambda ms: wanted <= {orjson.loads(m.value())["event_id"] for m in ms},
                        timeout=60)
    preds = [orjson.loads(m.value()) for m in messages]
    by_id = collections.defaultdict(list)
    for p in preds:
        by_id[p["event_id"]].append(p)

    assert set(by_id) == wanted  # none lost
    for copies in by_id.values():  # a duplicate is the same input re-scored by the same model
        assert len({(p["score"], p["input_hash"], p["model_sha256"]) for p in copies}) == 1
    b_only = owned_by["worker-b"] - owned_by["worker-a"]
    taken_over = [p for p in preds if p["worker"] == "worker-a" and p["source_partition"] in b_only
                  and p["scored_at"] >= stopped_at_ms]
    assert taken_over, "worker-a never scored the partitions worker-b left"
    handover_s = (min(p["scored_at"] for p in taken_over) - stopped_at_ms) / 1000
    print(f"{s.engine}: partitions before the stop {dict(owned_by)}; worker-b exited {exit_s:.1f} s "
          f"after SIGTERM, worker-a scored its partitions {handover_s:.1f} s after SIGTERM; "
          f"{len(preds) - len(by_id)} duplicate predictions")


def test_lag_monitor_measures_exactly_the_unconsumed_backlog(flow):
    s = flow.settings
    produce(s, flow.json_topic, encode_events(sample_events(81, 3000)))
    produce(s, flow.json_topic, encode_events(sample_events(82, 700)))  # several record batches per partition
    monitor = LagMonitor(s, group_id=f"{s.app_id}-probe", topics=list(s.input_topics))
    try:
        lags = monitor.measure()
        assert monitor.broker_reachable
    finally:
        monitor.close()
    counts = partition_counts(s, flow.json_topic)
    partitions = range(s.partitions)
    assert {p: lags[(flow.json_topic, p)] for p in partitions} == {p: counts.get(p, 0) for p in partitions}
    assert all(lags[(flow.avro_topic, p)] == 0 for p in partitions)  # empty topic, nothing owed


def test_metrics_expose_lag_per_partition_falling_to_zero_once_scored(flow):
    s = flow.settings
    backlog = sample_events(91, 4000)
    produce(s, flow.json_topic, encode_events(backlog))
    port = free_port()
    worker = flow.start_worker(wait=False, web_port=port, lag_interval_s=0.5)

    # The monitor measures as soon as the worker's services start, a group join (~3 s on Tansu)
    # before the first commit, so the untouched backlog is always seen first.
    seen_total: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            lags = lag_by_partition(port, flow.json_topic)
        except OSError:  # web server not up yet
            lags = {}
        if len(lags) == s.partitions:
            seen_total.append(sum(lags.values()))
            if seen_total[-1] == 0:
                break
        time.sleep(0.1)

    assert seen_total, f"no lag gauge for {flow.json_topic} at /metrics:\n{flow.log()}"
    assert max(seen_total) == len(backlog)  # exactly the events produced, before any was consumed
    assert seen_total[-1] == 0, f"lag never reached 0: last {seen_total[-5:]}"
    scored = {orjson.loads(m.value())["event_id"] for m in read_all(s, s.prediction_topic)}
    assert scored == {e["event_id"] for e in backlog}  # lag 0 means scored, not just fetched
    metrics = metric_families(port, timeout=2)
    assert metrics["streamscore_broker_reachable"][0].value == 1
    assert set(lag_by_partition(port, flow.avro_topic)) == set(range(s.partitions))  # every input topic
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
        ready = orjson.loads(resp.read())
    assert ready["ready"] and ready["partitions_assigned"] and ready["broker_reachable"]
    assert ready["broker_answered_s_ago"] <= 5 * 0.5 + 1  # answered within a few lag intervals


def test_lag_monitor_reports_an_unreachable_broker(base_settings):
    nowhere = base_settings.model_copy(update={"broker": f"kafka://127.0.0.1:{free_port()}"})
    monitor = LagMonitor(nowhere, group_id="g", topics=list(nowhere.input_topics), timeout_s=1)
    try:
        with pytest.raises(KafkaException):
            monitor.measure()
    finally:
        monitor.close()
    assert not monitor.broker_reachable and monitor.last_answer_age_s is None
