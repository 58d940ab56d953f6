"""The `streamscore` command line.

Settings come from STREAMSCORE_* environment variables (see streams/settings.py); options given here
override them for one call.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from models.demo import FEATURE_NAMES, sample_events
from models.signing import SigningKeyError
from streams.cli.broker import broker_app
from streams.cli.common import (
    DEFAULT_MODEL_DIR,
    console,
    ensure_demo_model,
    fail,
    progress_bar,
    render,
    settings,
    user_errors,
)
from streams.cli.data import data_app, lineage, replay
from streams.cli.demo import run_demo
from streams.cli.drift import drift_app
from streams.cli.learners import learners_app
from streams.cli.models import models_app
from streams.cli.produce import bad_payloads, encode_events, read_jsonl
from streams.cli.produce import produce as produce_payloads
from streams.cli.retrain import retrain_app
from streams.kafka.broker import EmbeddedBrokerMissing, ensure_broker
from streams.kafka.reader import follow as follow_topic
from streams.kafka.topics import ensure_topics

app = typer.Typer(help="Kafka-native streaming inference: score event streams with ONNX and River models.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(broker_app, name="broker")


@app.command("train-demo")
def train_demo(
    out: Annotated[Path, typer.Option(help="Model directory to write.")] = DEFAULT_MODEL_DIR,
    seed: int = 7,
    n: Annotated[int, typer.Option(help="Rows of synthetic training data.")] = 20000,
    force: Annotated[bool, typer.Option(help="Replace a different model written there before (never a served "
                                        "one, never a model.onnx without a card).")] = False,
) -> None:
    """Train the demo transaction-risk model (sklearn GBT) and export it to ONNX with a model card.

    Same seed and n give byte-identical files: re-training changes nothing ("unchanged").
    """
    from models.train_demo import train_demo_model  # heavy (sklearn, skl2onnx): only this command

    _check_out_folder(out)
    card_path = out / "model_card.json"
    before = card_path.read_bytes() if card_path.is_file() else None
    with user_errors(), console.status("training demo model"):
        card = train_demo_model(out, seed=seed, n=n, force=force)
    what = "unchanged (identical artifacts already there)" if card_path.read_bytes() == before else "trained"
    console.print(f"[green]✓[/] {what}: {card.name}@{card.version} -> {out}  "
                  f"ROC AUC {card.metrics['roc_auc']:.3f}  sha256 {card.onnx_sha256[:12]}")


def _check_out_folder(out: Path) -> None:
    """Refuse an --out that can never be a folder before training (~20 s), not after."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                fail(f"--out {out}: {path} is a file, not a folder; give a folder for model.onnx + model_card.json")
            return


# --- produce -----------------------------------------------------------------------------------
@app.command()
def produce(
    count: Annotated[int, typer.Option("--count", "-n", help="Sample events to produce.")] = 1000,
    topic: Annotated[str, typer.Option(help="Input topic.")] = "features",
    fmt: Annotated[str, typer.Option("--format", help="json or avro (Confluent framing).")] = "json",
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 0.0,
    file: Annotated[Path | None, typer.Option(help="JSON-lines file of events instead of samples.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample generator.")] = 1,
    bad: Annotated[bool, typer.Option(help="Also send one bad input of each kind.")] = False,
) -> None:
    """Produce feature events (synthetic samples or a file) keyed by event id, with a progress bar."""
    s = settings()
    ensure_broker(s)
    ensure_topics(s, [topic])
    events = list(read_jsonl(file)) if file else sample_events(seed, count)
    payloads = list(encode_events(events, fmt))
    if bad:
        payloads += [payload for _, payload in bad_payloads(FEATURE_NAMES)]
        random.Random(seed).shuffle(payloads)
    with progress_bar() as bar:
        task = bar.add_task(f"producing to {topic}", total=len(payloads))
        sent = produce_payloads(s, topic, payloads, rate=rate, on_progress=lambda k: bar.advance(task, k))
    console.print(f"[green]✓[/] {sent} events delivered to {topic}")


