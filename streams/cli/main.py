"""The `streamscore` command line.

Settings come from STREAMSCORE_* environment variables (see streams/settings.py); options given here
override them for one call.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import orjson
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
    is_settings_error,
    progress_bar,
    render,
    render_header,
    require_broker,
    settings,
    user_errors,
)
from streams.cli.data import data_app, lineage, replay
from streams.cli.demo import run_closed_loop, run_demo
from streams.cli.drift import drift_app
from streams.cli.learners import learners_app
from streams.cli.models import models_app
from streams.cli.produce import bad_payloads, encode_events, fresh_seed, label_payloads, read_jsonl
from streams.cli.produce import produce as produce_payloads
from streams.cli.retrain import retrain_app
from streams.kafka import clients
from streams.kafka.broker import BrokerError, EmbeddedBrokerMissing, ensure_broker
from streams.kafka.reader import follow as follow_topic
from streams.kafka.reader import read_all
from streams.kafka.topics import ensure_topics
from streams.settings import settings_error_line, unknown_env_names

app = typer.Typer(help="Kafka-native streaming inference: score event streams with ONNX and River models.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(broker_app, name="broker")

LOGLEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
             "debug": logging.DEBUG}


class LogLevel(str, Enum):
    crit = "crit"
    error = "error"
    warn = "warn"
    info = "info"
    debug = "debug"


_debug = False  # --debug: tracebacks instead of one-line errors


_root_loglevel: LogLevel | None = None  # --loglevel before the command: the worker's too, unless it has its own


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of any error.")] = False,
    loglevel: Annotated[LogLevel | None, typer.Option(help="Log level of this process and the ones it starts "
                                                      "(default warn; the worker's info).")] = None,
) -> None:
    """Settings come from STREAMSCORE_* environment variables (docs/operations.md); every mistake is one line."""
    global _debug, _root_loglevel
    _debug, _root_loglevel = debug, loglevel
    if ctx.invoked_subcommand != "worker":  # the worker's logging is faust's (configured from its --loglevel)
        level = LOGLEVELS[(loglevel or LogLevel.warn).value]
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        os.environ["STREAMS_LOGLEVEL"] = logging.getLevelName(level)  # processes this one starts
    clients.quiet()  # librdkafka: one line per kind of trouble and minute, not one per failed connect
    for name, close in unknown_env_names(dict(os.environ)):
        hint = f"did you mean {close}?" if close else "no setting has this name (see streams/settings.py)"
        typer.echo(f"warning: {name} is not a setting and is ignored; {hint}", err=True)


@app.command("train-demo")
def train_demo(
    out: Annotated[Path, typer.Option(help="Model directory to write.")] = DEFAULT_MODEL_DIR,
    seed: int = 7,
    n: Annotated[int, typer.Option(help="Rows of synthetic training data.")] = 20000,
    version: Annotated[str, typer.Option(help="Version written in the model card (registry versions are "
                                         "immutable: a retrained model gets a new one).")] = "1",
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
        card = train_demo_model(out, seed=seed, n=n, version=version, force=force)
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
class Format(str, Enum):
    json = "json"
    avro = "avro"


@app.command()
def produce(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Sample events to produce.")] = 1000,
    topic: Annotated[str | None, typer.Option(help="Topic; default the first input topic of --format "
                                              "(STREAMSCORE_INPUT_TOPICS: features / features-avro), with "
                                              "--labels STREAMSCORE_LABELS_TOPIC.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Wire format (avro: Confluent framing).")] = Format.json,
    rate: Annotated[float, typer.Option(min=0, help="Events per second; 0 = as fast as possible.")] = 0.0,
    file: Annotated[Path | None, typer.Option(help="JSON-lines file of events instead of samples.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sample generator (repeatable runs: same events, "
                                             "same ids evt-SEED-N); default a fresh one per run.")] = None,
    bad: Annotated[bool, typer.Option(help="Also send one bad input of each kind.")] = False,
    labels: Annotated[bool, typer.Option("--labels", help="Instead of events: the true label (demo concept) of "
                                         "every event on the input topics that has none yet.")] = False,
    delay_ms: Annotated[int, typer.Option(min=0, help="--labels: send each label this long after its event "
                                          "time.")] = 0,
    noise: Annotated[float, typer.Option(min=0.0, max=1.0, help="--labels: probability of flipping a label.")
                     ] = 0.0,
) -> None:
    """Produce feature events (synthetic samples or a file) keyed by event id, or their labels (--labels)."""
    s = settings()
    if labels:
        _produce_labels(s, topic, delay_ms, noise, seed)
        return
    if topic is None:
        topic = next((t for t, f in s.input_topics.items() if f == fmt.value), None)
        if topic is None:
            fail(f"--format {fmt.value}: no input topic has that format in STREAMSCORE_INPUT_TOPICS "
                 f"({orjson.dumps(s.input_topics).decode()}); give --topic")
    seed = fresh_seed() if seed is None else seed
    with user_errors(ValueError):  # a missing or bad --file, an event the format cannot encode: one line
        events = list(read_jsonl(file)) if file else sample_events(seed, count)
        payloads = list(encode_events(events, fmt.value))
    if bad:
        payloads += [payload for _, payload in bad_payloads(FEATURE_NAMES, tag=str(seed))]
        random.Random(seed).shuffle(payloads)
    with user_errors(BrokerError):
        ensure_broker(s)
    require_broker(s)
    ensure_topics(s, [topic])
    with progress_bar() as bar:
        task = bar.add_task(f"producing to {topic}", total=len(payloads))
        sent = produce_payloads(s, topic, payloads, rate=rate, on_progress=lambda k: bar.advance(task, k))
    first = "" if file else f" (ids evt-{seed}-0 .. evt-{seed}-{count - 1})"
    console.print(f"[green]✓[/] {sent} events delivered to {topic}{first}")


def _produce_labels(s, topic: str | None, delay_ms: int, noise: float, seed: int | None) -> None:
    """Labels for the events on the input topics that have none on the labels topic yet (so a second run adds
    only the labels of events produced since)."""
    from schemas.codecs import InvalidEvent, decode_feature_event  # the codecs: only --labels decodes events

    labels_topic = topic or s.labels_topic
    with user_errors(BrokerError):
        ensure_broker(s)
    require_broker(s)
    ensure_topics(s.model_copy(update={"partitions": 1}), [labels_topic])  # one partition: one learner learns
    labelled = {m.key() for m in read_all(s, labels_topic)}
    events, skipped = {}, 0
    for input_topic, fmt in s.input_topics.items():
        try:
            messages = read_all(s, input_topic)
        except KeyError:
            continue  # never produced to
        for m in messages:
            try:
                event = decode_feature_event(m.value(), fmt, s.max_payload_bytes)
            except InvalidEvent:
                skipped += 1  # a bad input: dead-lettered, nothing to label
                continue
            if event.event_id.encode() not in labelled:
                events[event.event_id] = event
    if not events:
        console.print(f"no events without a label on {', '.join(s.input_topics)} ({len(labelled)} labelled "
                      f"already on {labels_topic}); produce some first: `streamscore produce`")
        return
    payloads = label_payloads(events.values(), delay_ms=delay_ms, noise=noise, seed=seed)
    with progress_bar() as bar:
        task = bar.add_task(f"labelling to {labels_topic}", total=len(events))
        sent = produce_payloads(s, labels_topic, payloads, on_progress=lambda k: bar.advance(task, k),
                                chunk=1 if delay_ms else 1000)
    console.print(f"[green]✓[/] {sent} labels delivered to {labels_topic} ({len(labelled)} events labelled before, "
                  f"{skipped} undecodable inputs skipped, noise {noise:g}, delay {delay_ms} ms)")


# --- worker ------------------------------------------------------------------------------------
@app.command()
def worker(
    engine: Annotated[str | None, typer.Option(help="faust (agents) or batch (confluent-kafka lane).")] = None,
    loglevel: Annotated[LogLevel | None, typer.Option(help="Log level of the worker and its archiver child "
                                                      "(default: the global --loglevel, else info).")] = None,
    web_port: Annotated[int | None, typer.Option(help="Port for /metrics, /healthz, /readyz.")] = None,
) -> None:
    """Run a scoring worker until Ctrl-C: consume, validate, score, publish predictions and dead letters."""
    from models.registry import RegistryError  # heavy (river): the worker loads it anyway
    from streams.scoring.tracing import OtlpUnavailable, require_otlp  # light; with the worker's own imports
    from streams.worker.app import WorkerStartError, check_web_port, run_worker  # faust: ~1.3 s

    s = settings(engine=engine, web_port=web_port)
    with user_errors(WorkerStartError, RegistryError, OtlpUnavailable):  # e.g. a registry model not registered yet
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
        level = loglevel or _root_loglevel or LogLevel.info
        os.environ["STREAMS_LOGLEVEL"] = logging.getLevelName(LOGLEVELS[level.value])  # the archiver child's
        run_worker(s, loglevel=level.value)


# --- tail --------------------------------------------------------------------------------------
@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to read, e.g. predictions or dead-letter.")],
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f", help="Keep reading new messages.")] = True,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest message (default: "
                                                 "only messages produced from now on, like "
                                                 "kafka-console-consumer).")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Stop after this many messages (0 = no limit).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (the message value; "
                                          "non-JSON values as {partition, offset, key, value_base64}).")] = False,
) -> None:
    """Print a topic's messages readably, one a line under a header; follows by default."""
    s = settings()
    require_broker(s)
    shown = 0
    try:
        messages = follow_topic(s, topic, from_beginning=from_beginning, stop_at_end=not follow)
        if not as_json:
            console.print(render_header(topic), highlight=False, soft_wrap=True)
        for msg in messages:
            if as_json:
                sys.stdout.write(_json_line(msg) + "\n")
                sys.stdout.flush()
            else:
                console.print(render(topic, msg), highlight=False, soft_wrap=True)
            shown += 1
            if limit and shown >= limit:
                break
    except KeyError as exc:
        fail(f"{exc.args[0]}; topics: `streamscore broker status`")
    except KeyboardInterrupt:
        pass


