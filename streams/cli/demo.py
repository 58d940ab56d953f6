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
from streams.kafka import clients
from streams.kafka.broker import ensure_broker
from streams.kafka.reader import read_all, wait_for
from streams.kafka.topics import ensure_topics
from streams.settings import Settings


def start_worker(settings: Settings, log_path: Path, loglevel: str = "warn") -> subprocess.Popen:
    """Run `streamscore worker` as a child process with exactly these settings."""
    env = {**os.environ, **settings.as_env()}
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen([sys.executable, "-m", "streams.cli.main", "worker", "--loglevel", loglevel],
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


# --- `streamscore demo --closed-loop` ----------------------------------------------------------------
# The e2e test's sizes (tests/e2e/test_closed_loop.py): a full drift window of post-change inputs, so the
# request names only events labelled by the changed rule; 2000 rows train the candidate, 300 paired events gate it.
LOOP_WINDOW, LOOP_BEFORE, LOOP_AFTER, LOOP_GATE = 2000, 2500, 2000, 500
LOOP_STEP = 100  # events per batch while the gate decides and the promotion lands
LOOP_WAIT_S = 90.0  # any one step; the whole loop takes ~40 s on 2 busy cores
STAGE_TEXT = {"request_received": "retrain request received", "request_skipped": "request skipped",
              "dataset_built": "training dataset built", "candidate_trained": "candidate trained",
              "shadow_started": "challenger in shadow", "gate_result": "gate", "awaiting_approval": "awaiting approval",
              "approved": "approved", "promoted": "PROMOTED", "rejected": "rejected"}


def loop_settings(settings: Settings, run: str) -> Settings:
    """The demo's settings for one closed-loop run: its own topics, registry, archive and logs (a second run
    finds no promoted v2 of the first), the e2e test's drift, archive and gate sizes."""
    state = settings.state_dir / "closed-loop" / run
    update: dict[str, object] = {
        "state_dir": state, "registry_dir": None, "data_dir": None,
        "app_id": f"streamscore-loop-{run}", "input_topics": {f"features-{run}": "json"},
        "prediction_topic": f"predictions-{run}", "dead_letter_topic": f"dead-letter-{run}",
        "registry_model": "demo-risk", "registry_topic": f"_registry-{run}", "labels_topic": f"labels-{run}",
        "shadow_topic": f"shadow-{run}", "drift_topic": f"drift-{run}", "alerts_topic": f"alerts-{run}",
        "retrain_topic": f"retrain-{run}", "retrain_lifecycle_topic": f"lifecycle-{run}",
        "archive": True, "archive_segment_seconds": 1.0, "drift_interval_s": 0.3, "drift_window": LOOP_WINDOW,
        "drift_retrain_on_alert": True, "retrain_approval": "auto", "retrain_cooldown_s": 0.0,
        "retrain_min_rows": 500, "retrain_data_wait_s": 60.0, "retrain_gate_min_samples": 300,
        "retrain_gate_max_wait_s": 120.0, "retrain_route_topic": "*",
    }
    if settings.is_embedded and "STREAMSCORE_SESSION_TIMEOUT_MS" not in os.environ:
        # Tansu completes a group join after about half the session timeout: 3 s saves ~1.5 s per child's join
        update |= {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300}
    return settings.model_copy(update=update)


def start_child(settings: Settings, args: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, **settings.as_env()}
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen([sys.executable, "-m", "streams.cli.main", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


class StepPrinter:
    """Tails the alerts, retrain-request and lifecycle topics of the run and prints one line per step as it
    arrives, with the time since the demo started; keeps the lifecycle events for the main thread to wait on."""

    def __init__(self, settings: Settings, console: Console, t0: float,
                 children: dict[str, tuple[subprocess.Popen, Path]]) -> None:
        import threading  # only the closed-loop demo tails in the background

        self.s, self.console, self.t0, self.children = settings, console, t0, children
        self.lifecycle: list = []
        self.alerts: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-steps", daemon=True)

    def __enter__(self) -> StepPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t0:6.1f} s[/]  {text}", highlight=False, soft_wrap=True)

    def stage(self, name: str):
        return next((e for e in list(self.lifecycle) if e.stage == name), None)

    def check_children(self) -> None:
        """A child that exited stops the demo at once with its exit code and last log line (not after a wait)."""
        for name, (proc, log_path) in self.children.items():
            if proc.poll() is not None:
                lines = [x.strip() for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
                raise LoopStopped(f"the {name} process exited with code {proc.returncode}: "
                                  f"{lines[-1] if lines else 'no output'} (log {log_path})")

    def until(self, what: str, predicate, timeout: float = LOOP_WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_children()
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise LoopStopped(f"no {what} within {timeout:.0f} s (logs in {self.s.state_dir})")

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from streams.retrain.lifecycle import decode  # heavy: keeps `streamscore --help` fast

        s = self.s
        consumer = clients.standalone_consumer(s.kafka, "streamscore-demo", **{"fetch.wait.max.ms": 50})
        topics = (s.alerts_topic, s.retrain_topic, s.retrain_lifecycle_topic)
        meta = consumer.list_topics(timeout=10).topics
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions])
        try:
            while not self._stop.is_set():
                for msg in clients.records(consumer, 100, 0.2):
                    if msg.topic() == s.retrain_lifecycle_topic:
                        event = decode(msg.value())
                        self.lifecycle.append(event)
                        self._lifecycle_line(event)
                    elif msg.topic() == s.alerts_topic:
                        alert = orjson.loads(msg.value())
                        self.alerts.append(alert)
                        what = "; ".join(alert["reasons"]) or "the window is back to normal"
                        colour = "bold red" if alert["state"] == "firing" else "green"
                        self.say(f"[{colour}]alert {alert['state']}[/] {alert['model_name']}@{alert['model_version']}"
                                 f": {what}")
                    else:
                        req = orjson.loads(msg.value())
                        spans = req["offsets"]
                        inputs = sum(o["last_offset"] - o["first_offset"] + 1 for o in spans)
                        first = req["data_version"].split(",")[0]
                        self.say(f"[yellow]retrain request published[/] for {req['model_name']}@{req['model_version']}"
                                 f": the window's {inputs} inputs ({first},… {len(spans)} partitions)")
        finally:
            consumer.close()

    def _lifecycle_line(self, e) -> None:
        ver = f"@{e.model_version}" if e.model_version else ""
        text = STAGE_TEXT.get(e.stage, e.stage)
        colour = {"promoted": "bold green", "rejected": "bold red", "gate_result": "cyan"}.get(e.stage, "green")
        reason = e.reason
        if e.stage == "request_received":
            reason = f"champion {e.champion_version}, request {e.request_id}"
        elif e.stage == "dataset_built":
            reason += f" → training dataset {(e.training_dataset or '')[:12]}"
        elif e.stage == "candidate_trained":
            auc = e.detail.get("held_out_roc_auc")
            reason += f", held-out ROC AUC {auc:.3f}" if isinstance(auc, float) else ""
        elif e.stage == "promoted":
            reason = f"{e.model_name}@{e.model_version} is the champion (hot swap, no restart)"
        self.say(f"[{colour}]{text}[/] {e.model_name}{ver}: {reason}")


def run_closed_loop(settings: Settings, console: Console) -> int:
    """The closed loop end to end on one machine: a concept change in the labels → ADWIN alert → retrain
    request → candidate trained on post-change data → shadow → gate → promotion, predictions switch to v2."""
    from models.card import ModelCard  # the loop's heavy parts (registry, card, drift simulation): only here
    from streams.drift.lane import drift_topics  # heavy: scipy + onnxruntime, ~1 s: only this command needs it
    from streams.drift.sim import concept_labels  # heavy: scipy + onnxruntime, ~1 s: only this command needs it
    from streams.routing.watcher import ensure_registry_topic, registry_for  # heavy: the retrain service
    from streams.worker.app import check_web_port  # heavy: faust + onnxruntime, ~1.3 s: only this command needs it

    t0 = time.monotonic()
    check_web_port(settings)
    model_dir = ensure_demo_model(settings)
    run = time.strftime("%Y%m%d-%H%M%S")
    with console.status("starting broker"):  # the user's state dir: `streamscore broker down` finds its pid file
        servers = ensure_broker(settings)
    s = loop_settings(settings.model_copy(update={"model_dir": model_dir}), run)
    s.state_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[green]✓[/] broker at {servers} ({'embedded Tansu, memory-only' if s.is_embedded else 'Kafka'}); "
                  f"run {run}: topics *-{run}, state {s.state_dir}")
    ensure_topics(s, [s.labels_topic, s.shadow_topic, s.retrain_topic, s.retrain_lifecycle_topic,
                      *drift_topics(s)])
    ensure_topics(s)
    ensure_registry_topic(s)
    registry_for(s).register(model_dir)
    card = ModelCard.load(model_dir)
    console.print(f"[green]✓[/] registered {card.name}@{card.version} as champion "
                  f"(ROC AUC {card.metrics['roc_auc']:.3f})")
    children: dict[str, tuple[subprocess.Popen, Path]] = {}
    for name, args in (("worker", ["worker", "--loglevel", "warn"]), ("retrain", ["retrain", "--loglevel", "warning"])):
        log_path = s.state_dir / f"{name}.log"
        children[name] = (start_child(s, args, log_path), log_path)
    worker, worker_log = children["worker"]
    console.print(f"[green]✓[/] worker (registry mode, drift + archive, pid {worker.pid}) and retrain service "
                  f"(pid {children['retrain'][0].pid}) started; logs in {s.state_dir}")
    try:
        with console.status("waiting for the worker to join its consumer group"):
            ready = wait_ready(s.web_port, READY_TIMEOUT_S, proc=worker)
        if not ready:
            message = worker_failure(worker, worker_log, READY_TIMEOUT_S)
            if worker.returncode == 2:
                fail(message)
            typer.echo(f"error: {message}", err=True)
            return 1
        with StepPrinter(s, console, t0, children) as steps:
            steps.say(f"worker ready on :{s.web_port}")
            code = _loop_steps(s, console, steps, concept_labels)
    finally:
        for name, (proc, _log) in children.items():
            if proc.poll() is None:
                rc = stop_worker(proc)
                console.print(f"[green]✓[/] {name} stopped (exit {rc})" if rc == 0 else
                              f"[yellow]{name} stopped with exit code {rc}[/] (log {_log})")
    console.print(f"closed loop in {time.monotonic() - t0:.1f} s; the broker keeps running. The steps again:\n"
                  f"  STREAMSCORE_RETRAIN_LIFECYCLE_TOPIC=lifecycle-{run} streamscore retrain log", highlight=False,
                  soft_wrap=True)
    return code


def _labels(events: list[dict], truth: np.ndarray) -> list[tuple[bytes, bytes]]:
    now = int(time.time() * 1000)
    return [(e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": "risky" if y else "legit",
                                                    "label_time": now})) for e, y in zip(events, truth, strict=True)]


