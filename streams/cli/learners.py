"""`streamscore learners list|show VERSION|rollback VERSION`: the snapshot history of an online learner.

Reads and writes the snapshot directory directly (``STREAMSCORE_SNAPSHOT_DIR``, default
``<state_dir>/snapshots``), the one the workers share; no broker is needed. A rollback is a new
snapshot, so workers pick it up like any other (within ``snapshot_poll_s``), without a restart.

Names are confined to the store (``models.store_paths``): ``--learner ../..``, ``/etc`` or a learner or
version directory that a symlink leads out of the store is refused with one line and exit code 2, as is
a store without the deployment key (``STREAMSCORE_SIGNING_KEY`` / ``STREAMSCORE_SIGNING_KEY_FILE``).
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from models.signing import SigningKeyError
from models.store_paths import UnsafePath
from online_learning.snapshots import SnapshotError, SnapshotMeta, SnapshotStore
from streams.cli.common import make_console
from streams.settings import Settings

learners_app = typer.Typer(help="Online learners: list snapshots, show one (verified), roll back to one.",
                           no_args_is_help=True)
console = make_console()

LearnerOption = Annotated[
    str | None,
    # (names not listed from online_learning.specs here: importing River would slow every command by ~0.9 s)
    typer.Option("--learner", "-l", help="Learner spec name, e.g. logreg or hoeffding; default STREAMSCORE_LEARNER, "
                 "or the only one with snapshots."),
]


VersionArg = Annotated[str, typer.Argument(help="Snapshot version: a number, e.g. 3 (or v000003).")]


def _fail(message: object) -> typer.Exit:
    """One red line (never wrapped), exit code 2: the request was refused."""
    console.print(f"[red]✗[/] {escape(' '.join(str(message).split()))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def _store(learner: str | None) -> SnapshotStore:
    s = Settings()
    name = learner or s.learner
    if name is None:
        root = s.snapshot_path
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
        if len(found) != 1:
            raise _fail(f"name the learner with --learner; snapshots under {root} exist for: "
                        f"{', '.join(found) or 'none'}")
        name = found[0]
    try:
        return SnapshotStore(s.snapshot_path, name, s.signing_key_bytes())  # the one deployment key
    except (UnsafePath, SigningKeyError) as exc:
        raise _fail(exc) from None


def _version(store: SnapshotStore, text: str) -> int:
    """``3`` or ``v000003`` -> 3; anything else (``../..``, a path) is refused before it reaches the store."""
    digits = text[1:] if text.startswith("v") else text
    if not digits.isascii() or not digits.isdigit() or int(digits) < 1:
        raise _fail(f"version {text!r} is not a snapshot version: give a number >= 1, e.g. 3 (or v000003); "
                    f"{store.learner} has {store.versions() or 'none'}")
    return int(digits)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _labels(meta: SnapshotMeta) -> str:
    spans = [f"{r.topic}[{r.partition}] {r.first_offset}-{r.last_offset}" for r in meta.offsets]
    return ", ".join(spans) or "-"


def _headline(values: dict[str, float] | None, names: tuple[str, ...] | None = None) -> str:
    """``accuracy 0.912  log_loss 0.231  roc_auc 0.950  (n 1000)``, or ``-`` when nothing was evaluated."""
    if not values or not values.get("n"):
        return "-"
    names = names or (("accuracy", "log_loss", "roc_auc") if "accuracy" in values else ("mae", "rmse"))
    shown = "  ".join(f"{n} {values[n]:.3f}" for n in names if n in values)
    return f"{shown}  (n {int(values['n'])})"


def _cell(values: dict[str, float] | None, count: bool = True) -> str:
    """The table's short form: ``0.912/0.950 n1000`` (accuracy/roc_auc; regression: mae/rmse)."""
    if not values or not values.get("n"):
        return "-"
    a, b = ("accuracy", "roc_auc") if "accuracy" in values else ("mae", "rmse")
    n = f" n{int(values['n'])}" if count else ""
    return f"{values.get(a, float('nan')):.3f}/{values.get(b, float('nan')):.3f}{n}"


def _own(metas: dict[int, SnapshotMeta], version: int) -> dict[str, float] | None:
    """The learner's own prequential metrics of ``version``: its served predictions against the labels that came
    later, as the newest snapshot has them (the metrics are carried from snapshot to snapshot per serving version).

    Not ``metrics["all"]``: when labels arrive after their features, "all" is mostly the predictions of the
    versions before (v0, no model yet, scores 0.5: log_loss 0.693, roc_auc 0.500), which made a learner that
    works look broken.
    """
    newest = metas[max(metas)]
    return newest.metrics.get(str(version))