def _json_line(msg) -> str:
    import base64  # stdlib; only for values that are not JSON

    try:
        return orjson.dumps(orjson.loads(msg.value())).decode()
    except (orjson.JSONDecodeError, TypeError):
        return orjson.dumps({"partition": msg.partition(), "offset": msg.offset(),
                             "key": (msg.key() or b"").decode(errors="replace"),
                             "value_base64": base64.b64encode(msg.value() or b"").decode()}).decode()


# --- demo & bench ------------------------------------------------------------------------------
@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Sample events to score.")] = 2000,
    engine: Annotated[str, typer.Option(help="faust or batch.")] = "faust",
    drift_events: Annotated[int, typer.Option(help="Shifted events sent after scoring, until the drift monitor "
                                              "alerts (0: skip the drift part).")] = 1000,
    closed_loop: Annotated[bool, typer.Option("--closed-loop", help="Instead: the closed loop, a concept change → "
                                              "alert → retrain → shadow → gate → promotion (~1 min).")] = False,
) -> None:
    """Broker + model + worker + producer: score sample events, show predictions, dead letters and drift."""
    from streams.worker.app import WorkerStartError  # heavy: faust + onnxruntime, ~1.3 s: only this command needs it

    with user_errors(WorkerStartError):
        if closed_loop:
            code = run_closed_loop(settings(engine=engine), console)
        else:
            code = run_demo(settings(engine=engine), events, console, drift_events)
    raise typer.Exit(code)


