"""What every command shares: the console, settings from flags + environment, progress bars, the demo
model on first use, and one readable line per message of any topic (``render``)."""

from __future__ import annotations

import base64

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streams.drift.view import render_drift
from streams.settings import Settings

console = Console()


def settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


# --- model -------------------------------------------------------------------------------------


def ensure_demo_model(s: Settings) -> None:
    if not (s.model_dir / "model_card.json").exists():  # written last, so present = complete
        from models.train_demo import train_demo_model  # heavy (sklearn, skl2onnx): only when training

        with console.status("training demo model"):
            card = train_demo_model(s.model_dir, seed=7, n=20000)
        console.print(f"[green]✓[/] {card.name}@{card.version} -> {s.model_dir}  "
                      f"ROC AUC {card.metrics['roc_auc']:.3f}  sha256 {card.onnx_sha256[:12]}")


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