@learners_app.command("list")
def list_snapshots(learner: LearnerOption = None) -> None:
    """Every snapshot, oldest first; the newest is the one workers serve."""
    store = _store(learner)
    versions = store.versions()
    if not versions:
        console.print(f"no snapshots of {store.learner} under {store.dir}")
        return
    try:
        metas = {version: store.meta(version) for version in versions}
    except (UnsafePath, SnapshotError, KeyError, ValueError) as exc:  # a version dir a symlink leads out of
        raise _fail(exc.args[0] if isinstance(exc, KeyError) else exc) from None
    classification = "accuracy" in metas[versions[-1]].metrics.get("all", {"accuracy": 0.0})
    pair = "acc/auc" if classification else "mae/rmse"
    # 100 columns hold it (measured: 92 wide with a 4-digit label count); narrower, offsets wrap first
    table = Table(title=f"{store.learner} snapshots ({store.dir})", box=None, padding=(0, 1), title_justify="left",
                  header_style="bold")
    table.add_column("version", no_wrap=True)
    table.add_column("parent", no_wrap=True)
    table.add_column("created UTC", no_wrap=True)
    table.add_column("labels", no_wrap=True)
    table.add_column("offsets")
    table.add_column(f"own {pair}", no_wrap=True)
    table.add_column(f"served {pair}", no_wrap=True)
    for version, meta in metas.items():
        name = str(version) if meta.kind != "rollback" else f"{version} (rollback of {meta.parent})"
        table.add_row(f"{name}{' ← serving' if version == versions[-1] else ''}",
                      "-" if meta.parent is None else str(meta.parent), _when(meta.created_at)[5:],
                      f"{meta.learned}/{meta.learned_total}", _labels(meta), _cell(_own(metas, version)),
                      _cell(meta.metrics.get("all"), count=False))
    console.print(table)
    console.print("labels: new since parent/total. own: this version's served predictions against their labels "
                  "(prequential; '-' until they come). served: every label evaluated up to that snapshot, whichever "
                  "version served it (v0 = no model yet, 0.5). `learners show N`: log_loss, each version.",
                  highlight=False)


@learners_app.command("show")
def show(version: VersionArg, learner: LearnerOption = None,
         as_json: Annotated[bool, typer.Option("--json", help="Only the metadata, as JSON (after verifying).")
                            ] = False) -> None:
    """One snapshot's metadata, after verifying its artifact against the recorded sha256 and signature.

    Exit code 1 when the snapshot does not verify (the verdict of this check), 2 when the request is refused.
    """
    store = _store(learner)
    number = _version(store, version)
    try:
        meta = store.meta(number)
    except (KeyError, UnsafePath, SnapshotError, ValueError) as exc:
        raise _fail(exc.args[0] if isinstance(exc, KeyError) else exc) from None
    try:
        meta, _ = store.verified_bytes(number)
    except (SnapshotError, OSError) as exc:
        console.print(meta.model_dump_json(indent=2))
        console.print(f"[red]✗ integrity: {escape(str(exc))}[/]", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(meta.model_dump_json(indent=2))
        return
    try:  # the newest snapshot carries the evaluations of this version's predictions
        newest = store.meta(store.versions()[-1])
    except (UnsafePath, SnapshotError, KeyError, ValueError):  # refused or unreadable: this one's own view
        newest = meta
    console.print(f"{store.learner} v{number}  kind {meta.kind}  parent {meta.parent or '-'}  created "
                  f"{_when(meta.created_at)} UTC  by {meta.worker}", highlight=False)
    console.print(f"  labels learned: {meta.learned} since parent, {meta.learned_total} over its lineage; offsets "
                  f"{_labels(meta)}", highlight=False)
    console.print(f"  own prequential (predictions v{number} served, against their labels): "
                  f"{_headline(newest.metrics.get(str(number)))}", highlight=False)
    console.print(f"  served-time, all versions (as of this snapshot): {_headline(meta.metrics.get('all'))}",
                  highlight=False)
    for served_by, values in sorted((k, v) for k, v in meta.metrics.items() if k != "all"):
        console.print(f"    served by v{served_by}: {_headline(values)}", highlight=False)
    console.print(f"  sha256 {meta.sha256}", highlight=False)
    console.print(meta.model_dump_json(indent=2), highlight=False)
    console.print(f"[green]✓[/] {store.learner} v{number}: artifact sha256 {meta.sha256[:12]}… and signature "
                  "verified")


@learners_app.command("rollback")
def rollback(version: VersionArg, learner: LearnerOption = None) -> None:
    """Serve VERSION's model again, as a NEW snapshot whose parent is VERSION (history is kept).

    Labels learned after VERSION are dropped from the model, not replayed; the labels that arrive from now
    on are learned on top of it. Workers switch within STREAMSCORE_SNAPSHOT_POLL_S, without a restart.
    """
    store = _store(learner)
    number = _version(store, version)
    try:
        meta = store.rollback(number, worker=f"cli@{socket.gethostname()}")
    except (KeyError, SnapshotError, UnsafePath, FileNotFoundError) as exc:  # never onto a corrupt artifact
        raise _fail(exc.args[0] if isinstance(exc, KeyError) else exc) from None
    console.print(f"[green]✓[/] {store.learner} v{meta.version} = the model of v{number} (rolled back from "
                  f"v{meta.rolled_back_from}); labels resume at "
                  f"{', '.join(f'{o.topic}[{o.partition}]@{o.offset}' for o in meta.next_offsets) or 'the start'}")
