"""`streamscore broker up|down|status`: the embedded Kafka-protocol broker (Tansu, memory-only)."""

from __future__ import annotations

import typer

from streams.cli.common import console, settings
from streams.kafka import clients
from streams.kafka.broker import EmbeddedBroker

broker_app = typer.Typer(help="Run the embedded Kafka-protocol broker (Tansu, memory-only) on 127.0.0.1.",
                         no_args_is_help=True)


@broker_app.command("up")
def broker_up() -> None:
    """Start the embedded broker (no-op when it already runs)."""
    status = EmbeddedBroker(settings()).up()
    console.print(f"[green]✓[/] {status}")


@broker_app.command("down")
def broker_down() -> None:
    """Stop the embedded broker. Its data is lost: it keeps everything in memory."""
    stopped = EmbeddedBroker(settings()).down()
    console.print("[green]✓[/] embedded broker stopped" if stopped else "embedded broker was not running")


@broker_app.command("status")
def broker_status() -> None:
    """Show whether the embedded broker runs, and its topics."""
    s = settings()
    status = EmbeddedBroker(s).status()
    console.print(status)
    if status.running:
        topics = clients.admin(s.kafka).list_topics(timeout=5).topics
        for name, meta in sorted(topics.items()):
            console.print(f"  {name}  ({len(meta.partitions)} partitions)")
    else:
        raise typer.Exit(1)
