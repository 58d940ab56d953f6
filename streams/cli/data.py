"""`streamscore data snapshot|versions|show|verify|learned|sql|export|gc|archiver`, `streamscore lineage ID`,
`streamscore replay`.

They read the archive directory directly (``STREAMSCORE_DATA_DIR``, default ``<state_dir>/data``), the one
the workers' archivers write; no broker is needed. See docs/data_versioning.md.

>>> from typer.testing import CliRunner
>>> import tempfile
>>> result = CliRunner().invoke(data_app, ["versions"], env={"STREAMSCORE_DATA_DIR": tempfile.mkdtemp()})
>>> result.exit_code, "no dataset versions" in result.output
(0, True)
"""

from __future__ import annotations

import csv
import json
import sys
import time
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from datastore.catalog import list_manifests, recover
from datastore.dataset import DatasetVersion, Selection, list_versions, load_version, parent_chain, snapshot
from datastore.dataset import verify_version as verify_dataset
from datastore.retention import apply_retention, compact
from datastore.segment import verify_segment
from datastore.storage import Storage, StorageNotAvailable, open_storage
from streams.cli.common import fail, make_console, progress_bar
from streams.drift.alerts import parse_data_version
from streams.settings import Settings

data_app = typer.Typer(help="Archived data: dataset versions (snapshot, list, show, verify, learned), SQL and "
                       "Parquet export, and gc.",
                       no_args_is_help=True)
console = make_console()