# --- worker ------------------------------------------------------------------------------------
@app.command()
def worker(
    engine: Annotated[str | None, typer.Option(help="faust (agents) or batch (confluent-kafka lane).")] = None,
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug.")] = "info",
    web_port: Annotated[int | None, typer.Option(help="Port for /metrics, /healthz, /readyz.")] = None,
) -> None:
    """Run a scoring worker until Ctrl-C: consume, validate, score, publish predictions and dead letters."""
    from streams.scoring.tracing import OtlpUnavailable, require_otlp  # light; with the worker's own imports
    from streams.worker.app import WorkerStartError, check_web_port, run_worker  # faust: ~1.3 s

    s = settings(engine=engine, web_port=web_port)
    with user_errors(WorkerStartError, OtlpUnavailable):
        check_web_port(s)  # before a model is trained (~20 s) or the broker started
        if s.otel_exporter_otlp_endpoint is not None:
            require_otlp()  # as early: a missing exporter is one line, not a worker that dies after starting
        if s.registry_model or s.learner:  # they load what the deployment key signed; no key on Kafka: stop here
            try:
                s.signing_key_bytes()
            except SigningKeyError as exc:
                console.print(f"[red]✗[/] {exc}", soft_wrap=True, highlight=False)
                raise typer.Exit(2) from None
        ensure_demo_model(s)
        run_worker(s, loglevel=loglevel)


# --- tail --------------------------------------------------------------------------------------
@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to read, e.g. predictions or dead-letter.")],
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f", help="Keep reading new messages.")] = True,
    from_beginning: Annotated[bool, typer.Option("--from-beginning/--latest")] = True,
    limit: Annotated[int, typer.Option(help="Stop after this many messages (0 = no limit).")] = 0,
    raw: Annotated[bool, typer.Option(help="Print the raw JSON value.")] = False,
) -> None:
    """Print a topic's messages readably (predictions, dead letters, anything JSON); follows by default."""
    s = settings()
    shown = 0
    try:
        for msg in follow_topic(s, topic, from_beginning=from_beginning, stop_at_end=not follow):
            console.print(msg.value().decode(errors="replace") if raw else render(topic, msg), markup=not raw,
                          highlight=False, soft_wrap=True)
            shown += 1
            if limit and shown >= limit:
                break
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        pass


# --- demo & bench ------------------------------------------------------------------------------
@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Sample events to score.")] = 2000,
    engine: Annotated[str, typer.Option(help="faust or batch.")] = "faust",
    drift_events: Annotated[int, typer.Option(help="Shifted events sent after scoring, until the drift monitor "
                                              "alerts (0: skip the drift part).")] = 1000,
) -> None:
    """Broker + model + worker + producer: score sample events, show predictions, dead letters and drift."""
    from streams.worker.app import WorkerStartError  # heavy: faust + onnxruntime, ~1.3 s: only this command needs it

    with user_errors(WorkerStartError):
        code = run_demo(settings(engine=engine), events, console, drift_events)
    raise typer.Exit(code)


@app.command()
def bench(
    events: Annotated[int, typer.Option(help="Events per measured run.")] = 100_000,
    quick: Annotated[bool, typer.Option(help="Smaller runs, for a smoke check.")] = False,
) -> None:
    """Measure end-to-end throughput and latency against raw confluent-kafka and raw onnxruntime."""
    from streams.cli.bench import run_bench  # heavy: the benchmark's imports, ~0.3 s: only for `bench`

    with user_errors():
        run_bench(settings(), 20_000 if quick else events, console)


app.add_typer(learners_app, name="learners")  # online learning: list|show|rollback snapshots
app.add_typer(drift_app, name="drift")  # drift monitoring: report (HTML), status
app.add_typer(models_app, name="models")  # model registry: versions, aliases, routing, diff
app.add_typer(data_app, name="data")  # data versioning
app.add_typer(retrain_app, name="retrain")  # closed loop: retrain service, approvals, lifecycle log
app.command("lineage")(lineage)
app.command("replay")(replay)


def main() -> None:
    try:
        app()
    except EmbeddedBrokerMissing as exc:  # any command that starts the embedded broker, on an install without it
        console.print(f"[red]✗[/] {escape(str(exc))}", soft_wrap=True, highlight=False)  # keeps "[embedded]"
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
