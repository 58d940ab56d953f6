"""`make bench`: end-to-end throughput and latency, next to raw baselines measured in the same run.

These 2-core machines are noisy, so absolute numbers mean little alone: each worker row's ratio is to the
hand-written loop measured just before it, on the same broker (the box's speed drifts by up to 1.8x within
minutes), and the ratios are what to compare across runs.

Throughput of a worker is taken from the predictions themselves (first to last ``scored_at``
over a pre-loaded backlog, or from the end of loading one for the 2-worker row: ``backlog_rate``), so
group-join time is excluded. Latency is measured separately at a
paced rate (event time -> prediction's broker timestamp), since a backlog only measures queueing.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import onnxruntime as ort
import orjson
from rich.console import Console
from rich.table import Table

from models.demo import sample_events
from models.onnx_scorer import OnnxScorer
from schemas.bench import measure_hot_path
from streams.cli.common import ensure_demo_model
from streams.cli.demo import start_worker, stop_worker, wait_ready
from streams.cli.produce import encode_events, produce, stamped_now
from streams.kafka import clients
from streams.kafka.broker import ensure_broker
from streams.kafka.reader import read_all, wait_for
from streams.kafka.topics import ensure_topics
from streams.settings import Settings


def raw_onnx(settings: Settings, X: np.ndarray, batch: int = 256) -> float:
    """Rows/s of a bare InferenceSession on the same model and batch size (1 thread, like the worker)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(settings.model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    for i in range(0, len(X), batch):
        session.run(None, {name: X[i:i + batch]})
    return len(X) / (time.perf_counter() - started)


def raw_kafka_loop(settings: Settings, topic: str, n: int) -> float:
    """Events/s of a bare confluent-kafka loop: consume, produce one output each, commit after delivery."""
    out = f"{topic}-raw-out"
    ensure_topics(settings, [out])
    consumer = clients.consumer(settings.kafka, f"raw-{uuid.uuid4().hex[:8]}")
    producer = clients.producer(settings.kafka)
    consumer.subscribe([topic])
    done, started, last_commit = 0, None, time.monotonic()
    while done < n:
        messages = consumer.consume(settings.batch_size, 0.005)
        if messages and started is None:
            started = time.perf_counter()
        for m in messages:
            if m.error() is None:
                producer.produce(out, m.value(), m.key())
                done += 1
        producer.poll(0)
        if time.monotonic() - last_commit >= settings.commit_interval_s:
            producer.flush()
            consumer.commit(asynchronous=True)
            last_commit = time.monotonic()
    producer.flush()
    consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - started
    consumer.close()
    return n / elapsed


def handwritten_loop(settings: Settings, topic: str, out: str, dlq: str, total: int, result: object) -> None:
    """The baseline: a minimal correct hand-written confluent-kafka + onnxruntime scorer (run in a child process).

    consume(256), orjson decode, the 8 features present and finite, one numpy batch, onnxruntime with 1 thread,
    a JSON prediction keyed by event id, a dead letter for anything else, and a commit only after every output
    of the batches before it is delivered. What a user would write in ~80 lines; every row is compared to it.
    """
    import math

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    scorer = OnnxScorer.from_dir(settings.model_dir)
    features = list(scorer.feature_names)
    session = ort.InferenceSession(str(settings.model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    consumer = clients.consumer(settings.kafka, f"baseline-{uuid.uuid4().hex[:8]}")
    producer = clients.producer(settings.kafka)
    consumer.subscribe([topic])
    pending = [0]

    def delivered(err: object, msg: object) -> None:
        pending[0] -= 1

    done, committed, last_commit = 0, 0, time.monotonic()
    while done < total:
        messages = [m for m in consumer.consume(256, 0.005) if m.error() is None]
        rows, good = [], []
        for m in messages:
            try:
                event = orjson.loads(m.value())
                row = [float(event["features"][f]) for f in features]
                if not all(math.isfinite(x) for x in row):
                    raise ValueError("not finite")
            except (ValueError, KeyError, TypeError):
                producer.produce(dlq, m.value(), m.key(), on_delivery=delivered)
                pending[0] += 1
                continue
            rows.append(row)
            good.append(event)
        if rows:
            scores = session.run(None, {name: np.asarray(rows, dtype=np.float32)})[-1][:, -1].tolist()
            now = time.time_ns() // 1_000_000
            for event, score in zip(good, scores, strict=True):
                value = orjson.dumps({"event_id": event["event_id"], "score": score,
                                      "event_time": event["event_time"], "scored_at": now})
                producer.produce(out, value, event["event_id"].encode(), on_delivery=delivered)
                pending[0] += 1
        done += len(messages)
        producer.poll(0)
        if done > committed and (time.monotonic() - last_commit >= settings.commit_interval_s or done >= total):
            producer.flush()  # at-least-once: everything consumed so far is delivered before the commit
            consumer.commit(asynchronous=False)
            committed, last_commit = done, time.monotonic()
    consumer.close()
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a spawned child reports the bench's own peak
    result.value = peak_rss_mb(os.getpid())  # type: ignore[attr-defined]


def peak_rss_mb(pid: int) -> float:
    """VmHWM of ``pid`` and all its descendants, summed (each process's own peak: an upper bound)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = open(f"/proc/{p}/status").read()  # noqa: SIM115 - /proc, read once
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]  # noqa: SIM115
        except (OSError, StopIteration):
            continue
    return total


def baseline_run(settings: Settings, topic: str, n: int, console: Console, paced_rate: int,
                 latency: bool = True) -> dict:
    """The hand-written loop, measured exactly as a worker: backlog throughput from its outputs' scored_at,
    then (``latency``) latency at ``paced_rate`` to the output's broker timestamp, and its peak RSS."""
    import multiprocessing

    run = uuid.uuid4().hex[:6]
    out, dlq = f"bench-base-{run}", f"bench-base-dlq-{run}"
    ensure_topics(settings, [out, dlq])
    seed = int(time.time())
    warm_up, measured = (sample_events(seed, paced_rate), sample_events(seed + 1, paced_rate * 5)) if latency \
        else ([], [])
    total = n + len(warm_up) + len(measured)
    ctx = multiprocessing.get_context("spawn")
    rss = ctx.Value("d", 0.0)
    proc = ctx.Process(target=handwritten_loop, args=(settings, topic, out, dlq, total, rss), daemon=True)
    proc.start()
    lat: list[int] = []
    try:
        with console.status(f"baseline loop: scoring a backlog of {n} events"):
            msgs = wait_for(settings, out, lambda ms: len(ms) >= n, timeout=600)
        throughput = backlog_rate([orjson.loads(m.value()) for m in msgs[:n]])
        if latency:
            with console.status(f"baseline loop: latency at {paced_rate} events/s"):
                produce(settings, topic, encode_events(stamped_now(warm_up + measured)), rate=paced_rate)
                msgs = wait_for(settings, out, lambda ms: len(ms) >= total, timeout=120)
            ids = {e["event_id"] for e in measured}
            lat = [m.timestamp()[1] - row["event_time"] for m in msgs[n:]
                   if (row := orjson.loads(m.value()))["event_id"] in ids]
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
    p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if lat else (float("nan"),) * 2
    return {"throughput": throughput, "p50": p50, "p99": p99, "count": n, "rss": rss.value}


def pipeline_micro(settings: Settings, n: int = 100_000, batch: int = 256, repeat: int = 3) -> dict[str, float]:
    """µs/event of ``ScoringPipeline.process`` on ``n`` demo events (JSON) in batches of ``batch``, no Kafka.

    The whole in-process scoring cost of one event: decode + validate, ONNX, input hash, prediction bytes,
    metrics. ``onnx`` is the share of a bare ``scorer.predict_many`` on the same rows (best of ``repeat``).
    """
    from streams.scoring.pipeline import ScoringPipeline  # heavy: keeps `streamscore --help` fast
    from streams.scoring.records import InboundMessage  # heavy: keeps `streamscore --help` fast

    scorer = OnnxScorer.from_dir(settings.model_dir)
    pipeline = ScoringPipeline(settings.scoring.model_copy(update={"input_topics": {"features": "json"}}), scorer)
    messages = [InboundMessage("features", 0, i, key, value)
                for i, (key, value) in enumerate(encode_events(sample_events(4321, n)))]
    chunks = [messages[i:i + batch] for i in range(0, n, batch)]
    X = np.array([[e["features"][f] for f in scorer.feature_names] for e in sample_events(4321, n)],
                 dtype=np.float32)
    best, best_onnx, outputs = float("inf"), float("inf"), 0
    for _ in range(repeat):
        started, outputs = time.perf_counter(), 0
        for chunk in chunks:
            outputs += len(pipeline.process(chunk).outputs)
        best = min(best, time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(0, n, batch):
            scorer.predict_many(X[i:i + batch])
        best_onnx = min(best_onnx, time.perf_counter() - started)
    if outputs != n:
        raise RuntimeError(f"pipeline bench: {outputs} outputs for {n} events")
    return {"us_per_event": best * 1e6 / n, "onnx_us_per_event": best_onnx * 1e6 / n}


def backlog_rate(rows: list[dict], since_ms: float | None = None) -> float:
    """Events/s over a backlog from its predictions' own ``scored_at``: distinct events over first to last.

    ``since_ms``: only what was scored from then on. A backlog loaded while its workers already run (the 2-worker
    row) is scored partly while the producer and the broker's writes take CPU that a pre-loaded backlog leaves to
    the workers: the bench process used 30-59 % of a core and the broker 26-38 % then (2 workers, 300k events,
    measured). Counting from the end of loading compares like with like. The whole span when fewer than half the
    events come after it.

    >>> rows = [{"event_id": f"e{i}", "scored_at": 1000 + i} for i in range(1001)]  # one per ms
    >>> backlog_rate(rows), backlog_rate(rows, since_ms=1500), backlog_rate(rows, since_ms=1900)
    (1001.0, 1002.0, 1001.0)
    """
    after = rows if since_ms is None else [r for r in rows if r["scored_at"] >= since_ms]
    if since_ms is None or 2 * len(after) < len(rows):
        after, since_ms = rows, min(r["scored_at"] for r in rows)
    last = max(r["scored_at"] for r in after)
    return len({r["event_id"] for r in after}) / max(1e-3, (last - since_ms) / 1000)


def worker_run(settings: Settings, engine: str, topic: str, n: int, console: Console, paced_rate: int,
               workers: int = 1, latency: bool = True, backlog: list[tuple[bytes, bytes]] | None = None,
               **overrides: object) -> dict:
    """Throughput over a backlog of ``n`` events, then latency at ``paced_rate`` events/s; peak RSS of the
    worker with its children (the first worker's). ``workers`` > 1: that many workers of one group on the
    same partitions. ``backlog``: produced only once every worker is ready, i.e. once the group has settled
    (else ``topic`` is already loaded, and a second worker's rebalance would fall inside the figure)."""
    run = uuid.uuid4().hex[:6]
    seed = int(time.time())
    pred, dlq, port = f"bench-pred-{run}", f"bench-dlq-{run}", 6100 + int(run, 16) % 800
    ensure_topics(settings, [pred, dlq])
    procs, ports = [], [port + i for i in range(workers)]
    try:
        for i, p in enumerate(ports):
            worker_settings = settings.model_copy(update={
                "engine": engine, "app_id": f"bench-{engine}-{run}", "input_topics": {topic: "json"},
                "prediction_topic": pred, "dead_letter_topic": dlq, "web_port": p,
                "data_dir": settings.state_dir / f"bench-data-{run}-{i}", **overrides})
            log_path = settings.state_dir / f"bench-{engine}-{i}.log"
            procs.append(start_worker(worker_settings, log_path))
        for proc, p in zip(procs, ports, strict=True):
            if not wait_ready(p, 90, proc=proc) and workers == 1:
                raise RuntimeError(f"{engine} worker not ready; see {settings.state_dir}/bench-{engine}-0.log")
        loaded_ms = None
        if backlog is not None:
            produce(settings, topic, backlog)
            loaded_ms = time.time() * 1000  # the workers score meanwhile; see backlog_rate
        with console.status(f"{engine}: scoring a backlog of {n} events ({workers} worker(s))"):
            # watch the workers' own counters: reading the output topic meanwhile would steal CPU
            deadline = time.monotonic() + 600
            while sum(predictions_total(p) for p in ports) < n and time.monotonic() < deadline:
                time.sleep(0.25)
        rows = [orjson.loads(m.value()) for m in read_all(settings, pred)]
        throughput = backlog_rate(rows, since_ms=loaded_ms)
        p50 = p99 = float("nan")
        if latency:
            # a paced load with fresh event times, measured to the prediction's broker timestamp; the first
            # second warms up an idle consumer (its first fetches take ~0.5 s) and is not counted
            warm_up, measured = sample_events(seed, paced_rate), sample_events(seed + 1, paced_rate * 5)
            ids = {e["event_id"] for e in measured}
            total = len(rows) + len(warm_up) + len(measured)
            with console.status(f"{engine}: latency at {paced_rate} events/s"):
                produce(settings, topic, encode_events(stamped_now(warm_up + measured)), rate=paced_rate)
                msgs = wait_for(settings, pred, lambda ms: len(ms) >= total, timeout=120)
            lat = [m.timestamp()[1] - row["event_time"] for m in msgs[len(rows):]
                   if (row := orjson.loads(m.value()))["event_id"] in ids]
            p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        rss = peak_rss_mb(procs[0].pid)
    finally:
        for proc in procs:
            stop_worker(proc)
    return {"throughput": throughput, "p50": p50, "p99": p99, "count": len(rows), "rss": rss}


def predictions_total(port: int) -> float:
    """Sum of streamscore_predictions_total scraped from a worker's /metrics."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "streamscore_predictions" for sample in family.samples
               if sample.name == "streamscore_predictions_total")


# Targets of issue 13, as ratios to the hand-written loop (None: no throughput target for that row).
TARGETS = {"baseline": 1.0, "batch, as deployed": 1.0, "batch, scoring only": 1.2, "faust, as deployed": 0.5,
           "faust, scoring only": 0.5}
SCORING_ONLY = {"drift_window": 0, "archive": False}


class UnknownRows(ValueError):
    """``--only`` names no row: the user's mistake (one line, exit 2)."""


def select_rows(names: list[str], only: str | None) -> list[str]:
    """The rows ``--only`` keeps: the baseline (every ratio needs it) and each row whose name contains one of the
    comma-separated filters, or contains the whole of ``only`` (row names have commas: "faust, scoring only" is
    that one row, not every faust row and every scoring-only row). A filter that matches nothing is a mistake
    (``UnknownRows``), not an empty run.

    >>> rows = ["baseline", "batch, as deployed", "faust, scoring only", "batch, scoring only"]
    >>> select_rows(rows, "faust")
    ['baseline', 'faust, scoring only']
    >>> select_rows(rows, "faust, scoring only")
    ['baseline', 'faust, scoring only']
    >>> select_rows(rows, "faust, as deployed")
    ['baseline', 'batch, as deployed', 'faust, scoring only']
    >>> select_rows(["baseline", "batch, as deployed"], None)
    ['baseline', 'batch, as deployed']
    """
    if not only:
        return names
    whole = only.strip()
    if whole and any(whole in name for name in names if name != "baseline"):
        return [name for name in names if name == "baseline" or whole in name]
    filters = [f.strip() for f in only.split(",") if f.strip()]
    unmatched = [f for f in filters if not any(f in name for name in names)]
    if unmatched or not filters:
        raise UnknownRows(f"--only {only!r}: no row matches {', '.join(unmatched) or 'an empty filter'}; rows: "
                         f"{'; '.join(names)}")
    return [name for name in names if name == "baseline" or any(f in name for f in filters)]


def run_bench(settings: Settings, n: int, console: Console, paced_rate: int = 10_000, only: str | None = None) -> None:

    ensure_demo_model(settings)  # a bad STREAMSCORE_MODEL_DIR fails before a broker is started for nothing
    # a bad --only fails before the broker starts too
    select_rows(list(dict.fromkeys(["baseline", *TARGETS, "batch, scoring only, 2 workers"])), only)
    ensure_broker(settings)
    scorer = OnnxScorer.from_dir(settings.model_dir)
    events = sample_events(12345, n)
    X = np.array([[e["features"][f] for f in scorer.feature_names] for e in events], dtype=np.float32)
    console.print(f"benchmark: {n} events, model {scorer.name}@{scorer.version}, batch {settings.batch_size}, "
                  f"paced latency at {paced_rate} events/s")

    onnx_rate = raw_onnx(settings, X)
    with console.status("scoring pipeline and hot path, in process (no Kafka)"):

        pipeline_cost = pipeline_micro(settings, min(n, 100_000))
        hot_path = measure_hot_path(min(n, 100_000))
    results: dict[str, dict] = {}
    kafka_rates = []
    # As deployed, a worker also runs the drift lane and the archiver (a child process), each reading every
    # input; the scoring-only runs show what they cost. Each run gets its own freshly loaded topic.
    runs: dict[str, tuple[str | None, dict, int]] = {
        "baseline": (None, {}, 1),
        "batch, as deployed": ("batch", {}, 1),
        "faust, as deployed": ("faust", {}, 1),
        "batch, scoring only": ("batch", SCORING_ONLY, 1),
        "faust, scoring only": ("faust", SCORING_ONLY, 1),
        "batch, scoring only, 2 workers": ("batch", SCORING_ONLY, 2),
    }
    encoded = list(encode_events(events))  # loaded once per row: before its worker starts, or after (2 workers)
    runs = {label: runs[label] for label in select_rows(list(runs), only)}
    for label, (engine, overrides, workers) in runs.items():
        topic = f"bench-in-{engine or 'base'}-{uuid.uuid4().hex[:6]}"
        ensure_topics(settings, [topic])
        if workers == 1:
            with console.status(f"loading {n} events into {topic}"):
                t = time.perf_counter()
                produce(settings, topic, encoded)
                produce_rate = n / (time.perf_counter() - t)
        if engine is None:
            with console.status("raw confluent-kafka consume->produce loop"):
                kafka_rates.append(raw_kafka_loop(settings, topic, n))
            results[label] = baseline_run(settings, topic, n, console, paced_rate)
        else:
            # The loop again, just before this row on its own fresh backlog: the box's speed drifts by up to
            # 1.8x within minutes (the same worker, 52k then 92k events/s, 30 s apart), so each row's ratio is
            # to the loop measured next to it.
            paired_topic = f"bench-in-pair-{uuid.uuid4().hex[:6]}"
            ensure_topics(settings, [paired_topic])
            with console.status(f"loading {n} events into {paired_topic}"):
                produce(settings, paired_topic, encoded)
            paired = baseline_run(settings, paired_topic, n, console, paced_rate, latency=False)["throughput"]
            results[label] = worker_run(settings, engine, topic, n, console, paced_rate, workers=workers,
                                        latency=workers == 1, backlog=None if workers == 1 else encoded,
                                        **overrides)
            results[label]["paired"] = paired
    raw_kafka = float(np.mean(kafka_rates))
    base = results["baseline"]["throughput"]

    table = Table(title=f"streamscore bench ({n} events; ratio = events/s ÷ the hand-written loop's, measured just "
                        f"before each row)")
    for col in ("path", "events/s", "loop before", "ratio", "target", "p50 ms", "p99 ms", "peak RSS MB"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row("raw onnxruntime (batch 256, 1 thread)", f"{onnx_rate:,.0f}", "", f"{onnx_rate / base:.2f}",
                  "", "", "", "")
    table.add_row("raw confluent-kafka consume→produce (no decoding)", f"{raw_kafka:,.0f}", "",
                  f"{raw_kafka / base:.2f}", "", "", "", "")
    table.add_row("producer (load the backlog)", f"{produce_rate:,.0f}", "", "", "", "", "", "")
    for label, r in results.items():
        name = ("hand-written confluent-kafka + onnxruntime loop (baseline)" if label == "baseline"
                else f"streamscore worker, engine={label}")
        target = TARGETS.get(label)
        loop = r.get("paired", base)
        ratio = r["throughput"] / loop
        mark = "" if target is None else (f"≥ {target:.1f} ✓" if ratio >= target else f"≥ {target:.1f} ✗")
        table.add_row(name, f"{r['throughput']:,.0f}", "" if label == "baseline" else f"{loop:,.0f}", f"{ratio:.2f}",
                      mark, "" if r["p50"] != r["p50"] else f"{r['p50']:.1f}",
                      "" if r["p99"] != r["p99"] else f"{r['p99']:.1f}", f"{r['rss']:.0f}")
    if "batch, scoring only" in results and "batch, scoring only, 2 workers" in results:
        one, two = results["batch, scoring only"]["throughput"], results["batch, scoring only, 2 workers"]["throughput"]
        table.add_row(f"scaling 1 → 2 workers (batch, scoring only): ×{two / one:.2f}", "", "", "", "", "", "", "")
    table.add_row(f"ScoringPipeline.process in process (batch 256, no Kafka): "
                  f"{pipeline_cost['us_per_event']:.2f} µs/event, ONNX {pipeline_cost['onnx_us_per_event']:.2f}",
                  f"{1e6 / pipeline_cost['us_per_event']:,.0f}", "", "", "", "", "", "")
    table.add_row(f"hot path without ONNX (schemas.bench): {hot_path['batch.total']:.2f} µs/event "
                  f"(per-event codecs {hot_path['legacy.total']:.2f})",
                  f"{1e6 / hot_path['batch.total']:,.0f}", "", "", "", "", "", "")
    from online_learning.bench import bench_learners  # heavy: river + pandas, ~0.7 s

    with console.status("River learners, in process (prequential predict-then-learn)"):
        learner_rows = [] if only else bench_learners(min(n, 50_000))  # --only: the rows asked for
    for row in learner_rows:
        table.add_row(f"River {row['learner']} ({row['mode']}, batch {row['batch']}, no Kafka)",
                      f"{row['events_per_s']:,.0f}", "", f"{row['events_per_s'] / onnx_rate:.2f}*", "", "", "", "")
    console.print(table)
    if learner_rows:
        console.print("* River rows: ratio to raw onnxruntime rows/s.")
    console.print(f"latency: {paced_rate} events/s paced for 5 s after 1 s of warm-up, event time → output on the "
                  f"broker (target p99 < 50 ms); peak RSS: VmHWM of the worker and its children, summed "
                  f"(target ≤ 300 MB). The machine is shared and its speed drifts: each worker row's ratio is to "
                  f"the loop measured just before it (\"loop before\"), on a backlog of its own.")


if __name__ == "__main__":
    import sys

    # `python -m streams.cli.bench [n]`: the in-process rows only (no broker): pipeline and schemas hot path.
    from schemas.bench import measure_hot_path

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    local = Settings()
    from streams.cli.common import ensure_demo_model

    ensure_demo_model(local)
    print(orjson.dumps({"pipeline": pipeline_micro(local, count), "hot_path": measure_hot_path(count)}).decode())
