"""`streamscore demo`: the whole flow on one machine, from an empty broker to a summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import typer
from rich.console import Console
from rich.table import Table

from models.demo import FEATURE_NAMES, sample_events
from streams.cli.common import ensure_demo_model, fail, progress_bar, render
from streams.cli.produce import bad_avro_payloads, bad_payloads, encode_events, produce, stamped_now
from streams.drift.view import summarize_drift
from streams.kafka.broker import ensure_broker
from streams.kafka.reader import wait_for
from streams.kafka.topics import ensure_topics
from streams.settings import Settings


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    """Run `streamscore worker` as a child process with exactly these settings."""
    env = {**os.environ, **settings.as_env()}
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen([sys.executable, "-m", "streams.cli.main", "worker", "--loglevel", "warn"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(port: int, timeout: float = 60, proc: subprocess.Popen | None = None) -> bool:
    """Poll the worker's /readyz until it has partitions assigned (False if it dies first).

    With ``proc``, only an answer from that process counts (the ``pid`` in the body): another worker
    already on the port must not pass for the child, which meanwhile fails to bind and exits.
    """
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200 and (proc is None or _answer_pid(resp.read()) == proc.pid):
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def _answer_pid(body: bytes) -> int | None:
    try:
        pid = orjson.loads(body).get("pid")
    except (orjson.JSONDecodeError, AttributeError):
        return None  # not a streamscore worker's /readyz
    return pid if isinstance(pid, int) else None


def worker_failure(proc: subprocess.Popen, log_path: Path, timeout: float) -> str:
    """One line on why a child worker did not get ready: its exit code and last log line, or the timeout."""
    if proc.poll() is None:
        return f"worker (pid {proc.pid}) not ready within {timeout:.0f} s; see {log_path}"
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    last = lines[-1].removeprefix("error: ") if lines else "no output"
    return f"worker exited with code {proc.returncode}: {last} (log {log_path})"


def stop_worker(proc: subprocess.Popen, timeout: float = 30) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def topic_of(settings: Settings, fmt: str) -> str | None:
    """The first input topic of a wire format."""
    return next((t for t, f in settings.input_topics.items() if f == fmt), None)


READY_TIMEOUT_S = 60.0
DRIFT_SHIFT = 1.0  # the demo's changed population (models.demo ``shift``): alerted within ~600 events


def run_demo(settings: Settings, n_events: int, console: Console, drift_events: int = 1000) -> int:
    """Score ``n_events`` sample events and the bad inputs, then (``drift_events`` > 0) a shifted stream
    until the drift monitor alerts; print predictions, dead letters and drift."""
    from streams.worker.app import check_web_port  # faust (~1 s): only when the demo runs

    check_web_port(settings)  # user errors first, before the broker and a model are started for nothing
    ensure_demo_model(settings)
    if "STREAMSCORE_DRIFT_INTERVAL_S" not in os.environ:  # judge the window every second, not every 5 s
        settings = settings.model_copy(update={"drift_interval_s": 1.0})
    t0 = time.monotonic()
    started_ms = int(time.time() * 1000)
    with console.status("starting broker"):
        servers = ensure_broker(settings)
    kind = "embedded Tansu, memory-only" if settings.is_embedded else "Kafka"
    console.print(f"[green]✓[/] broker at {servers} ({kind})")
    ensure_topics(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.state_dir / "demo-worker.log"
    worker = start_worker(settings, log_path)
    console.print(f"[green]✓[/] worker started (engine {settings.engine}, pid {worker.pid}, log {log_path})")
    try:
        with console.status("waiting for the worker to join its consumer group"):
            ready = wait_ready(settings.web_port, READY_TIMEOUT_S, proc=worker)
        if not ready:
            message = worker_failure(worker, log_path, READY_TIMEOUT_S)
            if worker.returncode == 2:  # the child's user error (port, model folder): the demo's too
                fail(message)
            typer.echo(f"error: {message}", err=True)
            return 1
        run_seed = int(time.time())  # fresh event ids each run, so counts are of this run only
        events = sample_events(run_seed, n_events)
        json_topic, avro_topic = topic_of(settings, "json"), topic_of(settings, "avro")
        bad = bad_payloads(FEATURE_NAMES, str(run_seed))
        bad_avro = bad_avro_payloads(FEATURE_NAMES, str(run_seed)) if avro_topic else []
        produce(settings, json_topic, encode_events(stamped_now(events)))
        produce(settings, json_topic, [payload for _, payload in bad])
        if avro_topic:
            produce(settings, avro_topic, [payload for _, payload in bad_avro])
        bad += bad_avro
        console.print(f"[green]✓[/] produced {n_events} events and {len(bad)} bad inputs "
                      f"to {', '.join(t for t in (json_topic, avro_topic) if t)}")
        wanted = {e["event_id"] for e in events}

        def ours(messages) -> list[dict]:
            rows = (orjson.loads(m.value()) for m in messages)
            return [r for r in rows if r["event_id"] in wanted]

        with progress_bar() as bar:
            task = bar.add_task("scoring", total=len(wanted))

            def all_scored(messages) -> bool:
                done = len({r["event_id"] for r in ours(messages)})
                bar.update(task, completed=done)
                return done >= len(wanted)

            preds_msgs = wait_for(settings, settings.prediction_topic, all_scored, timeout=120)
        preds = ours(preds_msgs)
        bad_keys = {key for _, (key, _) in bad}
        dlq_msgs = wait_for(settings, settings.dead_letter_topic,
                            lambda ms: bad_keys <= {m.key() for m in ms}, timeout=30)
        alerted = drift_phase(settings, console, run_seed, drift_events, started_ms) if drift_events else None
    finally:
        stop_worker(worker)

    show_predictions(console, preds, preds_msgs, render, wanted)
    show_dead_letters(console, [m for m in dlq_msgs if m.key() in bad_keys], render)
    if drift_events:
        summarize_drift(settings, console, since_ms=started_ms)
        console.print("drift alert raised after the shift" if alerted else
                      "[yellow]no drift alert within the demo's wait (see `streamscore tail drift`)[/]")
    scored = len({p["event_id"] for p in preds})
    console.print(f"\n[bold]{scored}/{n_events}[/] events scored, "
                  f"{len([m for m in dlq_msgs if m.key() in bad_keys])}/{len(bad)} bad inputs dead-lettered, "
                  f"in {time.monotonic() - t0:.1f} s. The broker keeps running: "
                  "`streamscore tail predictions`, `streamscore broker down`.")
    return 0 if scored == n_events else 1


def drift_phase(settings: Settings, console: Console, seed: int, n_events: int, since_ms: int) -> bool:
    """Produce a shifted population in steps of 100 events until the drift monitor raises an alert."""
    if settings.drift_window == 0:
        return False
    from streams.drift.lane import drift_topics  # heavy: scipy + onnxruntime, ~1 s: only this command needs it

    ensure_topics(settings, drift_topics(settings))
    json_topic = topic_of(settings, "json")
    shifted = list(stamped_now(sample_events(seed + 1, n_events, shift=DRIFT_SHIFT)))

    def alert_raised(messages) -> bool:
        return any(orjson.loads(m.value()).get("emitted_at", 0) >= since_ms for m in messages)

    with progress_bar() as bar:
        task = bar.add_task(f"drifted events (shift {DRIFT_SHIFT})", total=n_events)
        for start in range(0, n_events, 100):
            produce(settings, json_topic, encode_events(shifted[start:start + 100]))
            bar.update(task, completed=min(start + 100, n_events))
            # a drift evaluation per step: wait one interval (plus a margin) before judging whether it alerted
            if alert_raised(wait_for(settings, settings.alerts_topic, alert_raised, settings.drift_interval_s + 1.0)):
                return True
    return alert_raised(wait_for(settings, settings.alerts_topic, alert_raised, timeout=settings.drift_interval_s * 3))


def show_predictions(console: Console, preds: list[dict], messages, render, wanted: set[str]) -> None:
    console.rule("predictions (first 8)")
    for msg in [m for m in messages if orjson.loads(m.value())["event_id"] in wanted][:8]:
        console.print(render("predictions", msg), highlight=False)
    if not preds:
        return
    scores = np.array([p["score"] for p in preds])
    e2e = np.array([p["scored_at"] - p["event_time"] for p in preds])
    table = Table(title="summary", show_header=False)
    table.add_row("model", f"{preds[0]['model_name']}@{preds[0]['model_version']} ({preds[0]['model_sha256'][:12]})")
    positive = list(preds[0]["probabilities"])[-1]  # the model's positive class comes last
    table.add_row(f"labelled {positive!r}", f"{np.mean([p['label'] == positive for p in preds]):.1%}")
    table.add_row("score p50 / p90", f"{np.percentile(scores, 50):.3f} / {np.percentile(scores, 90):.3f}")
    table.add_row("event→prediction p50 / p99", f"{np.percentile(e2e, 50):.0f} ms / {np.percentile(e2e, 99):.0f} ms")
    table.add_row("duplicates (at-least-once)", str(len(preds) - len({p['event_id'] for p in preds})))
    console.print(table)


def show_dead_letters(console: Console, messages, render) -> None:
    console.rule("dead letters")
    for msg in messages:
        console.print(render("dead-letter", msg), highlight=False)