@app.command()
def bench(
    events: Annotated[int, typer.Option(help="Events per measured run.")] = 100_000,
    quick: Annotated[bool, typer.Option(help="Smaller runs, for a smoke check.")] = False,
    only: Annotated[str | None, typer.Option(help="Only the rows whose name contains the whole string (e.g. "
                                             "'faust, scoring only') or else one of its comma-separated filters "
                                             "(e.g. 'faust,2 workers'), plus the baseline; no River rows.")] = None,
) -> None:
    """Measure end-to-end throughput and latency against raw confluent-kafka and raw onnxruntime."""
    from streams.cli.bench import UnknownRows, run_bench  # heavy: the benchmark's imports, ~0.3 s: only for `bench`

    with user_errors(UnknownRows):
        run_bench(settings(), 20_000 if quick else events, console, only=only)


app.add_typer(learners_app, name="learners")  # online learning: list|show|rollback snapshots
app.add_typer(drift_app, name="drift")  # drift monitoring: report (HTML), status
app.add_typer(models_app, name="models")  # model registry: versions, aliases, routing, diff
app.add_typer(data_app, name="data")  # data versioning
app.add_typer(retrain_app, name="retrain")  # closed loop: retrain service, approvals, lifecycle log
app.command("lineage")(lineage)
app.command("replay")(replay)


def main() -> None:
    """The command line; a user's mistake that got past the options (a bad STREAMSCORE_* value, a broker that went
    away, ...) is one line and exit code 2, any other error one line and exit code 1: tracebacks only with --debug."""
    from confluent_kafka import KafkaException
    from pydantic import ValidationError

    try:
        code = app(standalone_mode=False)
    except EmbeddedBrokerMissing as exc:  # any command that starts the embedded broker, on an install without it
        console.print(f"[red]✗[/] {escape(str(exc))}", soft_wrap=True, highlight=False)  # keeps "[embedded]"
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except typer.TyperException as exc:  # click's (vendored by typer) usage errors, raised here by standalone_mode
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # bare `streamscore models`: its help
            typer.echo(ctx.get_help())
            sys.exit(0)
        name = f" ({ctx.command_path})" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"error{name}: {' '.join(message.split())}", err=True)  # one line, not click's framed box
        sys.exit(getattr(exc, "exit_code", 2))
    except ValidationError as exc:
        if _debug:
            raise

        line = settings_error_line(exc) if is_settings_error(exc) else " ".join(str(exc).split())[:300]
        typer.echo(f"error: {line}", err=True)
        sys.exit(2)
    except (KafkaException, BrokerError) as exc:
        if _debug:
            raise
        typer.echo(f"error: Kafka: {' '.join(str(exc).split())[:300]} (broker {_broker_in_use()})", err=True)
        sys.exit(2)
    except Exception as exc:  # a bug, not a mistake: still one line, and how to see more
        if _debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (run with --debug for the "
                   "traceback)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _broker_in_use() -> str:
    try:
        s = settings()
    except Exception:  # the settings themselves are the trouble: reported on their own
        return "?"
    return f"{s.bootstrap_servers}, STREAMSCORE_BROKER={s.broker}"


if __name__ == "__main__":
    main()
