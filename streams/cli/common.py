"""What every command shares: the console, settings from flags + environment, progress bars, the demo
model on first use, one-line user errors (``fail``, ``user_errors``), and one readable line per
message of any topic (``render``)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NoReturn

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models.card import ModelCard
from streams.drift.view import render_drift
from streams.settings import Settings

console = Console()


def settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


# --- user errors -------------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    """A user's mistake: one line on stderr (what was wrong, what is accepted), exit code 2."""
    typer.echo(f"error: {message}", err=True)  # not rich: it would wrap a long line at 80 columns
    raise typer.Exit(2)


@contextmanager
def user_errors(*errors: type[Exception]) -> Iterator[None]:
    """Turn ``ModelDirError`` (and ``errors``) into ``fail``: their ``str()`` is already the one line."""
    from models.artifacts import ModelDirError  # pulls onnxruntime (~130 ms): only commands that use a model

    try:
        yield
    except (ModelDirError, *errors) as exc:
        fail(str(exc))


# --- model -------------------------------------------------------------------------------------
DEFAULT_MODEL_DIR: Path = Settings.model_fields["model_dir"].default  # the demo's own folder


def ensure_demo_model(s: Settings) -> Path:
    """The model folder to serve; the demo model is trained only into its own default folder.

    Raises ``ModelDirError`` (one line) for a STREAMSCORE_MODEL_DIR without a usable model: a folder
    the user chose is never written, and a model.onnx without a card is never touched.
    """
    from models.train_demo import ensure_demo_model as ensure  # heavy (sklearn, skl2onnx)

    trains = s.model_dir.resolve() == DEFAULT_MODEL_DIR.resolve() and not (s.model_dir / "model_card.json").exists()
    with console.status("training demo model") if trains else nullcontext():
        model_dir = ensure(s.model_dir, DEFAULT_MODEL_DIR)
    if trains:

        card = ModelCard.load(model_dir)
        console.print(f"[green]✓[/] {card.name}@{card.version} -> {model_dir}  "
                      f"ROC AUC {card.metrics['roc_auc']:.3f}  sha256 {card.onnx_sha256[:12]}")
    return model_dir


def render(topic: str, msg) -> str:
    """One readable line for a message of any topic of the flow."""
    try:
        body = orjson.loads(msg.value())
    except (orjson.JSONDecodeError, TypeError):
        return f"[dim]{msg.partition()}:{msg.offset()}[/] {msg.value()!r:.120}"
    where = f"[dim]{msg.partition()}:{msg.offset():>6}[/]"
    if "statistics" in body or "alert_id" in body:  # drift records, alerts, retrain requests
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
