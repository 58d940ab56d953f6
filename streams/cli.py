"""The `streamscore` command line.

Settings come from STREAMSCORE_* environment variables (see streams/settings.py); options given here
override them for one call.
"""

from __future__ import annotations

import base64
import random
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streams.settings import Settings

app = typer.Typer(help="Kafka-native streaming inference: score event streams with ONNX and River models.",
                  no_args_is_help=True, add_completion=False)
broker_app = typer.Typer(help="Run the embedded Kafka-protocol broker (Tansu, memory-only) on 127.0.0.1.",
                         no_args_is_help=True)
app.add_typer(broker_app, name="broker")
console = Console()


def settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


# --- broker ------------------------------------------------------------------------------------
@broker_app.command("up")
def broker_up() -> None:
    """Start the embedded broker (no-op when it already runs)."""
    from streams.broker import EmbeddedBroker

    status = EmbeddedBroker(settings()).up()
    console.print(f"[green]✓[/] {status}")


@broker_app.command("down")
def broker_down() -> None:
    """Stop the embedded broker. Its data is lost: it keeps everything in memory."""
    from streams.broker import EmbeddedBroker

    stopped = EmbeddedBroker(settings()).down()
    console.print("[green]✓[/] embedded broker stopped" if stopped else "embedded broker was not running")


@broker_app.command("status")
def broker_status() -> None:
    """Show whether the embedded broker runs, and its topics."""
    from confluent_kafka.admin import AdminClient

    from streams.broker import EmbeddedBroker

    s = settings()
    status = EmbeddedBroker(s).status()
    console.print(status)
    if status.running:
        topics = AdminClient(s.kafka_client_config()).list_topics(timeout=5).topics
        for name, meta in sorted(topics.items()):
            console.print(f"  {name}  ({len(meta.partitions)} partitions)")
    else:
        raise typer.Exit(1)


# --- model -------------------------------------------------------------------------------------
@app.command("train-demo")
def train_demo(
    out: Annotated[Path, typer.Option(help="Model directory to write.")] = Path("artifacts/models/demo-risk/1"),
    seed: int = 7,
    n: Annotated[int, typer.Option(help="Rows of synthetic training data.")] = 20000,
) -> None:
    """Train the demo transaction-risk model (sklearn GBT) and export it to ONNX with a model card."""
    from models.train_demo import train_demo_model

    with console.status("training demo model"):
        card = train_demo_model(out, seed=seed, n=n)
    console.print(f"[green]✓[/] {card.name}@{card.version} -> {out}  "
                  f"ROC AUC {card.metrics['roc_auc']:.3f}  sha256 {card.onnx_sha256[:12]}")


def ensure_demo_model(s: Settings) -> None:
    if not (s.model_dir / "model_card.json").exists():  # written last, so present = complete
        train_demo(out=s.model_dir, seed=7, n=20000)


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
    from models.demo import FEATURE_NAMES, sample_events
    from streams.broker import ensure_broker
    from streams.producer import bad_payloads, encode_events, read_jsonl
    from streams.producer import produce as produce_payloads
    from streams.topics import ensure_topics

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
    from streams.app import run_worker

    s = settings(engine=engine, web_port=web_port)
    ensure_demo_model(s)
    run_worker(s, loglevel=loglevel)


# --- tail --------------------------------------------------------------------------------------
def render(topic: str, msg) -> str:
    """One readable line for a message of any topic of the flow."""
    try:
        body = orjson.loads(msg.value())
    except (orjson.JSONDecodeError, TypeError):
        return f"[dim]{msg.partition()}:{msg.offset()}[/] {msg.value()!r:.120}"
    where = f"[dim]{msg.partition()}:{msg.offset():>6}[/]"
    if "statistics" in body or "alert_id" in body:  # drift records, alerts, retrain requests
        from streams.drift_view import render_drift
        return render_drift(body, where)
    if "model_version" in body and "score" in body:
        colour = "red" if body["score"] >= 0.5 else "green"
        return (f"{where} {body['event_id']:<18} score [{colour}]{body['score']:.4f}[/] label {body['label']}  "
                f"{body['model_name']}@{body['model_version']}  {body['latency_ms']:.1f} ms")
    if "reason_code" in body:
        original = base64.b64decode(body.get("original_value") or "")
        return (f"{where} [yellow]{body['reason_code']:<22}[/] {body['reason']}  "
                f"[dim]from {body['source_topic']}[{body['source_partition']}]@{body['source_offset']} "
                f"{original[:40]!r}[/]")
    return f"{where} {orjson.dumps(body).decode()[:160]}"


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to read, e.g. predictions or dead-letter.")],
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f", help="Keep reading new messages.")] = True,
    from_beginning: Annotated[bool, typer.Option("--from-beginning/--latest")] = True,
    limit: Annotated[int, typer.Option(help="Stop after this many messages (0 = no limit).")] = 0,
    raw: Annotated[bool, typer.Option(help="Print the raw JSON value.")] = False,
) -> None:
    """Print a topic's messages readably (predictions, dead letters, anything JSON); follows by default."""
    from streams.reader import follow as follow_topic

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
    from streams.demo import run_demo

    sys.exit(run_demo(settings(engine=engine), events, console, drift_events))


@app.command()
def bench(
    events: Annotated[int, typer.Option(help="Events per measured run.")] = 100_000,
    quick: Annotated[bool, typer.Option(help="Smaller runs, for a smoke check.")] = False,
) -> None:
    """Measure end-to-end throughput and latency against raw confluent-kafka and raw onnxruntime."""
    from streams.bench import run_bench

    run_bench(settings(), 20_000 if quick else events, console)


# --- command groups of other capabilities, one `app.add_typer` line each ---------------------------
from streams.learners_cli import learners_app  # noqa: E402 - online learning: list|show|rollback snapshots

app.add_typer(learners_app, name="learners")
from streams.drift_cli import drift_app  # noqa: E402 - drift monitoring: report (HTML), status

app.add_typer(drift_app, name="drift")
from streams.models_cli import models_app  # noqa: E402 - model registry: versions, aliases, routing, diff

app.add_typer(models_app, name="models")
from streams.data_cli import data_app, lineage, replay  # noqa: E402 - data versioning, lineage and replay

app.add_typer(data_app, name="data")
app.command("lineage")(lineage)
app.command("replay")(replay)
# (end of command groups)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
