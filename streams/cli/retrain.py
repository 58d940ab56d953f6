"""`streamscore retrain` (the retrain service), `streamscore retrain approve NAME VERSION`, `streamscore retrain log`.

`streamscore models approve NAME VERSION` is the same approval (the documented one: approvals are a model-registry
step); both write the lifecycle topic's ``approved`` event.

See docs/closed_loop.md. The service reads the retrain-requests topic in its own group (``<app_id>-retrain``) and
writes every step to the lifecycle topic (``STREAMSCORE_RETRAIN_LIFECYCLE_TOPIC``, default ``model-lifecycle``).

>>> from typer.testing import CliRunner
>>> r = CliRunner().invoke(retrain_app, ["approve", "bad name!", "2"])
>>> r.exit_code, "model name" in r.output
(2, True)
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Annotated

import typer

from schemas.model_refs import NAME_PATTERN
from streams.cli.common import console, fail, settings

retrain_app = typer.Typer(help="Closed loop: the retrain service, approvals in manual mode, the lifecycle log.",
                          invoke_without_command=True)


@retrain_app.callback()
def retrain(
    ctx: typer.Context,
    approval: Annotated[str | None, typer.Option(help="auto or manual (STREAMSCORE_RETRAIN_APPROVAL).")] = None,
    loglevel: Annotated[str, typer.Option(help="error, warning, info or debug.")] = "info",
) -> None:
    """Run the retrain service until SIGTERM/Ctrl-C: request → dataset → candidate → shadow → gate → promote."""
    if ctx.invoked_subcommand is not None:
        return
    if approval not in (None, "auto", "manual"):
        fail(f"--approval {approval!r}: give auto or manual")
    from streams.retrain.service import run_service  # heavy: sklearn, skl2onnx, the archive: only the service

    s = settings(retrain_approval=approval)
    if s.registry_model is None:
        fail("the retrain service needs STREAMSCORE_REGISTRY_MODEL (the registry model it retrains and promotes)")
    # the root command already configured logging (at warn): basicConfig here would be a no-op, and the service's
    # steps (info) were never written
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    raise typer.Exit(run_service(s))


@retrain_app.command("approve")
def approve_cmd(name: str, version: str) -> None:
    """Approve NAME@VERSION in manual mode: promoted once its gate has passed (an approval is not a bypass)."""
    import re

    for value, what in ((name, "model name"), (version, "version")):
        if not re.fullmatch(NAME_PATTERN, value):
            fail(f"{what} {value!r}: letters, digits, '.', '_' and '-' only (e.g. demo-risk 2)")
    from streams.retrain.service import LifecycleError, approve  # heavy: the service's imports

    try:
        event = approve(settings(), name, version)
    except LifecycleError as exc:
        console.print(f"[red]✗[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"[green]✓[/] approved {name}@{version} (lifecycle {event.stage} at {_when(event.at_ms)})")


@retrain_app.command("log")
def log_cmd(n: Annotated[int, typer.Option("-n", help="Newest events shown.")] = 50) -> None:
    """The lifecycle topic: each step with the ids linking request, alert, data and model versions."""
    from streams.kafka.reader import read_all  # confluent-kafka consumer: only this command reads a topic
    from streams.retrain.lifecycle import decode  # pydantic models of the service: only this command

    s = settings()
    try:
        events = [decode(m.value()) for m in read_all(s, s.retrain_lifecycle_topic)]
    except KeyError:
        console.print(f"no lifecycle topic {s.retrain_lifecycle_topic!r} yet (no retrain service has run)")
        return
    for e in events[-n:]:
        ver = f"@{e.model_version}" if e.model_version else ""
        ids = " ".join(f"{k}={v}" for k, v in (("request", e.request_id), ("alert", e.alert_id),
                                                 ("data", e.dataset_version and e.dataset_version[:12]),
                                                 ("train", e.training_dataset and e.training_dataset[:12])) if v)
        console.print(f"{_when(e.at_ms)}  {e.stage:<17} {e.model_name}{ver}  {e.reason}  {ids}", highlight=False,
                      soft_wrap=True)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
