"""`streamscore drift ...`: the drift monitor's commands (report, status).

Imports stay inside the commands so that `streamscore --help` does not load numpy or the Kafka client, and the
worker (which imports every command module) does not pay for the report's scipy and river: 209 MB of RSS for
``river.drift`` alone, which imports scikit-learn, pandas and pyarrow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streams.cli.common import fail, make_console, require_broker
from streams.drift.view import summarize_drift
from streams.settings import Settings

drift_app = typer.Typer(help="Drift monitoring: reports and status of the drift records (docs/drift.md).",
                        no_args_is_help=True)
console = make_console()


@drift_app.command("report")
def report(
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("drift-report.html"),
    source: Annotated[str, typer.Option(help="'drift': records of the drift topic; 'input': compute one now "
                                        "from the newest input messages.")] = "drift",
    events: Annotated[int, typer.Option(help="--source input: how many of the newest input messages.")] = 2000,
    limit: Annotated[int, typer.Option(help="--source drift: newest records to chart.")] = 500,
) -> None:
    """Write a self-contained HTML report: reference vs current distribution per feature, statistics over time."""
    from streams.drift.report import read_records, record_from_input, write_report  # heavy: scipy, river
    if source not in ("drift", "input"):
        fail(f"--source {source}: accepted: drift, input")
    settings = Settings()
    require_broker(settings)
    try:
        if source == "drift":
            records = read_records(settings, limit)
        elif source == "input":
            records = [record_from_input(settings, events)]
        else:
            fail(f"--source {source}: accepted: drift, input")
    except (KeyError, ValueError) as exc:
        fail(exc.args[0] if isinstance(exc, KeyError) else exc)
    if not records:
        console.print(f"[yellow]no drift records on {settings.drift_topic!r} yet; try --source input[/]")
        raise typer.Exit(1)
    write_report(records, out)
    console.print(f"[green]✓[/] {out} ({len(records)} record(s), latest status {records[-1].status})")


@drift_app.command("status")
def status() -> None:
    """The latest drift record as a table, with the alerts and retrain requests so far."""
    settings = Settings()
    require_broker(settings)
    if summarize_drift(settings, console) is None:
        raise typer.Exit(1)
