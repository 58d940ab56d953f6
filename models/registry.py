"""Model registry: versions, aliases and routes in a local directory, with a compaction-safe change log.

Layout of the registry directory (``STREAMSCORE_REGISTRY_DIR``, default ``<state_dir>/registry``)::

    <root>/log.jsonl                       every change, appended under a file lock (the audit trail)
    <root>/models/<name>/<version>/        model.onnx + model_card.json (+ reference_profile.json), immutable;
                                           composite.json for a composite (models.composite);
                                           model.pkl + snapshot.json for a River snapshot (models.registry_river)

Each log record carries the *whole* state of one key after the change (``model:<name>`` or
``route:<input topic>``), not a delta. So the last record per key is the state: a compacted Kafka topic
(which keeps only the last record per key) and a full replay from the beginning give the same answer,
and re-publishing the log is idempotent (records are ordered by ``seq``; older ones are ignored).
Workers rebuild the state from the control topic (``streams/routing/watcher.py``); the CLI from the file.

A version must take exactly the feature schema's inputs, in order, and keep the classes of the versions
before it; ``register`` refuses anything else with the reason. The artifact is verified (sha256 of the
ONNX bytes = the card's, graph signature = the card's) by loading it with ``OnnxScorer`` before it is copied.

>>> import tempfile
>>> from models.train_demo import train_demo_model
>>> from models.demo import FEATURE_NAMES
>>> with tempfile.TemporaryDirectory() as d:
...     _ = train_demo_model(f"{d}/v1", seed=1, n=1500, version="1")
...     _ = train_demo_model(f"{d}/v2", seed=2, n=1500, version="2")
...     reg = ModelRegistry(f"{d}/registry", features=FEATURE_NAMES)
...     _ = reg.register(f"{d}/v1")            # the first version becomes champion
...     _ = reg.register(f"{d}/v2", aliases=["challenger"])
...     _ = reg.promote("demo-risk", "2")      # champion -> 2
...     before = reg.state.model("demo-risk").aliases["champion"]
...     _ = reg.rollback("demo-risk")          # champion -> 1 again
...     after = reg.state.model("demo-risk").aliases["champion"]
...     changes = [r.change.kind for r in read_log(reg.log_path)]
>>> before, after, changes
('2', '1', ['register', 'register', 'promote', 'rollback'])
"""

from __future__ import annotations

import fcntl
import getpass
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.card import CARD_FILENAME, ModelCard
from models.composite import CompositeScorer, CompositeSpec
from models.onnx_scorer import MODEL_FILENAME, OnnxScorer

if TYPE_CHECKING:
    from models.registry_river import RiverScorer

LOG_FILENAME = "log.jsonl"
COMPOSITE_FILENAME = "composite.json"
CHAMPION, CHALLENGER = "champion", "challenger"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

ChangeKind = Literal["register", "promote", "rollback", "alias", "unalias", "route", "canary_rollback"]


class RegistryError(ValueError):
    """A registry operation was refused; the message says why and what to do."""


class SignatureMismatch(RegistryError):
    """The model's inputs (or classes) do not match the feature schema (or the earlier versions)."""


