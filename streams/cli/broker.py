"""`streamscore broker up|down|status`: the embedded Kafka-protocol broker (Tansu, memory-only)."""

from __future__ import annotations

import typer

from streams.cli.common import console, require_broker, settings, user_errors
from streams.kafka import clients
from streams.kafka.broker import BrokerError, EmbeddedBroker

broker_app = typer.Typer(help="Run the embedded Kafka-protocol broker (Tansu, memory-only) on 127.0.0.1.",
                         no_args_is_help=True)


@broker_app.command("up")
def broker_up() -> None:
    """Start the embedded broker (no-op when it already runs)."""
    with user_errors(BrokerError):
        status = EmbeddedBroker(settings()).up()
    console.print(f"[green]✓[/] {status}")


@broker_app.command("down")
def broker_down() -> None:
    """Stop the embedded broker. Its data is lost: it keeps everything in memory."""
    stopped = EmbeddedBroker(settings()).down()
    console.print("[green]✓[/] embedded broker stopped" if stopped else "embedded broker was not running")


@broker_app.command("status")
def broker_status() -> None:
    """Show whether the broker in use answers (embedded: whether it runs), and its topics; exit 1 when it does not."""
    s = settings()
    if s.is_embedded:
        status = EmbeddedBroker(s).status()
        console.print(str(status), highlight=False)
        if not status.running:
            console.print("start it with `streamscore broker up`")
            raise typer.Exit(1)
    else:
        require_broker(s)
        console.print(f"Kafka at {s.bootstrap_servers} (STREAMSCORE_BROKER={s.broker})", highlight=False)
    topics = clients.admin(s.kafka).list_topics(timeout=5).topics
    width = max((len(name) for name in topics), default=0)
    console.print(f"{len(topics)} topics:", highlight=False)
    for name, meta in sorted(topics.items()):
        console.print(f"  {name:<{width}}  {len(meta.partitions)} partition(s)", highlight=False)
