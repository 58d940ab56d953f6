"""`streamscore models ...`: the model registry from the command line (docs/registry.md).

Every change is appended to ``<registry_dir>/log.jsonl`` and published to the control topic, from which
running workers (``STREAMSCORE_REGISTRY_MODEL``) pick it up within about a second, without a restart:

    streamscore models register artifacts/models/demo-risk/2 --alias challenger
    streamscore models promote demo-risk 2          # champion -> 2
    streamscore models rollback demo-risk           # champion -> the version it held before
    streamscore models route '*' '{"policy": "canary", "percent": 10, "max_error_rate": 0.3}'
    streamscore models compose demo-risk blend-1 '{"kind": "rule", "rule": "max", "parts": [...]}'
    streamscore models diff demo-risk champion challenger --data events.jsonl
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from models.card import ModelCard
from models.registry import CHAMPION, ModelRegistry, RegistryError, RegistryRecord, read_log
from models.signing import SigningKeyError
from models.store_paths import UnsafePath, confined
from schemas.codecs import InvalidEvent, decode_feature_event
from schemas.model_refs import ModelRef, ModelRefError, parse_model_ref
from streams.cli.common import make_console, require_broker
from streams.cli.produce import read_jsonl
from streams.cli.retrain import approve_cmd as retrain_approve
from streams.cli.retrain import log_cmd as retrain_log
from streams.kafka import clients
from streams.kafka.broker import ensure_broker
from streams.settings import Settings

models_app = typer.Typer(help="Model registry: versions, aliases, rollback, routing policies, diff.",
                         no_args_is_help=True)
console = make_console()


def _one_line(message: object) -> str:
    if isinstance(message, ValidationError):  # pydantic's message is several lines with a link
        errors = message.errors()
        where = ".".join(str(p) for p in errors[0]["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"invalid {message.title}: {where + ': ' if where else ''}{errors[0]['msg']}{more}"
    return " ".join(str(message).split())


def _fail(message: object) -> typer.Exit:
    """One red line (never wrapped: scripts grep it), exit code 2: the request was refused."""
    console.print(f"[red]✗[/] {escape(_one_line(message))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def _confine(s: Settings, name: str | None, *refs: str | None) -> None:
    """Refuse a model name, version or alias that is not one plain name inside ``<registry_dir>/models``.

    Checked before the registry or the broker is touched: ``../..``, ``/etc`` or a version directory that a
    symlink leads out of the store never reach a path, a lock or the control topic.
    """
    if name is None:
        return
    try:
        confined(s.registry_path / "models", name, what="model name")
        for ref in refs:
            if ref is not None:
                confined(s.registry_path / "models", name, ref, what="version or alias")
    except UnsafePath as exc:
        raise _fail(exc) from None


def _registry(publish: bool = True, name: str | None = None, *refs: str | None) -> ModelRegistry:
    """The registry with the deployment key; ``name``/``refs`` confined first, the broker contacted last."""
    from streams.routing.watcher import ensure_registry_topic, registry_for  # heavy

    s = Settings()
    try:
        s.signing_key_bytes()  # no key on Kafka: one line, before any broker round trip
    except SigningKeyError as exc:
        raise _fail(exc) from None
    _confine(s, name, *refs)
    if publish:
        ensure_broker(s)
        require_broker(s)  # an unreachable broker: one line with the fix, in ~3 s, not librdkafka's retries
        ensure_registry_topic(s)
    return _run(lambda: registry_for(s, publish=publish))


def _run(action: Any) -> Any:
    from models.onnx_scorer import ModelIntegrityError  # heavy: onnxruntime, ~0.25 s: only this command needs it
    from online_learning.snapshots import SnapshotError  # heavy: river + pandas, ~0.7 s

    try:
        return action()
    except (RegistryError, ValidationError, FileNotFoundError, ValueError, ModelIntegrityError, SnapshotError,
            ModelRefError) as exc:
        # (UnsafePath, SigningKeyError and ModelRefError are ValueErrors)
        raise _fail(exc) from None


def _done(record: RegistryRecord) -> None:
    c = record.change
    what = " ".join(x for x in [c.kind, record.key.split(":", 1)[1], c.alias or "",
                                f"{c.previous} -> {c.version}" if c.previous else c.version or ""] if x)
    console.print(f"[green]✓[/] {what}  (record {record.seq}, published to {Settings().registry_topic})")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@models_app.command("list")
def list_models(name: Annotated[str | None, typer.Argument(help="One model; all when omitted.")] = None) -> None:
    """Registered versions with their aliases, sha256, metrics and training data."""
    registry = _registry(False, name)
    names = [name] if name else registry.state.model_names()
    table = Table("model", "version", "aliases", "sha256", "roc_auc", "training data", "registered")
    for n in names:
        state = _run(lambda n=n: registry.state.model(n))
        by_version: dict[str, list[str]] = {}
        for alias, version in state.aliases.items():
            by_version.setdefault(version, []).append(alias)
        for mv in state.versions.values():
            auc = mv.metrics.get("roc_auc")
            data = mv.training_data_version or mv.training_data_sha256[:12]
            table.add_row(n, mv.version, ", ".join(sorted(by_version.get(mv.version, []))), mv.sha256[:12],
                          f"{auc:.4f}" if auc is not None else "", data, _when(mv.registered_at_ms))
    console.print(table if names else "registry is empty: `streamscore models register DIR`")


def _ref(name: str, ref: str | None = None) -> ModelRef:
    """``NAME [REF]`` or one reference (models:/NAME/VERSION, models:/NAME@ALIAS, NAME@REF): exit 2 when neither."""
    return _run(lambda: parse_model_ref(name, ref))


@models_app.command()
def show(
    name: Annotated[str, typer.Argument(help="Model name, or a reference: models:/NAME/VERSION, "
                                        "models:/NAME@ALIAS, NAME@REF.")],
    ref: Annotated[str | None, typer.Argument(help="Version or alias (default: the champion).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Only the version, as JSON (for jq).")] = False,
) -> None:
    """One version in full (JSON) and the history of its model's aliases."""
    mref = _ref(name, ref)
    registry = _registry(False, mref.name, mref.target)
    state = _run(lambda: registry.state.model(mref.name))
    mv = _run(lambda: state.resolve(mref))
    if as_json:
        typer.echo(mv.model_dump_json(indent=2))  # not rich: pure JSON, whatever the terminal
        return
    console.print_json(mv.model_dump_json())
    for alias, history in state.alias_history.items():
        console.print(f"{alias}: {' -> '.join(history)}", highlight=False)


