"""The Faust engine's batch path, end to end over the embedded broker and real worker processes.

* The scoring agent crashes on a batch (injected from the inside, twice): Faust restarts it, the batch is read
  again from the committed offsets, every input gets a prediction, SIGTERM afterwards finishes well within the
  stop timeout, and the group's committed offsets end exactly at the end of the input (nothing past an
  unacknowledged input, nothing left behind). A fresh worker then scores the next events and nothing older.
* Graceful handover: a second worker joins mid-stream and the first is stopped with SIGTERM; every input is
  scored and the duplicate count is the one docs/operations.md states.
"""

from __future__ import annotations

import collections
import threading
import time
import urllib.request

import orjson
import pytest
from confluent_kafka import TopicPartition

from models.demo import sample_events
from streams.cli.demo import stop_worker
from streams.cli.produce import encode_events, produce
from streams.kafka import clients
from streams.kafka.reader import read_all, wait_for
from tests.support.metrics import metric_families

pytestmark = pytest.mark.e2e


@pytest.fixture
def engine() -> str:
    return "faust"


def scored(settings) -> collections.Counter:
    messages = read_all(settings, settings.prediction_topic)
    return collections.Counter(orjson.loads(m.value())["event_id"] for m in messages)


def wait_scored(settings, ids: set[str], timeout: float) -> None:
    wait_for(settings, settings.prediction_topic,
             lambda ms: ids <= {orjson.loads(m.value())["event_id"] for m in ms}, timeout)


def committed_vs_end(settings, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    consumer = clients.consumer(settings.kafka, settings.app_id)
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        end = {p: 0 for p in range(settings.partitions)}
        for m in read_all(settings, topic):
            end[m.partition()] = max(end[m.partition()], m.offset() + 1)
    finally:
        consumer.close()
    return committed, end


def test_agent_crash_is_read_again_and_sigterm_then_finishes(flow):
    s = flow.settings
    worker = flow.start_worker(debug_endpoints=True)
    first, second, third = sample_events(171, 400), sample_events(172, 400), sample_events(173, 200)
    produce(s, flow.json_topic, encode_events(first))
    wait_scored(s, {e["event_id"] for e in first}, timeout=60)
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.settings.web_port}/debug/fail?part=faust-agent&times=2",
                                timeout=5) as resp:
        assert orjson.loads(resp.read())["ok"]
    produce(s, flow.json_topic, encode_events(second))
    ids = {e["event_id"] for e in first + second}
    wait_scored(s, ids, timeout=60)
    assert flow.log().count("injected scoring agent failure") >= 2, flow.log()
    time.sleep(2 * s.commit_interval_s + 1)  # the last periodic commit
    started = time.monotonic()
    assert stop_worker(worker, timeout=40) == 0, flow.log()
    stop_s = time.monotonic() - started
    committed, end = committed_vs_end(s, flow.json_topic)
    assert committed == end, (committed, end)
    # a fresh worker: the next events are scored, nothing already committed comes back
    before = scored(s)
    flow.start_worker()
    produce(s, flow.json_topic, encode_events(third))
    wait_scored(s, {e["event_id"] for e in third}, timeout=60)
    after = scored(s)
    assert set(after) == ids | {e["event_id"] for e in third}
    assert after - before == collections.Counter(e["event_id"] for e in third)
    print(f"\nfaust agent crashed twice: {len(ids)} inputs, all scored, {sum(before.values()) - len(before)} "
          f"duplicates; SIGTERM after the crashes took {stop_s:.1f} s")
    assert stop_s < 20


def test_graceful_handover_duplicates(flow):
    s = flow.settings
    a = flow.start_worker()
    events = sample_events(181, 6000)
    feeder = threading.Thread(target=produce, args=(s, flow.json_topic, encode_events(events)),
                              kwargs={"rate": 600}, daemon=True)
    feeder.start()
    time.sleep(2)
    flow.start_worker()  # joins mid-stream: partitions move from a to b
    time.sleep(2)
    started = time.monotonic()
    assert stop_worker(a, timeout=40) == 0, flow.log()  # graceful: a's partitions move back to b
    stop_s = time.monotonic() - started
    feeder.join(30)
    ids = {e["event_id"] for e in events}
    wait_scored(s, ids, timeout=60)
    counts = scored(s)
    duplicates = sum(counts.values()) - len(counts)
    print(f"\nfaust graceful handover (join, then SIGTERM mid-stream at 600 ev/s): {len(ids)} events, "
          f"{duplicates} duplicates; the stopped worker exited in {stop_s:.1f} s")
    assert set(counts) == ids
    assert duplicates == 0, {k: v for k, v in counts.items() if v > 1}


def batch_size_buckets(port: int) -> dict[str, float]:
    """``le`` -> cumulative count of the worker's streamscore_batch_size histogram."""
    return {sample.labels["le"]: sample.value for sample in metric_families(port)["streamscore_batch_size"]
            if sample.name == "streamscore_batch_size_bucket"}


def test_fetched_backlog_reaches_the_agent_in_bounded_batches(flow):
    """A backlog loaded before the worker starts is fetched ~1 MiB per partition at once (thousands of events):
    the agent scores it in batches of at most MAX_BATCH_EVENTS, each event exactly once."""
    from streams.engines.faust_agent import MAX_BATCH_EVENTS

    s = flow.settings
    events = sample_events(174, 20_000)
    produce(s, flow.json_topic, encode_events(events))
    worker = flow.start_worker()
    wait_scored(s, {e["event_id"] for e in events}, timeout=120)
    counts = scored(s)
    assert set(counts) == {e["event_id"] for e in events} and set(counts.values()) == {1}
    buckets = batch_size_buckets(worker.settings.web_port)
    total = buckets["+Inf"]
    assert buckets[f"{MAX_BATCH_EVENTS:.1f}"] == total, buckets  # none above the bound (a bucket of its own)
    assert buckets["1024.0"] < total, buckets  # fetched batches were larger than 1024: the cut was exercised
    print(f"\nfaust agent: 20,000 events in {total:.0f} batches, {total - buckets['1024.0']:.0f} of 1025-2048")