def _matrix(events: list[dict]) -> np.ndarray:
    return np.array([[e["features"][f] for f in FEATURE_NAMES] for e in events])


def _worker_json(port: int, path: str) -> dict:
    """One JSON page of the worker on ``port`` (/drift, /status.json)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return orjson.loads(resp.read())


def _scores(port: int, model: str, role: str) -> bool:
    """Whether the worker on ``port`` scores with ``model`` (name@version) in ``role`` ("serves" or "shadow"),
    by its /status.json routes."""
    routes = _worker_json(port, "/status.json")["models"]["routes"]
    return any(r["role"] == role and r["model"] == model for r in routes)


class LoopStopped(Exception):
    """The closed-loop demo cannot go on: a step did not come in time, or a child process exited."""


def _loop_steps(s: Settings, console: Console, steps: StepPrinter, concept_labels) -> int:
    """Produce, change the labelling rule, keep producing; wait on the lifecycle; count and show the outcome."""
    topic = topic_of(s, "json")
    seed = int(time.time()) % 1_000_000
    batches = [sample_events(seed + k, n) for k, n in enumerate((LOOP_BEFORE, LOOP_AFTER, LOOP_GATE, 3000))]
    before, after, gate, stream = batches
    try:
        produce(s, topic, encode_events(stamped_now(before)))
        produce(s, s.labels_topic, _labels(before, concept_labels(np.random.default_rng(seed), _matrix(before))))
        steps.say(f"produced {LOOP_BEFORE} events + their labels (rule: the demo model's own)")
        steps.until("judgement of the labels",
                    lambda: (_worker_json(s.web_port, "/drift")["labels_evaluated"] or 0) >= LOOP_BEFORE)
        steps.say(f"drift lane judged {LOOP_BEFORE} labels: no alert (champion matches the rule)")

        produce(s, topic, encode_events(stamped_now(after)))
        steps.until("post-change inputs in the drift window",
               lambda: (_worker_json(s.web_port, "/drift")["messages_evaluated"] or 0) >= LOOP_BEFORE + LOOP_AFTER)
        changed = concept_labels(np.random.default_rng(seed + 1), _matrix(after), changed_from=0)
        produce(s, s.labels_topic, _labels(after, changed))
        steps.say(f"[bold]concept change[/]: {LOOP_AFTER} more events, labelled by a new rule "
                  "(device_score's effect reversed)")
        steps.until("challenger in shadow", lambda: steps.stage("shadow_started") or steps.stage("rejected"))
        if steps.stage("rejected") is not None:
            return 1
        # The worker applies the shadow route from the route topic on its own; gate events it scored before that
        # have no challenger score. Under load they all did: the gate had 0 pairs and waited past the demo.
        shadow = steps.stage("shadow_started")
        challenger = f"{shadow.model_name}@{shadow.model_version}"
        steps.until(f"the worker scoring {challenger} in shadow", lambda: _scores(s.web_port, challenger, "shadow"))

        produce(s, topic, encode_events(stamped_now(gate)))
        produce(s, s.labels_topic, _labels(gate, concept_labels(np.random.default_rng(seed + 2), _matrix(gate),
                                                                changed_from=0)))
        steps.say(f"produced {LOOP_GATE} events + labels (new rule): scored by both, for the gate")
        sent, deadline = 0, time.monotonic() + LOOP_WAIT_S
        while steps.stage("promoted") is None and steps.stage("rejected") is None and time.monotonic() < deadline:
            steps.check_children()
            if sent < len(stream) - 300:  # keep traffic flowing; once it is spent, the gate still gets its time
                produce(s, topic, encode_events(stamped_now(stream[sent:sent + LOOP_STEP])))
                sent += LOOP_STEP
            time.sleep(0.3)
        if steps.stage("promoted") is None:
            steps.say("[red]no promotion[/] (see the retrain log)")
            return 1
        # As with the shadow: the worker swaps on its own, so the last events go out once it serves the new model
        # (under load, every event had been scored by the old one before the swap landed).
        steps.until(f"the worker serving {challenger}", lambda: _scores(s.web_port, challenger, "serves"))
        produce(s, topic, encode_events(stamped_now(stream[sent:sent + 300])))
        sent += 300
        steps.say(f"kept producing while the promotion landed: {sent} events")
        every = before + after + gate + stream[:sent]
        wanted = {e["event_id"] for e in every}

        def scored() -> list[dict]:
            preds = [orjson.loads(m.value()) for m in read_all(s, s.prediction_topic)]
            return preds if wanted <= {p["event_id"] for p in preds} else []

        preds = steps.until("every event scored", scored, timeout=60)
    except LoopStopped as exc:
        steps.say(f"[red]stopped: {exc}[/]")
        return 1
    steps.say(f"every one of the {len(wanted)} events scored")
    ours = [p for p in preds if p["event_id"] in wanted]
    counts = {}
    for p in ours:
        counts[p["event_id"]] = counts.get(p["event_id"], 0) + 1
    versions: dict[str, int] = {}
    for p in ours:
        versions[p["model_version"]] = versions.get(p["model_version"], 0) + 1
    new = sorted((p for p in ours if p["model_version"] == "2"), key=lambda p: p["scored_at"])
    if new:
        steps.say(f"[bold green]predictions now by demo-risk@2[/]: {len(new)} of the last events "
                  f"(first at {topic}[{new[0]['source_partition']}]@{new[0]['source_offset']})")
    console.rule("first predictions by demo-risk@2")
    for p in new[:5]:
        console.print(f"{p['source_partition']}:{p['source_offset']:>6} {p['event_id']:<20} score {p['score']:.4f} "
                      f"label {p['label']:<6} {p['model_name']}@{p['model_version']}", highlight=False)
    result = steps.stage("gate_result")
    table = Table(title="closed loop", show_header=False)
    table.add_row("events produced", str(len(wanted)))
    table.add_row("events scored", str(len(counts)))
    table.add_row("lost", str(len(wanted) - len(counts)))
    table.add_row("double-scored", str(sum(1 for c in counts.values() if c > 1)))
    table.add_row("predictions by version", ", ".join(f"v{v}: {n}" for v, n in sorted(versions.items())))
    if result is not None:
        d = result.detail
        table.add_row("gate (paired bootstrap)", f"improvement {d['improvement']:+.3f} log loss/event, "
                      f"p={d['p_value']:.3f}, n={d['n']}")
    table.add_row("alert notices", str(len(steps.alerts)))
    console.print(table)
    ok = len(counts) == len(wanted) and max(counts.values()) == 1 and bool(new)
    return 0 if ok else 1