def _storage(s: Settings | None = None) -> Storage:
    s = s or Settings()
    try:
        return open_storage(s.data_path, s.data_store_url)
    except StorageNotAvailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _ms(text: str | None, option: str = "--since") -> int | None:
    """Epoch milliseconds, or an ISO-8601 time (UTC when no zone is given)."""
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text}: accepted: epoch milliseconds (e.g. 1714564800000) or an ISO-8601 time "
             "(e.g. 2024-05-01T12:00, UTC unless a zone is given)")
    return int((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def _load(storage: Storage, ref: str) -> DatasetVersion:
    try:
        return load_version(storage, ref)
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(1) from exc


@data_app.command("snapshot")
def data_snapshot(
    topic: Annotated[list[str] | None, typer.Option("--topic", "-t", help="Topic to include (repeat); default "
                                                    "every archived topic not starting with '_'.")] = None,
    since: Annotated[str | None, typer.Option(help="Records with Kafka timestamp >= this (epoch ms or ISO).")] = None,
    until: Annotated[str | None, typer.Option(help="Records with Kafka timestamp < this (epoch ms or ISO).")] = None,
    description: Annotated[str, typer.Option("--description", "-m", help="What this version is for.")] = "",
    offsets: Annotated[str | None, typer.Option(help="Only these offset ranges, e.g. a retrain request's "
                                                "data_version: 'kafka:features[0]@10-99,...'.")] = None,
) -> None:
    """Make a dataset version of what is sealed now; the same content always gives the same id."""
    ranges = None
    if offsets is not None:
        from datastore.dataset import OffsetRange  # heavy: the archive and fastavro, ~0.4 s: only this command needs it

        try:
            ranges = [OffsetRange(**r.model_dump()) for r in parse_data_version(offsets)]
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--offsets") from exc
        topic = topic or sorted({r.topic for r in ranges})
    storage = _storage()
    started = time.perf_counter()
    selection = Selection(topics=topic, since_ms=_ms(since), until_ms=_ms(until, "--until"), offsets=ranges)
    version, created = snapshot(storage, selection, description)
    state = "[green]created[/]" if created else "[yellow]exists[/] (same content)"
    console.print(f"{state} dataset version [bold]{version.id}[/]")
    console.print(f"  {version.record_count} records in {len(version.segments)} segments, "
                  f"{version.duplicates_dropped} duplicates dropped, parent {version.parent or '-'} "
                  f"({time.perf_counter() - started:.2f} s)")
    for name, t in version.topics.items():
        console.print(f"  {name:<28} {t.kind:<10} {t.records:>9} records ({t.invalid} invalid)")


@data_app.command("versions")
def data_versions() -> None:
    """List dataset versions, oldest first."""
    versions = list_versions(_storage())
    if not versions:
        console.print("no dataset versions yet (`streamscore data snapshot`)")
        return
    table = Table("id", "created", "records", "segments", "topics", "parent", "description")
    for v in versions:
        table.add_row(v.short_id, _when(v.created_at), str(v.record_count), str(len(v.segments)),
                      ", ".join(v.topics), (v.parent or "-")[:12], v.description)
    console.print(table)


@data_app.command("show")
def data_show(version: Annotated[str, typer.Argument(help="Version id or a unique prefix (>= 4 characters).")]) -> None:
    """Show a dataset version: selection, topics and partitions, segments, parent chain."""
    storage = _storage()
    v = _load(storage, version)
    console.print(f"[bold]dataset version {v.id}[/]")
    console.print(f"  created {_when(v.created_at)} by {v.created_by}; {v.description or 'no description'}")
    console.print(f"  selection topics={v.selection.topics or 'all'} since={_when(v.selection.since_ms)} "
                  f"until={_when(v.selection.until_ms)}")
    console.print(f"  {v.record_count} records, time range {_when(v.min_timestamp_ms)} .. "
                  f"{_when(v.max_timestamp_ms)}, {v.duplicates_dropped} duplicates dropped")
    for name, t in v.topics.items():
        spans = ", ".join(f"[{p}] {s.first_offset}..{s.last_offset} ({s.records})" for p, s in t.partitions.items())
        console.print(f"  {name} ({t.kind}, {t.records} records, {t.invalid} invalid): {spans}")
        for p, part in t.partitions.items():  # only partitions with more than one incarnation list epochs
            if part.epochs:
                console.print(f"    [{p}] " + ", ".join(f"epoch {n}: {e.first_offset}..{e.last_offset} ({e.records})"
                                                      for n, e in sorted(part.epochs.items())))
    console.print(f"  {len(v.segments)} segments, e.g. {v.segments[0].key if v.segments else '-'}")
    chain = parent_chain(storage, v)
    console.print("  history: " + " <- ".join(c.short_id for c in chain))


@data_app.command("verify")
def data_verify(
    version: Annotated[str | None, typer.Argument(help="A version to verify; default every sealed segment.")] = None,
) -> None:
    """Check sha256, decoding, offsets and content hashes; exit 1 on any problem."""
    storage = _storage()

    if version is not None:
        v = _load(storage, version)
        problems = verify_dataset(storage, v)
        what = f"dataset version {v.short_id} ({v.record_count} records, {len(v.segments)} segments)"
    else:
        manifests = list_manifests(storage)
        problems = []
        with progress_bar() as bar:
            task = bar.add_task("verifying segments", total=len(manifests))
            for m in manifests:
                problems += verify_segment(storage, m)
                bar.advance(task)
        what = f"{len(manifests)} sealed segments ({sum(m.record_count for m in manifests)} records)"
    for p in problems:
        console.print(f"[red]✗[/] {p}")
    if problems:
        console.print(f"[red]{what}: {len(problems)} problems[/]")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {what}: verified")


def _cell(value: Any) -> Any:
    """A query result value as JSON/CSV text can hold it: bytes as UTF-8 (else hex), times as ISO-8601."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list | tuple):
        return [_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _cell(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    cell = _cell(value)
    return cell if isinstance(cell, str) else json.dumps(cell)


@data_app.command("sql")
def data_sql(
    sql: Annotated[str, typer.Argument(help="One SQL statement (DuckDB) over the views events, dead_letters, "
                                       "predictions, labels.")],
    data: Annotated[str | None, typer.Option("--data", help="Dataset version id (or unique prefix).")] = None,
    parquet: Annotated[Path | None, typer.Option(help="Instead of a version: a directory of exported .parquet "
                                                 "files (searched recursively).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Rows as JSON lines (one object per row).")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Rows as CSV with a header line.")] = False,
    limit: Annotated[int, typer.Option(help="Rows shown in the table (--json/--csv print every row).")] = 100,
) -> None:
    """Query a dataset version with SQL (DuckDB, in process, offline); see docs/data_versioning.md for examples."""
    from datastore.sql import QueryError, query  # duckdb: only for this command

    if (data is None) == (parquet is None):
        console.print("[red]give a dataset version (--data VERSION) or exported files (--parquet DIR), one of "
                      "the two[/]")
        raise typer.Exit(2)
    if as_json and as_csv:
        console.print("[red]--json and --csv are exclusive: choose one output format[/]")
        raise typer.Exit(2)
    storage = _storage() if data is not None else None
    source = _load(storage, data) if storage is not None and data is not None else parquet
    try:
        columns, rows = query(source, sql, storage)  # type: ignore[arg-type]
    except QueryError as exc:
        console.print(f"[red]query failed: {exc}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(dict(zip(columns, (_cell(v) for v in row), strict=True))) + "\n")
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_shown(v) if v is not None else "" for v in row] for row in rows])
        return
    table = Table(*columns)
    for row in rows[:limit]:
        table.add_row(*(_shown(v) for v in row))
    console.print(table)
    more = f", {limit} shown (--limit, or --json/--csv for all)" if len(rows) > limit else ""
    console.print(f"{len(rows)} rows{more}")


@data_app.command("export")
def data_export(
    version: Annotated[str, typer.Argument(help="Version id or a unique prefix (>= 4 characters).")],
    out: Annotated[Path | None, typer.Option("--out", help="Directory for the .parquet files; default "
                                             "<data_dir>/parquet/<version id>/.")] = None,
) -> None:
    """Write a dataset version as Parquet (events, predictions, labels): for pandas, polars, DuckDB, Spark."""
    from datastore.parquet import content_id, export_version  # pyarrow: only for this command

    storage = _storage()
    v = _load(storage, version)
    if out is not None and out.exists() and not out.is_dir():
        console.print(f"[red]--out {out}: exists and is not a directory (give a directory)[/]")
        raise typer.Exit(2)
    if out is not None:
        # never overwrite a user's file: only our own exports of this same version may be rewritten
        clash = [p for p in out.glob("*.parquet") if p.name in {"events.parquet", "predictions.parquet",
                                                                   "labels.parquet"} and not _export_of(p, v.id)]
        if clash:
            console.print(f"[red]--out {out}: {clash[0].name} is there and is not an export of {v.short_id}; "
                          "give an empty or new directory[/]")
            raise typer.Exit(2)
    started = time.perf_counter()
    paths = export_version(storage, v, out)
    took = time.perf_counter() - started
    ok = content_id(paths) == v.id
    console.print(f"exported dataset version [bold]{v.id}[/] ({v.record_count} records, {took:.2f} s); content id "
                  + ("[green]verified[/]" if ok else "[red]DIFFERS[/]"))
    for path in paths:
        print(path)
    if not ok:
        raise typer.Exit(1)


def _export_of(path: Path, version_id: str) -> bool:
    import pyarrow.parquet as pq  # only for export

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return False
    return meta.get(b"streamscore.version_id") == version_id.encode()


@data_app.command("gc")
def data_gc(
    max_age_s: Annotated[float | None, typer.Option(help="Override STREAMSCORE_DATA_RETENTION_MAX_AGE_S.")] = None,
    max_bytes: Annotated[int | None, typer.Option(help="Override STREAMSCORE_DATA_RETENTION_MAX_BYTES.")] = None,
    compact_below: Annotated[int | None, typer.Option(help="Override STREAMSCORE_ARCHIVE_COMPACT_BELOW_RECORDS."),
                             ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be deleted or merged.")] = False,
) -> None:
    """Recover after crashes (unsealed temp files, missing manifests), apply retention, compact small segments."""
    s = Settings()
    storage = _storage(s)
    if not dry_run:
        report = recover(storage)
        for name, items in vars(report).items():
            if items:
                console.print(f"  recovery: {name.replace('_', ' ')}: {len(items)}")
    age = max_age_s if max_age_s is not None else s.data_retention_max_age_s
    size = max_bytes if max_bytes is not None else s.data_retention_max_bytes
    below = compact_below if compact_below is not None else s.archive_compact_below_records
    if age is None and size is None and below is None:
        console.print("no retention or compaction limit set (STREAMSCORE_DATA_RETENTION_MAX_AGE_S, "
                      "_MAX_BYTES, STREAMSCORE_ARCHIVE_COMPACT_BELOW_RECORDS): nothing to do")
        return
    if age is not None or size is not None:
        r = apply_retention(storage, age, size, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        console.print(f"{verb} {len(r.deleted)} segments ({r.deleted_bytes} bytes); kept {r.kept_referenced} over "
                      f"the limit that dataset versions reference; {r.remaining_bytes} bytes remain")
    if below is not None:
        c = compact(storage, below, s.archive_segment_records, dry_run=dry_run)
        verb = "would merge" if dry_run else "merged"
        console.print(f"{verb} {len(c.replaced)} small segments" + ("" if dry_run else f" into {len(c.merged)}"))


@data_app.command("learned")
def data_learned(
    learner: Annotated[str, typer.Argument(help="Learner spec name, e.g. logreg.")],
    version: Annotated[int | None, typer.Argument(help="Snapshot version; default the latest.")] = None,
) -> None:
    """The dataset version of the labels a River snapshot learned since its parent (same snapshot, same id)."""
    from online_learning.snapshots import SnapshotStore  # heavy: river + pandas, ~0.7 s
    from streams.archive.lineage import LabelsNotArchived, learner_data_version  # heavy: the archive

    s = Settings()
    store = SnapshotStore(s.snapshot_path, learner, s.signing_key_bytes())
    wanted = version if version is not None else store.latest_version()
    if wanted is None:
        console.print(f"[red]no snapshots of {learner} under {store.dir}[/]")
        raise typer.Exit(1)
    try:
        v, created = learner_data_version(_storage(s), store, wanted)
    except (LabelsNotArchived, KeyError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    state = "created" if created else "exists"
    console.print(f"{learner} v{wanted} learned dataset version [bold]{v.id}[/] ({state}): {v.record_count} labels, "
                  f"parent {v.parent or '-'}")


@data_app.command("archiver")
def data_archiver() -> None:
    """Run only the archive lane (group <app_id>-archive), in the foreground until SIGTERM/SIGINT.

    For keeping archiving off the scoring workers' cores: run scoring workers with STREAMSCORE_ARCHIVE=false
    and one or more of these (same app id, same data dir). On stop, open segments are sealed and committed.
    """
    import logging

    from streams.archive.lane import run_archiver  # heavy: the archive and fastavro, ~0.4 s: only this command needs it

    s = Settings()
    _storage(s)  # a bad data store URL is refused here, with the CLI's message
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise typer.Exit(run_archiver(s))


# --- top-level commands (registered in streams/cli/main.py) ---------------------------------------------------
def lineage(event_id: Annotated[str, typer.Argument(help="Event id (the key of input and prediction records).")],
            ) -> None:
    """Show an event, its predictions, the model of each, and the data version that model was trained on."""
    from streams.archive.lineage import trace  # heavy: the archive and fastavro, ~0.4 s: only this command needs it

    s = Settings()
    lin = trace(s, _storage(s), event_id)
    if not lin.found:
        console.print(f"[red]event {event_id!r} is not in the archive[/] ({s.data_path}; "
                      f"{lin.segments_opened} segments opened)")
        raise typer.Exit(1)
    console.print(f"[bold]event {event_id}[/]")
    for hit in lin.events:
        e, m = hit.row["event"], hit.manifest
        console.print(f"  input      {hit.position}  at {_when(hit.row['timestamp_ms'])}  segment {m.key} "
                      f"(sha256 {m.sha256[:12]}…)")
        if e is not None:
            feats = ", ".join(f"{k}={v:g}" for k, v in e["features"].items())
            console.print(f"             entity {e['entity_id']}  schema v{e['schema_version']}  {feats}")
        else:
            console.print(f"             [red]invalid[/]: {hit.row['invalid_reason']} (dead-lettered by the worker)")
    for v in lin.versions:
        console.print(f"  in data    {v.id}  ({v.record_count} records, {_when(v.created_at)})")
    for hit in lin.predictions:
        p = hit.row["prediction"]
        if p is None:
            console.print(f"  prediction {hit.position}: does not decode ({hit.row['invalid_reason']})")
            continue
        console.print(f"  prediction {hit.position}  score {p['score']!r}  label {p['label']}  "
                      f"{p['model_name']}@{p['model_version']}  route {p['route']}  by {p['worker']}  "
                      f"at {_when(p['scored_at'])}")
        console.print(f"             from {p['source_topic']}[{p['source_partition']}]@{p['source_offset']}  "
                      f"input_hash {p['input_hash'][:16]}…  segment {hit.manifest.key}")
    for hit in lin.labels:
        lab = hit.row["label"]
        what = f"label {lab['label']!r}" if lab is not None else f"[red]invalid[/] ({hit.row['invalid_reason']})"
        console.print(f"  label      {hit.position}  {what}  segment {hit.manifest.key}")
    for lb in lin.learned_by:
        data = lb.data_version or f"(no dataset version yet: `streamscore data learned {lb.learner} {lb.version}`)"
        console.print(f"  learned by {lb.learner} v{lb.version}  data {data}")
    for ml in lin.models:
        console.print(f"  model      {ml.ref}  sha256 {ml.sha256[:16]}…  {ml.model_dir or ''}")
        if ml.retrain is not None:  # trained by the retrain service: the request and the alert behind it
            r = ml.retrain
            console.print(f"  retrained  request {r.request_id}  alert {r.alert_id}  training data {r.id}  "
                          f"({len(r.rows)} labelled rows)")
            console.print(f"             data version {r.data_version}", soft_wrap=True)
        if ml.training_version is not None:
            tv = ml.training_version
            console.print(f"  trained on {tv.id}  ({tv.record_count} records, {', '.join(tv.topics)})")
            console.print("  parents    " + " <- ".join(c.short_id for c in ml.chain))
        elif ml.card is not None:
            console.print(f"  trained on {ml.card.training_data_version!r}")
        for problem in ml.problems:
            console.print(f"  [yellow]! {problem}[/]")


def replay(
    data: Annotated[str, typer.Option("--data", help="Dataset version id (or unique prefix).")],
    model: Annotated[str, typer.Option("--model", help="NAME@VERSION, or a model directory.")],
    tolerance: Annotated[float, typer.Option(help="Accepted |difference| of score and probabilities; "
                                             "0 = bit for bit (ONNX).")] = 0.0,
    show: Annotated[int, typer.Option(help="Mismatches to list.")] = 10,
) -> None:
    """Re-score a dataset version's events and compare with the recorded predictions; exit 1 on any mismatch."""
    from models.onnx_scorer import OnnxScorer  # heavy: onnxruntime, ~0.25 s: only this command needs it
    from streams.archive.replay import replay as run_replay  # heavy: the archive
    from streams.archive.replay import resolve_model_dir  # heavy: the archive

    s = Settings()
    storage = _storage(s)
    version = _load(storage, data)
    try:
        model_dir = resolve_model_dir(s, model)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    scorer = OnnxScorer.from_dir(model_dir)  # one intra-op thread, as in the worker: needed for bit equality
    total = sum(t.records for t in version.topics.values() if t.kind == "event")
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"replaying {version.short_id} with {scorer.name}@{scorer.version}", total=total)
        report = run_replay(storage, version, scorer, tolerance, on_progress=lambda n: bar.advance(task, n),
                            keep_mismatches=show)
    took = time.perf_counter() - started
    mode = "bit for bit" if tolerance == 0 else f"within {tolerance:g}"
    console.print(f"replay of {version.id} with {report.model} (sha256 {report.model_sha256[:12]}…, {model_dir})")
    console.print(f"  {report.events} events: {report.scored} scored, {report.unscorable} not scorable (invalid "
                  f"input); {report.compared} recorded predictions compared ({mode}; recorded in the "
                  f"{report.recorded_source}), {report.unrecorded} events without a recorded prediction of this "
                  f"model, {report.orphaned} predictions without their input in the version ({took:.2f} s)")
    if not report.same_artifact:
        recorded = ", ".join(sorted(x[:12] + "…" for x in report.recorded_sha256))
        console.print(f"  [red]the recorded predictions were made by model sha256 {recorded}, not this artifact[/]")
    for mm in report.mismatches:
        replayed = "-" if mm.replayed_score is None else repr(mm.replayed_score)
        console.print(f"  [red]✗[/] {mm.event_id} {mm.position[0]}[{mm.position[1]}]@{mm.position[2]}: "
                      f"{', '.join(mm.fields)} differ (recorded {mm.recorded_score!r}, replayed {replayed})")
    if report.ok:
        console.print(f"[green]✓ {report.matched} of {report.compared} predictions reproduced {mode}[/]")
        return
    if report.compared == 0:
        console.print("[red]✗ nothing to compare: no recorded prediction of this model for the version's events[/]")
    elif report.mismatched:
        console.print(f"[red]✗ {report.mismatched} of {report.compared} predictions differ "
                      f"(max |difference| {report.max_abs_diff:.3g})[/]")
    else:  # every score reproduced, but the predictions name another artifact: not a reproduction of *this* model
        console.print(f"[red]✗ {report.matched} of {report.compared} predictions reproduced {mode}, but they were "
                      "recorded by another model artifact (sha256 above)[/]")
    raise typer.Exit(1)