class ModelVersion(BaseModel):
    """One registered, immutable model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    kind: Literal["onnx", "composite", "river"] = "onnx"
    sha256: str = Field(description="Of the ONNX bytes, the River snapshot's model.pkl, or a composite's canonical "
                        "spec (models.composite).")
    features: list[str] = Field(description="Input signature: feature names in model column order.")
    classes: list[str]
    metrics: dict[str, float] = Field(default_factory=dict)
    training_data_version: str | None = None
    training_data_sha256: str | None = Field(None, description="None for a composite (see its parts).")
    created_at: datetime = Field(description="When the model was trained (from its card), or composed.")
    registered_at_ms: int
    path: str = Field(description="Artifact directory, relative to the registry root.")
    composite: dict[str, Any] | None = Field(None, description="The CompositeSpec, parts pinned (kind composite).")


class ModelState(BaseModel):
    """Everything about one model name: its versions and aliases, each alias with its history for rollback."""

    model_config = ConfigDict(extra="forbid")

    name: str
    versions: dict[str, ModelVersion] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    alias_history: dict[str, list[str]] = Field(
        default_factory=dict, description="Versions each alias held, oldest first; the last is the current one."
    )

    def resolve(self, ref: str) -> ModelVersion:
        """A version by alias or version string (an alias wins when both exist)."""
        version = self.aliases.get(ref, ref)
        try:
            return self.versions[version]
        except KeyError:
            raise RegistryError(f"{self.name}: no version or alias {ref!r}; versions {sorted(self.versions)}, "
                                f"aliases {self.aliases}") from None


class Change(BaseModel):
    """What a log record changed, for people reading the history."""

    model_config = ConfigDict(extra="forbid")

    kind: ChangeKind
    version: str | None = None
    alias: str | None = None
    previous: str | None = None
    reason: str = ""


class RegistryRecord(BaseModel):
    """One change-log record: the full state of ``key`` after ``change``."""

    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1)
    key: str = Field(description="'model:<name>' or 'route:<input topic>'.")
    change: Change
    model: ModelState | None = None
    route: dict[str, Any] | None = Field(None, description="Routing spec (streams.routing.router.RouteSpec) as JSON.")
    at_ms: int
    by: str


class RegistryState:
    """Latest record per key, folded from records in any order (higher ``seq`` wins)."""

    def __init__(self, records: Iterable[RegistryRecord] = ()) -> None:
        self.records: dict[str, RegistryRecord] = {}
        self.seq = 0
        for record in records:
            self.apply(record)

    def apply(self, record: RegistryRecord) -> bool:
        """Fold one record in; False when it is not newer than what the key already holds."""
        current = self.records.get(record.key)
        if current is not None and current.seq >= record.seq:
            return False
        self.records[record.key] = record
        self.seq = max(self.seq, record.seq)
        return True

    def model(self, name: str) -> ModelState:
        record = self.records.get(f"model:{name}")
        if record is None or record.model is None:
            raise RegistryError(f"no model {name!r} in the registry; registered: {self.model_names()}")
        return record.model

    def model_names(self) -> list[str]:
        return sorted(r.model.name for r in self.records.values() if r.model is not None)

    def routes(self) -> dict[str, dict[str, Any]]:
        return {k.removeprefix("route:"): r.route for k, r in self.records.items() if r.route is not None}


def read_log(path: Path) -> Iterator[RegistryRecord]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield RegistryRecord.model_validate_json(line)


def check_signature(card: ModelCard, features: Sequence[str], classes: Sequence[str] | None = None) -> None:
    """Raise ``SignatureMismatch`` unless the card takes exactly ``features`` (in order) and has ``classes``."""
    _check_inputs(f"{card.name}@{card.version}", card.features, card.classes, features, classes)


def _check_inputs(what: str, got_features: Sequence[str], got_classes: Sequence[str], features: Sequence[str],
                  classes: Sequence[str] | None) -> None:
    got, want = list(got_features), list(features)
    if got != want:
        missing = [f for f in want if f not in got]
        extra = [f for f in got if f not in want]
        detail = f"missing {missing}, unexpected {extra}" if missing or extra else f"order {got} != {want}"
        raise SignatureMismatch(f"{what} inputs do not match the feature schema: {detail}. "
                                f"The schema is {want} (STREAMSCORE_REGISTRY_FEATURES)")
    if classes is not None and list(got_classes) != list(classes):
        raise SignatureMismatch(f"{what} classes {list(got_classes)} differ from the registered "
                                f"versions' {list(classes)}; routing between them would mix meanings")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class ModelRegistry:
    """The registry directory; every change is appended to the log and handed to ``publish`` (the topic)."""

    def __init__(self, root: str | Path, features: Sequence[str],
                 publish: Callable[[RegistryRecord], None] | None = None) -> None:
        self.root = Path(root)
        self.features = list(features)
        self.publish = publish
        self.log_path = self.root / LOG_FILENAME
        self.state = RegistryState(read_log(self.log_path))

    # --- reading ------------------------------------------------------------------------------
    def reload(self) -> RegistryState:
        self.state = RegistryState(read_log(self.log_path))
        return self.state

    def artifact_dir(self, mv: ModelVersion) -> Path:
        return self.root / mv.path

    def load_scorer(self, name: str, ref: str = CHAMPION) -> OnnxScorer | CompositeScorer | RiverScorer:
        return load_version(self.root, self.state.model(name).resolve(ref))

    # --- changes ------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (CLI calls, workers rolling a canary back) and re-read what others appended."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.reload()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, key: str, change: Change, model: ModelState | None = None,
                route: dict[str, Any] | None = None) -> RegistryRecord:
        record = RegistryRecord(seq=self.state.seq + 1, key=key, change=change, model=model, route=route,
                                at_ms=time.time_ns() // 1_000_000, by=_who())
        with self.log_path.open("ab") as f:
            f.write(record.model_dump_json().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.state.apply(record)
        if self.publish is not None:
            self.publish(record)
        return record

    def register(self, model_dir: str | Path, aliases: Sequence[str] = ()) -> RegistryRecord:
        """Verify and copy a model directory (model.onnx + model_card.json) in as ``<card name>@<card version>``.

        The first version of a name also becomes ``champion``. Registering the same bytes again is refused.
        """
        src = Path(model_dir)
        scorer = OnnxScorer.from_dir(src)  # sha256 of the bytes vs the card, graph vs the card
        card = scorer.card
        for alias in aliases:
            _check_name(alias, "alias")
        _check_name(card.name, "model name")
        _check_name(card.version, "version")
        with self._locked():
            key = f"model:{card.name}"
            record = self.state.records.get(key)
            state = record.model.model_copy(deep=True) if record and record.model else ModelState(name=card.name)
            earlier = next(iter(state.versions.values()), None)
            check_signature(card, self.features, earlier.classes if earlier else None)
            if card.version in state.versions:
                raise RegistryError(f"{card.name}@{card.version} is already registered "
                                    f"(sha256 {state.versions[card.version].sha256[:12]}); versions are immutable")
            rel = Path("models") / card.name / card.version
            dest = self.root / rel
            if dest.exists():  # left by a register that failed before its log record: not referenced
                shutil.rmtree(dest)
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in src.iterdir():
                if f.is_file() and not f.name.endswith(".tmp"):
                    shutil.copy2(f, tmp / f.name)
            load_version_dir(tmp, card.onnx_sha256)  # what landed is what was verified
            os.replace(tmp, dest)
            state.versions[card.version] = ModelVersion(
                name=card.name, version=card.version, sha256=card.onnx_sha256, features=list(card.features),
                classes=list(card.classes), metrics=dict(card.metrics), created_at=card.created_at,
                training_data_version=card.training_data_version, training_data_sha256=card.training_data_sha256,
                registered_at_ms=time.time_ns() // 1_000_000, path=str(rel),
            )
            for alias in ([CHAMPION] if earlier is None and CHAMPION not in aliases else []) + list(aliases):
                _point(state, alias, card.version)
            return self._append(key, Change(kind="register", version=card.version), model=state)

    def register_river(self, snapshot_dir: str | Path, name: str, version: str, aliases: Sequence[str] = (),
                       hmac_key: str | None = None) -> RegistryRecord:
        """Register a River snapshot (``<snapshot_dir>/<learner>/vNNNNNN``) as ``name@version``, frozen."""
        from models.registry_river import flat_metrics, load_river_dir, read_snapshot

        for value, what in [(name, "model name"), (version, "version"), *((a, "alias") for a in aliases)]:
            _check_name(value, what)
        src = Path(snapshot_dir)
        meta, _data = read_snapshot(src, hmac_key)  # sha256 (and HMAC) verified before anything is copied
        with self._locked():
            key = f"model:{name}"
            record = self.state.records.get(key)
            state = record.model.model_copy(deep=True) if record and record.model else ModelState(name=name)
            earlier = next(iter(state.versions.values()), None)
            _check_inputs(f"{name}@{version} (River {meta.learner} v{meta.version})", meta.feature_names,
                          meta.classes, self.features, earlier.classes if earlier else None)
            if version in state.versions:
                raise RegistryError(f"{name}@{version} is already registered; versions are immutable")
            rel = Path("models") / name / version
            dest, tmp = self.root / rel, self.root / rel.with_name(version + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(dest, ignore_errors=True)  # left by a register that failed before its log record
            shutil.copytree(src, tmp)
            load_river_dir(tmp, meta.sha256, name, version)  # what landed loads and is what was verified
            os.replace(tmp, dest)
            state.versions[version] = ModelVersion(
                name=name, version=version, kind="river", sha256=meta.sha256, features=list(meta.feature_names),
                classes=list(meta.classes), metrics=flat_metrics(meta),
                training_data_version=f"River {meta.learner} snapshot v{meta.version}: {meta.learned_total} labels, "
                f"resume at {[f'{o.topic}[{o.partition}]@{o.offset}' for o in meta.next_offsets]}",
                created_at=datetime.fromtimestamp(meta.created_at / 1000, timezone.utc),
                registered_at_ms=time.time_ns() // 1_000_000, path=str(rel),
            )
            for alias in ([CHAMPION] if earlier is None and CHAMPION not in aliases else []) + list(aliases):
                _point(state, alias, version)
            return self._append(key, Change(kind="register", version=version, reason=f"River {meta.learner}"),
                                model=state)

    def register_composite(self, name: str, version: str, spec: CompositeSpec,
                           aliases: Sequence[str] = ()) -> RegistryRecord:
        """Register a composite of registered ONNX versions; parts are pinned to their version and sha256 now."""
        for value, what in [(name, "model name"), (version, "version"), *((a, "alias") for a in aliases)]:
            _check_name(value, what)
        with self._locked():
            pinned, parts = [], []
            for part in spec.parts:
                mv = self.state.model(part.model).resolve(part.version)
                if mv.kind != "onnx":
                    raise RegistryError(f"part {part.model}@{mv.version} is a {mv.kind}; parts must be ONNX versions")
                pinned.append(part.model_copy(update={"version": mv.version, "sha256": mv.sha256}))
                parts.append(mv)
            spec = spec.model_copy(update={"parts": pinned})
            CompositeScorer(name, version, spec, [load_version(self.root, mv) for mv in parts])  # loads and agrees
            key = f"model:{name}"
            record = self.state.records.get(key)
            state = record.model.model_copy(deep=True) if record and record.model else ModelState(name=name)
            earlier = next(iter(state.versions.values()), None)
            if parts[0].features != self.features:
                raise SignatureMismatch(f"composite parts take {parts[0].features}, the feature schema is "
                                        f"{self.features}")
            if earlier is not None and earlier.classes != parts[0].classes:
                raise SignatureMismatch(f"composite classes {parts[0].classes} differ from {name}'s {earlier.classes}")
            if version in state.versions:
                raise RegistryError(f"{name}@{version} is already registered; versions are immutable")
            rel = Path("models") / name / version
            (self.root / rel).mkdir(parents=True, exist_ok=True)
            (self.root / rel / COMPOSITE_FILENAME).write_text(spec.model_dump_json(indent=2) + "\n")  # for people
            now_ms = time.time_ns() // 1_000_000
            state.versions[version] = ModelVersion(
                name=name, version=version, kind="composite", sha256=spec.sha256(), features=list(parts[0].features),
                classes=list(parts[0].classes), created_at=datetime.fromtimestamp(now_ms / 1000, timezone.utc),
                training_data_version="; ".join(f"{p.name}@{p.version}: {p.training_data_version}" for p in parts),
                registered_at_ms=now_ms, path=str(rel), composite=spec.model_dump(mode="json"),
            )
            for alias in ([CHAMPION] if earlier is None and CHAMPION not in aliases else []) + list(aliases):
                _point(state, alias, version)
            return self._append(key, Change(kind="register", version=version, reason=f"composite {spec.kind}"),
                                model=state)

    def promote(self, name: str, version: str, alias: str = CHAMPION) -> RegistryRecord:
        """Point ``alias`` (champion by default) at ``version`` (a version or another alias)."""
        _check_name(alias, "alias")
        with self._locked():
            state = self.state.model(name).model_copy(deep=True)
            target = state.resolve(version).version
            previous = state.aliases.get(alias)
            if previous == target:
                raise RegistryError(f"{name}: {alias} already is {target}")
            _point(state, alias, target)
            kind: ChangeKind = "promote" if alias == CHAMPION else "alias"
            return self._append(f"model:{name}", Change(kind=kind, version=target, alias=alias, previous=previous),
                                model=state)

    def rollback(self, name: str, alias: str = CHAMPION, to: str | None = None) -> RegistryRecord:
        """Move ``alias`` back: to the version it held before (default), or to any registered version ``to``."""
        with self._locked():
            state = self.state.model(name).model_copy(deep=True)
            history = state.alias_history.get(alias, [])
            current = state.aliases.get(alias)
            if current is None:
                raise RegistryError(f"{name}: alias {alias!r} is not set; aliases {state.aliases}")
            if to is None:
                if len(history) < 2:
                    raise RegistryError(f"{name}: {alias} has no earlier version to roll back to (history {history})")
                history.pop()
                target = history[-1]
            else:
                target = state.resolve(to).version
                if target == current:
                    raise RegistryError(f"{name}: {alias} already is {target}")
                if target in history:  # back to that point of the history: later promotions are undone
                    del history[len(history) - history[::-1].index(target):]
                else:
                    history.append(target)
            state.aliases[alias] = target
            state.alias_history[alias] = history
            return self._append(f"model:{name}", Change(kind="rollback", version=target, alias=alias,
                                                        previous=current), model=state)

    def unalias(self, name: str, alias: str) -> RegistryRecord:
        if alias == CHAMPION:
            raise RegistryError("champion cannot be removed: promote or roll back instead")
        with self._locked():
            state = self.state.model(name).model_copy(deep=True)
            previous = state.aliases.pop(alias, None)
            if previous is None:
                raise RegistryError(f"{name}: alias {alias!r} is not set; aliases {state.aliases}")
            state.alias_history.pop(alias, None)
            return self._append(f"model:{name}", Change(kind="unalias", alias=alias, previous=previous), model=state)

    def set_route(self, topic: str, route: dict[str, Any], kind: ChangeKind = "route", reason: str = "",
                  unless: Callable[[dict[str, Any] | None], bool] | None = None) -> RegistryRecord | None:
        """Record the routing spec of an input topic (validated by the caller, see ``streams.routing.router``).

        ``unless(current_route)`` is evaluated under the lock: when true nothing is written (e.g. another
        worker already rolled the same canary back).
        """
        with self._locked():
            current = self.state.routes().get(topic)
            if unless is not None and unless(current):
                return None
            return self._append(f"route:{topic}", Change(kind=kind, reason=reason), route=route)

    def republish(self) -> int:
        """Hand the latest record of every key to ``publish`` again (e.g. to a fresh, empty broker)."""
        if self.publish is None:
            raise RegistryError("no control topic to publish to")
        records = sorted(self.reload().records.values(), key=lambda r: r.seq)
        for record in records:
            self.publish(record)
        return len(records)


def _point(state: ModelState, alias: str, version: str) -> None:
    state.aliases[alias] = version
    state.alias_history.setdefault(alias, []).append(version)


def _check_name(value: str, what: str) -> None:
    if not _NAME.match(value):
        raise RegistryError(f"invalid {what} {value!r}: letters, digits, '.', '_', '-' (at most 100)")


def load_version_dir(path: Path, sha256: str) -> OnnxScorer:
    scorer = OnnxScorer.from_dir(path)
    if scorer.sha256 != sha256:
        raise RegistryError(f"{path}: model sha256 {scorer.sha256} is not the registered {sha256}")
    return scorer


def load_version(root: str | Path, mv: ModelVersion) -> OnnxScorer | CompositeScorer | RiverScorer:
    """Load a registered version from the registry directory, verifying it is the registered artifact."""
    if mv.kind == "river":
        from models.registry_river import load_river_dir

        return load_river_dir(Path(root) / mv.path, mv.sha256, mv.name, mv.version)
    if mv.kind == "composite":
        spec = CompositeSpec.model_validate(mv.composite)
        if spec.sha256() != mv.sha256:
            raise RegistryError(f"{mv.name}@{mv.version}: composite spec does not match its sha256")
        parts = [load_version_dir(Path(root) / "models" / p.model / p.version, p.sha256 or "") for p in spec.parts]
        return CompositeScorer(mv.name, mv.version, spec, parts)
    path = Path(root) / mv.path
    if not (path / CARD_FILENAME).exists() or not (path / MODEL_FILENAME).exists():
        raise RegistryError(f"{mv.name}@{mv.version}: artifact missing at {path}; the registry directory must be "
                            "shared by every worker and the CLI")
    return load_version_dir(path, mv.sha256)