@models_app.command()
def register(
    model_dir: Annotated[Path, typer.Argument(help="Directory with model.onnx and model_card.json, or a River "
                                              "snapshot directory <snapshot_dir>/<learner>/vNNNNNN.")],
    alias: Annotated[list[str] | None, typer.Option(help="Aliases to point at it (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="River snapshots: model name (default "
                                             "STREAMSCORE_REGISTRY_MODEL). ONNX: from the card.")] = None,
    version: Annotated[str | None, typer.Option(help="River snapshots: version (required). ONNX: from the card.")
                       ] = None,
) -> None:
    """Register a model version; refused if its inputs differ from the feature schema, with the reason."""
    from online_learning.snapshots import META  # heavy: river + pandas, ~0.7 s

    if (model_dir / META).exists():
        s = Settings()
        if not (name or s.registry_model) or not version:
            raise _fail("a River snapshot needs --version (and --name or STREAMSCORE_REGISTRY_MODEL)")
        model = name or s.registry_model
        registry = _registry(True, model, version, *(alias or []))
        # one deployment key: the snapshot was signed with it by the learning owner
        _done(_run(lambda: registry.register_river(model_dir, model, version, alias or [], registry.key)))
        return
    if name or version:
        raise _fail("an ONNX model's name and version come from its model card")
    card = _run(lambda: ModelCard.load(model_dir))
    registry = _registry(True, card.name, card.version, *(alias or []))
    _done(_run(lambda: registry.register(model_dir, alias or [])))


@models_app.command()
def compose(
    name: str,
    version: str,
    spec: Annotated[str, typer.Argument(help='CompositeSpec JSON, e.g. {"kind": "weighted_average", "parts": '
                                        '[{"model": "demo-risk", "version": "1", "weight": 2}, '
                                        '{"model": "demo-risk", "version": "challenger"}]}')],
    alias: Annotated[list[str] | None, typer.Option(help="Aliases to point at it (repeatable).")] = None,
) -> None:
    """Register a composite (weighted_average, rule max/min, stacking) of registered versions, parts pinned."""
    from models.composite import CompositeSpec  # heavy: river + pandas, ~0.7 s

    parsed = _run(lambda: CompositeSpec.model_validate_json(spec))
    for part in parsed.parts:
        _confine(Settings(), part.model, part.version)
    registry = _registry(True, name, version, *(alias or []))
    _done(_run(lambda: registry.register_composite(name, version, parsed, alias or [])))


@models_app.command()
def promote(name: Annotated[str, typer.Argument(help="Model name, or a reference: models:/NAME/VERSION, "
                                                "models:/NAME@ALIAS, NAME@VERSION.")],
            version: Annotated[str | None, typer.Argument(help="Version or alias (omit with a reference).")] = None,
            alias: Annotated[str, typer.Option(help="Alias to move.")] = CHAMPION) -> None:
    """Make VERSION the champion (or --alias): running workers swap to it within seconds."""
    mref = _ref(name, version)
    if not mref.pinned:
        raise _fail(f"promote {name}: which version? give NAME VERSION, or models:/NAME/VERSION or "
                    "models:/NAME@ALIAS")
    registry = _registry(True, mref.name, mref.target, alias)
    _done(_run(lambda: registry.promote(str(mref), None, alias)))


@models_app.command()
def rollback(name: str, to: Annotated[str | None, typer.Option(help="Any registered version.")] = None,
             alias: Annotated[str, typer.Option(help="Alias to move back.")] = CHAMPION) -> None:
    """Move the champion (or --alias) back to the version it held before, or --to any version."""
    registry = _registry(True, name, alias, to)
    _done(_run(lambda: registry.rollback(name, alias, to)))


@models_app.command("alias")
def set_alias(name: str, alias: str, version: Annotated[str | None, typer.Argument()] = None,
              remove: Annotated[bool, typer.Option("--remove", help="Remove the alias.")] = False) -> None:
    """Point ALIAS (e.g. challenger) at VERSION, or --remove it."""
    if not remove and version is None:
        raise _fail("give a VERSION, or --remove")
    registry = _registry(True, name, alias, version)
    if remove:
        _done(_run(lambda: registry.unalias(name, alias)))
    else:
        _done(_run(lambda: registry.promote(name, version, alias)))


@models_app.command()
def route(
    topic: Annotated[str, typer.Argument(help="Input topic, or '*' for every topic without its own route.")],
    spec: Annotated[str | None, typer.Argument(help="Routing spec JSON (streams.routing.router.RouteSpec); "
                                               "omitted: show the current one.")] = None,
) -> None:
    """Show or set the routing policy of an input topic (single, ab, canary, shadow, bandit)."""
    from streams.routing.router import RouteSpec  # heavy: faust + onnxruntime, ~1.3 s: only this command needs it

    if spec is None:
        s = Settings()
        current = {**s.routes, **_registry(publish=False).state.routes()}.get(topic)
        console.print_json(data=current if current is not None else {"policy": "single", "version": CHAMPION})
        return
    parsed = _run(lambda: RouteSpec.model_validate_json(spec))
    model = parsed.model or Settings().registry_model
    if model is None:
        raise _fail('which model? set STREAMSCORE_REGISTRY_MODEL or "model" in the spec')
    registry = _registry(True, model, *parsed.refs())
    for ref in parsed.refs():  # refuse a route whose versions do not exist now, rather than in every worker
        _run(lambda ref=ref: registry.state.model(model).resolve(ref))
    _done(_run(lambda: registry.set_route(topic, parsed.model_dump(mode="json", exclude_defaults=True))))


@models_app.command()
def log(
    n: Annotated[int, typer.Option("-n", help="Newest records shown.")] = 20,
    lifecycle: Annotated[bool, typer.Option("--lifecycle", help="Also the closed loop's steps (request, dataset, "
                                            "candidate, shadow, gate, promoted/rejected) from the lifecycle topic.")
                         ] = False,
) -> None:
    """The registry change log (newest last); with --lifecycle, the retrain steps that led to each change."""
    table = Table("seq", "at (UTC)", "by", "key", "change", "detail")
    for r in list(read_log(_registry(publish=False).log_path))[-n:]:
        c = r.change
        detail = " ".join(x for x in [c.alias or "", f"{c.previous or '-'} -> {c.version}" if c.version else "",
                                      orjson.dumps(r.route).decode() if r.route else "", c.reason] if x)
        table.add_row(str(r.seq), _when(r.at_ms), r.by, r.key, c.kind, detail)
    console.print(table)
    if lifecycle:
        console.print("lifecycle (the closed loop, `streamscore retrain log`):", highlight=False)
        retrain_log(n)


@models_app.command()
def approve(name: str, version: str) -> None:
    """Approve NAME@VERSION in manual mode (STREAMSCORE_RETRAIN_APPROVAL=manual): the retrain service promotes it once
    its gate has passed (an approval is not a bypass). Same as `streamscore retrain approve`."""
    retrain_approve(name, version)


@models_app.command()
def sync() -> None:
    """Publish the latest record of every key to the control topic again (e.g. after a broker restart)."""
    count = _run(lambda: _registry().republish())
    console.print(f"[green]✓[/] {count} records published to {Settings().registry_topic}")


# --- diff --------------------------------------------------------------------------------------
def _raise_kafka_error(err: object) -> None:
    raise RuntimeError(f"reading the topic: {err}")


def _events_from_topic(s: Settings, topic: str, last: int) -> list[dict]:
    """The ``last`` newest messages of ``topic`` (by Kafka timestamp), decoded; undecodable ones skipped."""
    from confluent_kafka import TopicPartition


    consumer = clients.standalone_consumer(s.kafka, "streamscore-diff")
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ValueError(f"topic {topic!r} does not exist")
        assignment, remaining = [], set()
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                assignment.append(TopicPartition(topic, p, max(low, high - last)))
                remaining.add(p)
        consumer.assign(assignment)
        messages = []
        while remaining:
            messages.extend(clients.records(consumer, 1000, 1.0, on_eof=lambda m: remaining.discard(m.partition()),
                                            on_error=_raise_kafka_error))
    finally:
        consumer.close()
    messages.sort(key=lambda m: m.timestamp()[1])
    fmt = s.input_topics.get(topic, "auto")
    events = []
    for m in messages[-last:]:
        try:
            events.append(decode_feature_event(m.value(), fmt, s.max_payload_bytes).model_dump())
        except InvalidEvent:
            continue
    return events


def _events_from_dataset(s: Settings, ref: str) -> list[dict]:
    """Feature events of an archived dataset version (datastore.dataset); prediction rows are left out."""
    from datastore.dataset import load_version, version_rows  # heavy
    from datastore.storage import LocalStorage  # heavy: the archive and fastavro, ~0.4 s: only this command needs it

    if s.data_store_url:
        raise ValueError("only the local data_dir is supported for --data VERSION (data_store_url is set)")
    storage = LocalStorage(s.data_path)
    version = load_version(storage, ref)
    return [row["event"] for _seg, row in version_rows(storage, version) if row.get("event")]


@models_app.command()
def diff(
    versions: Annotated[list[str], typer.Argument(help="NAME A B (versions or aliases of NAME, e.g. demo-risk "
                                                  "champion challenger), or two references (models:/NAME/VERSION, "
                                                  "models:/NAME@ALIAS).", show_default=False)],
    data: Annotated[str | None, typer.Option(help="A JSON-lines file of feature events, or a dataset version id "
                                             "(streamscore data ...).")] = None,
    topic: Annotated[str | None, typer.Option(help="Read the newest --last messages of this input topic.")] = None,
    last: Annotated[int, typer.Option(help="With --topic: how many messages.")] = 1000,
    top: Annotated[int, typer.Option(help="Rows that differ most to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Score the same data with two versions: label agreement, mean/max score difference, rows that differ most."""
    from models.registry_diff import diff_scores, version_pair  # heavy: river + pandas, ~0.7 s

    if (data is None) == (topic is None):
        raise _fail("give exactly one of --data (file or dataset version) and --topic")
    s = Settings()
    ref_a, ref_b = _run(lambda: version_pair(versions))
    a, b = ref_a.target, ref_b.target
    registry = _registry(False, ref_a.name, a)
    _confine(s, ref_b.name, b)
    scorer_a = _run(lambda: registry.load_scorer(ref_a))
    scorer_b = _run(lambda: registry.load_scorer(ref_b))
    if topic is not None:
        require_broker(s)
        events = _run(lambda: _events_from_topic(s, topic, last))
    elif Path(data).is_file():
        events = _run(lambda: list(read_jsonl(Path(data))))
    else:
        events = _run(lambda: _events_from_dataset(s, data))
    report = _run(lambda: diff_scores(scorer_a, scorer_b, events, top=top))
    if as_json:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())  # pure JSON, for jq
        return
    console.print(f"{report.a} vs {report.b} on {report.n} rows ({report.skipped} skipped): label agreement "
                  f"[bold]{report.agreement:.2%}[/], |score diff| mean {report.mean_abs_diff:.4f} max "
                  f"{report.max_abs_diff:.4f}, mean shift {report.mean_diff:+.4f}")
    table = Table("event_id", f"score {a}", f"score {b}", "diff", f"label {a}", f"label {b}")
    for row in report.top:
        table.add_row(row.event_id, f"{row.score_a:.4f}", f"{row.score_b:.4f}", f"{row.diff:+.4f}",
                      row.label_a, row.label_b)
    console.print(table)
