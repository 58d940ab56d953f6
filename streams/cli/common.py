"""What every command shares: the console, settings from flags + environment, progress bars, the demo
model on first use, one-line user errors (``fail``, ``user_errors``), and one readable line per
message of any topic (``render``)."""

from __future__ import annotations

import base64
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models.card import ModelCard
from streams.drift.view import render_drift
from streams.settings import Settings, settings_error_line


def make_console(stderr: bool = False) -> Console:
    """Rich on a terminal; plain text otherwise: no wrapping (hashes and paths stay whole, `grep` finds them),
    no colours and no cursor codes in logs and pipes."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    # Lines are never wrapped (soft_wrap); tables and rules get COLUMNS, else 160 (rich's 80 cut columns to `versi…`)
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 160
    return Console(stderr=stderr, soft_wrap=True, force_terminal=False, no_color=True, highlight=False, width=width)


console = make_console()


def settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


# --- user errors -------------------------------------------------------------------------------


def fail(message: object) -> NoReturn:
    """A user's mistake: one line on stderr (what was wrong, what is accepted), exit code 2."""
    line = " ".join(str(message).split())
    typer.echo(f"error: {line}", err=True)  # not rich: it would wrap a long line at 80 columns
    raise typer.Exit(2)


@contextmanager
def user_errors(*errors: type[Exception]) -> Iterator[None]:
    """Turn ``ModelDirError`` (and ``errors``) into ``fail``: their ``str()`` is already the one line; a bad
    setting (pydantic's ValidationError of ``Settings``) becomes ``settings_error_line``."""
    from pydantic import ValidationError

    from models.artifacts import ModelDirError  # pulls onnxruntime (~130 ms): only commands that use a model

    try:
        yield
    except ValidationError as exc:
        if not is_settings_error(exc):
            raise
        fail(settings_error_line(exc))
    except (ModelDirError, *errors) as exc:
        fail(" ".join(str(exc).split()))


def is_settings_error(exc: Exception) -> bool:
    return getattr(exc, "title", None) in ("Settings", "KafkaSettings", "ScoringSettings")


# --- broker ------------------------------------------------------------------------------------
def broker_hint(s: Settings) -> str:
    """How to fix an unreachable broker: start the embedded one, or check the STREAMSCORE_BROKER in use."""
    if s.is_embedded:
        return "start it with `streamscore broker up` (or set STREAMSCORE_BROKER=kafka://host:port)"
    return (f"check STREAMSCORE_BROKER={s.broker} (is it running, reachable from here?), or unset it and run "
            "`streamscore broker up` for the embedded one")


def require_broker(s: Settings, timeout_s: float = 3.0) -> str:
    """The bootstrap servers, once one of them accepts a TCP connection within ``timeout_s``; else one line, exit 2.

    A TCP probe, not a Kafka request: librdkafka retries a refused connection for its full request timeout
    (measured: `tail` answered after ~10 s with ~200 log lines), a socket says no in under a millisecond.
    """
    servers = s.bootstrap_servers
    per_server = timeout_s / max(1, len(servers.split(",")))
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=per_server):
                return servers
        except (OSError, ValueError):
            continue
    fail(f"no Kafka broker answers at {servers} (STREAMSCORE_BROKER={s.broker}): {broker_hint(s)}")


# --- model -------------------------------------------------------------------------------------
DEFAULT_MODEL_DIR: Path = Settings.model_fields["model_dir"].default  # the demo's own folder


def ensure_demo_model(s: Settings) -> Path:
    """The model folder to serve; the demo model is trained only into its own default folder.

    Raises ``ModelDirError`` (one line) for a STREAMSCORE_MODEL_DIR without a usable model: a folder
    the user chose is never written, and a model.onnx without a card is never touched.
    """
    from models.artifacts import served_model_dir  # imports onnxruntime: not for `streamscore --help`

    if (served := served_model_dir(s.model_dir, DEFAULT_MODEL_DIR)) is not None:
        return served  # no training, so none of sklearn, skl2onnx and onnx is imported (~200 MB of RSS)
    from models.train_demo import ensure_demo_model as ensure  # heavy (sklearn, skl2onnx)

    with console.status("training demo model"):
        model_dir = ensure(s.model_dir, DEFAULT_MODEL_DIR)
    card = ModelCard.load(model_dir)
    console.print(f"[green]✓[/] {card.name}@{card.version} -> {model_dir}  "
                  f"ROC AUC {card.metrics['roc_auc']:.3f}  sha256 {card.onnx_sha256[:12]}")
    return model_dir


def render_header(topic: str) -> str:
    """The column names above ``render``'s prediction and dead-letter lines."""
    where = f"{'p:offset':>8}"
    if topic.startswith("dead"):
        return f"[bold]{where} {'reason':<22} detail  from topic[partition]@offset  original value[/]"
    if "feature" in topic:
        return f"[bold]{where} {'event time (UTC)':<23} {'event_id':<22} {'entity':<10} features[/]"
    return (f"[bold]{where} {'event time (UTC)':<23} {'event_id':<22} {'score':>6} {'label':<6} "
            f"{'model@version':<18} {'route':<10} latency = consumed to scored (ms)[/]")


def _time(ms: object) -> str:
    from datetime import datetime, timezone  # stdlib

    if not isinstance(ms, int | float):
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]


def render(topic: str, msg) -> str:
    """One readable line for a message of any topic of the flow."""
    try:
        body = orjson.loads(msg.value())
    except (orjson.JSONDecodeError, TypeError):
        return f"[dim]{msg.partition()}:{msg.offset()}[/] {msg.value()!r:.120}"
    where = f"[dim]{f'{msg.partition()}:{msg.offset()}':>8}[/]"
    if "statistics" in body or "alert_id" in body:  # drift records, alerts, retrain requests
        return render_drift(body, where)
    if "model_version" in body and "score" in body:
        colour = "red" if body["score"] >= 0.5 else "green"
        model = f"{body['model_name']}@{body['model_version']}"
        return (f"{where} {_time(body.get('event_time')):<23} {body['event_id']:<22} "
                f"[{colour}]{body['score']:>6.4f}[/] {body['label']:<6} {model:<18} "
                f"{body.get('route') or '-':<10} {body['latency_ms']:.1f} ms")
    if "features" in body and "event_id" in body and isinstance(body["features"], dict):  # an input event
        features = " ".join(f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v!r}"
                            for k, v in body["features"].items())
        return (f"{where} {_time(body.get('event_time')):<23} {body['event_id']:<22} "
                f"{body.get('entity_id', '-'):<10} [dim]{features[:120]}[/]")
    if "reason_code" in body:
        original = base64.b64decode(body.get("original_value") or "")
        return (f"{where} [yellow]{body['reason_code']:<22}[/] {body['reason']}  "
                f"[dim]from {body['source_topic']}[{body['source_partition']}]@{body['source_offset']} "
                f"{original[:40]!r}[/]")
    return f"{where} {orjson.dumps(body).decode()[:160]}"
