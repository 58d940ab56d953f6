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

Neither is trusted as it is read. Every record is signed with the deployment key (``models.signing``)
and folded only through ``RegistryFollower``, which refuses (``RejectedRecord``, one line, kept in
``rejected`` for /registry and health) a record that is unsigned or mis-signed, out of order (a ``seq``
must be the next one; a gap is closed only from the signed records of ``log.jsonl``, never adopted on
its own), whose artifact path is not ``models/<name>/<version>`` inside the store, that changes or
drops a registered version, that brings a version no register record introduced, or (in workers)
whose artifacts are missing or not the registered sha256. A refused record changes nothing: the
worker keeps what it has. Promote and rollback re-verify the target's artifact before publishing.

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

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.card import CARD_FILENAME, ModelCard
from models.composite import CompositeScorer, CompositeSpec
from models.onnx_scorer import MODEL_FILENAME, OnnxScorer
from models.signing import SigningKeyError, resolve_key, sign, verify
from models.store_paths import UnsafePath, confined
from schemas.model_refs import (
    CHAMPION,
    MODELS_SCHEME,
    NAME_PATTERN,
    ModelRef,
    ModelRefError,
    is_model_ref,
    model_name,
    parse_model_ref,
)

if TYPE_CHECKING:
    from models.registry_river import RiverScorer

LOG_FILENAME = "log.jsonl"
KEY_FILENAME = ".signing-key"
RIVER_ARTIFACT, RIVER_META = "model.pkl", "snapshot.json"  # as online_learning.snapshots (not imported: River)
COMPOSITE_FILENAME = "composite.json"
CHALLENGER = "challenger"
_NAME = NAME_PATTERN  # names, versions and aliases: what a reference (schemas.model_refs) can spell

ChangeKind = Literal["register", "promote", "rollback", "alias", "unalias", "route", "canary_rollback"]


class RegistryError(ValueError):
    """A registry operation was refused; the message says why and what to do."""


class BadModelRef(RegistryError, ModelRefError):
    """A model reference none of the accepted forms (``schemas.model_refs``): a user's mistake, not a state."""


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

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """A version by alias or version string (an alias wins when both exist), or by a reference to this model.

        References (``schemas.model_refs``): ``models:/NAME/VERSION`` is exactly that version,
        ``models:/NAME@ALIAS`` exactly that alias, ``models:/NAME`` the champion, ``NAME@REF`` as a plain ref.
        """
        if isinstance(ref, str) and not is_model_ref(ref):
            mref = ModelRef(self.name, ref=ref)
        else:
            mref = _parse(self.name, ref)  # refused when it names another model
        if mref.version is not None:
            if mref.version not in self.versions:
                raise RegistryError(f"{self.name}: no version {mref.version!r}; versions {sorted(self.versions)} "
                                    f"(an alias is written {MODELS_SCHEME}{self.name}@ALIAS)")
            return self.versions[mref.version]
        if mref.ref is None:  # an exact alias, or the champion
            alias = mref.target
            if alias not in self.aliases:
                raise RegistryError(f"{self.name}: no alias {alias!r}; aliases {self.aliases} (a version is "
                                    f"written {MODELS_SCHEME}{self.name}/VERSION)")
            return self.versions[self.aliases[alias]]
        version = self.aliases.get(mref.ref, mref.ref)
        try:
            return self.versions[version]
        except KeyError:
            raise RegistryError(f"{self.name}: no version or alias {mref.ref!r}; versions {sorted(self.versions)}, "
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
    sig: str | None = Field(None, description="HMAC-SHA256 of the record's JSON without sig, under the deployment "
                            "key (models.signing); records without a valid one are refused.")


def record_payload(record: RegistryRecord) -> bytes:
    """The bytes a record's signature covers: its JSON without ``sig``."""
    return record.model_dump_json(exclude={"sig"}).encode()


def sign_record(record: RegistryRecord, key: bytes) -> RegistryRecord:
    """``record`` with its signature, in the exact form readers parse back (so they recompute the same bytes)."""
    canonical = RegistryRecord.model_validate_json(record_payload(record))
    return canonical.model_copy(update={"sig": sign(key, record_payload(canonical))})


class RegistryState:
    """Latest record per key, folded from records in any order (higher ``seq`` wins).

    Trusts what it is given: records from a topic or a file go through ``RegistryFollower`` first.
    """

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
        """The model ``name`` (or ``models:/NAME``); a reference to one version is refused here."""
        name = _model_name(name)
        record = self.records.get(f"model:{name}")
        if record is None or record.model is None:
            raise RegistryError(f"no model {name!r} in the registry; registered: {self.model_names()}")
        return record.model

    def resolve(self, name: str | ModelRef, ref: str | ModelRef | None = None) -> ModelVersion:
        """The version a reference names: ``name`` in any form of ``schemas.model_refs``, ``ref`` given separately.

        ``resolve("demo-risk")`` and ``resolve("models:/demo-risk")`` are the champion; ``resolve("demo-risk",
        "2")``, ``resolve("demo-risk@2")`` and ``resolve("models:/demo-risk/2")`` version 2 (the last: only a
        version); ``resolve("models:/demo-risk@challenger")`` only an alias.
        """
        mref = _parse(name, ref)
        return self.model(mref.name).resolve(mref)

    def model_names(self) -> list[str]:
        return sorted(r.model.name for r in self.records.values() if r.model is not None)

    def routes(self) -> dict[str, dict[str, Any]]:
        return {k.removeprefix("route:"): r.route for k, r in self.records.items() if r.route is not None}


def _parse(text: str | ModelRef, ref: str | ModelRef | None = None) -> ModelRef:
    """``parse_model_ref``, refusing with a ``RegistryError`` (what the CLI and the watcher handle)."""
    try:
        return text.with_ref(ref) if isinstance(text, ModelRef) else parse_model_ref(text, ref)
    except ModelRefError as exc:
        raise BadModelRef(str(exc)) from None


def _model_name(text: str) -> str:
    """``NAME`` or ``models:/NAME``: the model only (a version or alias in it is refused, not ignored).

    A plain name is returned as it is, for the caller's own check (``_check_name``, or "no model ...").
    """
    if not is_model_ref(text):
        return text
    try:
        return model_name(text)
    except ModelRefError as exc:
        raise BadModelRef(str(exc)) from None


def read_log(path: Path) -> Iterator[RegistryRecord]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield RegistryRecord.model_validate_json(line)


def _log_lines(path: Path) -> Iterator[bytes]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield line


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}"


class RejectedRecord(RegistryError):
    """A registry record that was not applied; ``reason`` is one line, ``str()`` also names the record."""

    def __init__(self, reason: str, *, seq: int | None = None, key: str | None = None,
                 offset: int | None = None) -> None:
        self.reason, self.seq, self.key, self.offset = reason, seq, key, offset
        where = " ".join(x for x in [f"record {seq}" if seq is not None else "record",
                                     f"({key})" if key else "", f"at offset {offset}" if offset is not None else ""]
                         if x)
        super().__init__(f"{where} rejected: {reason}")

    def rejection(self) -> Rejection:
        return Rejection(self.reason, self.seq, self.key, self.offset, time.time_ns() // 1_000_000)


@dataclass(frozen=True)
class Rejection:
    """A refused record as /registry and health show it."""

    reason: str
    seq: int | None = None
    key: str | None = None
    offset: int | None = None
    at_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AppliedRecord:
    record: RegistryRecord
    changed: bool  # False: a re-published record this state already holds (``models sync``, a replay)
    filled: tuple[int, ...] = ()  # seqs folded from the signed registry log first, to close a gap


class RegistryFollower:
    """A ``RegistryState`` built only from authentic, in-order, valid records (the control topic, or the log).

    ``apply_record(raw)`` returns an ``AppliedRecord`` or raises ``RejectedRecord``; either way the state
    holds only what was accepted, and every refusal is kept in ``rejected`` (newest ``keep``).

    * Authenticity: the record's ``sig`` must verify under the deployment key.
    * Order: ``seq`` must be the next one. A record already taken (same bytes) is a no-op; a jump over
      missing seqs (a compacted topic, a re-published log) is closed only from the signed records of the
      registry log, and only when the log holds the same record at that seq; otherwise it is refused.
      An authentic record takes its seq even when refused for its content, so writer and readers agree
      on the next seq; it is retried by ``retry_rejected`` until a later record of its key supersedes it.
    * Content: ``validate``.
    """

    def __init__(self, root: str | Path, key: bytes, *, verify_artifacts: bool = True, log_path: Path | None = None,
                 keep: int = 100) -> None:
        self.root = Path(root)
        self.key = key
        self.verify_artifacts = verify_artifacts
        self.log_path = log_path if log_path is not None else self.root / LOG_FILENAME
        self.state = RegistryState()
        self.seq = 0  # the last authentic seq taken in order
        self.rejected: deque[Rejection] = deque(maxlen=keep)
        self.rejected_total = 0
        self._digests: dict[int, str] = {}
        self._registered: dict[tuple[str, str], ModelVersion] = {}  # versions introduced by authentic registers
        self._pending: dict[str, RegistryRecord] = {}  # authentic records refused for their content, by key
        self._log: tuple[tuple[int, int], dict[int, list[tuple[str, RegistryRecord]]]] | None = None

    # --- applying -----------------------------------------------------------------------------
    def apply_record(self, raw: bytes | str | RegistryRecord, offset: int | None = None) -> AppliedRecord:
        try:
            record = raw if isinstance(raw, RegistryRecord) else RegistryRecord.model_validate_json(raw)
        except ValidationError as exc:
            raise self._note(RejectedRecord(f"unreadable: {_first_error(exc)}", offset=offset)) from None
        digest = self._authenticate(record, offset)
        if record.seq <= self.seq:
            if self._digests.get(record.seq) == digest:
                return AppliedRecord(record, changed=False)
            raise self._note(RejectedRecord(f"seq {record.seq} is already taken by another record (this worker is "
                                            f"at {self.seq}); the first one stands", seq=record.seq, key=record.key,
                                            offset=offset))
        filled = self._fill_gap(record, digest, offset) if record.seq > self.seq + 1 else ()
        return self._take(record, digest, offset, filled)

    def retry_rejected(self) -> list[AppliedRecord]:
        """Re-validate authentic records refused for their content (e.g. an artifact not yet on a shared volume)."""
        applied = []
        for key, record in list(self._pending.items()):
            current = self.state.records.get(key)
            if current is not None and current.seq >= record.seq:
                del self._pending[key]
                continue
            try:
                self.validate(record)
            except RejectedRecord:
                continue
            self._adopt(record)
            applied.append(AppliedRecord(record, changed=True))
        return applied

    def status(self) -> dict[str, Any]:
        return {"seq": self.seq, "rejected_total": self.rejected_total,
                "rejected": [r.as_dict() for r in self.rejected],
                "pending": sorted(f"{r.key}@{r.seq}" for r in self._pending.values())}

    def _note(self, exc: RejectedRecord) -> RejectedRecord:
        self.rejected.append(exc.rejection())
        self.rejected_total += 1
        return exc

    def _authenticate(self, record: RegistryRecord, offset: int | None) -> str:
        payload = record_payload(record)
        if record.sig is None:
            raise self._note(RejectedRecord("unsigned; registry records must be signed with the deployment key",
                                            seq=record.seq, key=record.key, offset=offset))
        if not verify(self.key, payload, record.sig):
            raise self._note(RejectedRecord("signature does not verify with the deployment key", seq=record.seq,
                                            key=record.key, offset=offset))
        return hashlib.sha256(payload).hexdigest()

    def _read_log(self) -> dict[int, list[tuple[str, RegistryRecord]]]:
        """Signed records of the registry log by seq (re-read only when the file changed)."""
        try:
            info = self.log_path.stat()
        except FileNotFoundError:
            return {}
        stamp = (info.st_size, info.st_mtime_ns)
        if self._log is None or self._log[0] != stamp:
            by_seq: dict[int, list[tuple[str, RegistryRecord]]] = {}
            for line in _log_lines(self.log_path):
                try:
                    record = RegistryRecord.model_validate_json(line)
                except ValidationError:
                    continue
                payload = record_payload(record)
                if verify(self.key, payload, record.sig):
                    entries = by_seq.setdefault(record.seq, [])
                    digest = hashlib.sha256(payload).hexdigest()
                    if all(d != digest for d, _ in entries):
                        entries.append((digest, record))
            self._log = (stamp, by_seq)
        return self._log[1]

    def _fill_gap(self, record: RegistryRecord, digest: str, offset: int | None) -> tuple[int, ...]:
        by_seq = self._read_log()
        first, last = self.seq + 1, record.seq - 1
        if last - first + 1 > len(by_seq) or any(len(by_seq.get(s, ())) != 1 for s in range(first, last + 1)):
            raise self._note(RejectedRecord(
                f"seq jumps from {self.seq} to {record.seq}: records {first}..{last} are not (unambiguously) in the "
                f"registry log {self.log_path}; not adopted", seq=record.seq, key=record.key, offset=offset))
        if [d for d, _ in by_seq.get(record.seq, ())] != [digest]:
            raise self._note(RejectedRecord(
                f"seq jumps from {self.seq} to {record.seq} and the registry log {self.log_path} does not hold this "
                "record at that seq; not adopted", seq=record.seq, key=record.key, offset=offset))
        for seq in range(first, last + 1):
            (d, missing), = by_seq[seq]
            with contextlib.suppress(RejectedRecord):  # noted; the gap is closed either way
                self._take(missing, d, None, ())
        return tuple(range(first, last + 1))

    def _take(self, record: RegistryRecord, digest: str, offset: int | None,
              filled: tuple[int, ...]) -> AppliedRecord:
        self.seq = record.seq
        self._digests[record.seq] = digest
        if record.change.kind == "register" and record.model and record.change.version in record.model.versions:
            self._registered[(record.model.name, record.change.version)] = record.model.versions[record.change.version]
        try:
            self.validate(record)
        except RejectedRecord as exc:
            self._pending[record.key] = record
            raise self._note(RejectedRecord(exc.reason, seq=record.seq, key=record.key, offset=offset)) from None
        self._adopt(record)
        return AppliedRecord(record, changed=True, filled=filled)

    def _adopt(self, record: RegistryRecord) -> None:
        self.state.apply(record)
        pending = self._pending.get(record.key)
        if pending is not None and pending.seq <= record.seq:
            del self._pending[record.key]

    # --- validating ---------------------------------------------------------------------------
    def validate(self, record: RegistryRecord) -> None:
        """``RejectedRecord`` unless ``record`` is a valid next state of its key (signature and order aside)."""
        def fail(reason: str) -> RejectedRecord:
            return RejectedRecord(reason, seq=record.seq, key=record.key)

        prefix, _, name = record.key.partition(":")
        change = record.change
        if prefix == "route":
            if not name or record.route is None or record.model is not None:
                raise fail("a route record names a topic and carries a route, nothing else")
            if change.kind not in ("route", "canary_rollback"):
                raise fail(f"a route record cannot be a {change.kind}")
            return
        if prefix != "model":
            raise fail(f"unknown key {record.key!r}; keys are model:<name> or route:<topic>")
        state = record.model
        if state is None or record.route is not None or state.name != name:
            raise fail("a model record carries the state of the model its key names, nothing else")
        if change.kind in ("route", "canary_rollback"):
            raise fail(f"a model record cannot be a {change.kind}")
        try:
            _check_name(name, "model name")
            for alias in state.aliases:
                _check_name(alias, "alias")
        except RegistryError as exc:
            raise fail(str(exc)) from None
        prior = self.state.records.get(record.key)
        before = prior.model.versions if prior is not None and prior.model is not None else {}
        removed = sorted(set(before) - set(state.versions))
        if removed:
            raise fail(f"drops registered versions {removed}; versions are immutable")
        new: list[ModelVersion] = []
        for version, mv in state.versions.items():
            if (mv.name, mv.version) != (name, version):
                raise fail(f"version entry {version!r} describes {mv.name}@{mv.version}")
            try:
                _check_name(version, "version")
                _check_path(mv)
                if self.verify_artifacts:  # symlinks out of the store (the CLI meets them at promote and load)
                    artifact_dir(self.root, mv)
            except RegistryError as exc:
                raise fail(str(exc)) from None
            if version not in before:
                new.append(mv)
            elif before[version] != mv:
                raise fail(f"changes {name}@{version} (registered with sha256 {before[version].sha256[:12]}); "
                           "registered versions are immutable")
        for mv in new:
            if change.kind == "register" and mv.version == change.version:
                continue
            if self._registered.get((name, mv.version)) != mv:
                raise fail(f"{change.kind} brings {name}@{mv.version}, which no register record introduced")
        if change.kind == "register" and change.version not in {mv.version for mv in new}:
            raise fail(f"registers {change.version!r}, which is not a new version of {name}")
        dangling = sorted({v for v in [*state.aliases.values(), *(v for h in state.alias_history.values() for v in h)]
                           if v not in state.versions})
        if dangling:
            raise fail(f"aliases point at unregistered versions {dangling}")
        if change.kind in ("promote", "alias", "rollback") and (
                change.alias is None or state.aliases.get(change.alias) != change.version):
            raise fail(f"{change.kind} of {change.alias} to {change.version}, but the state has "
                       f"{change.alias} -> {state.aliases.get(change.alias or '')}")
        if change.kind == "unalias" and (change.alias is None or change.alias in state.aliases):
            raise fail(f"unalias of {change.alias}, which the state still has")
        if self.verify_artifacts:
            served = {v: state.versions[v] for v in state.aliases.values()}
            merged = RegistryState(self.state.records.values())
            merged.apply(record)
            for mv in {**{mv.version: mv for mv in new}, **served}.values():
                try:
                    verify_artifact(self.root, mv, merged)
                except RegistryError as exc:
                    raise fail(str(exc)) from None


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
                 publish: Callable[[RegistryRecord], None] | None = None, *, key: str | bytes | None = None,
                 key_file: str | Path | None = None, create_key: bool = True) -> None:
        """``key``/``key_file``/``create_key``: the signing key, as ``models.signing.resolve_key`` (default file
        ``<root>/.signing-key``, generated on first use only when ``create_key``)."""
        self.root = Path(root)
        self.features = list(features)
        self.publish = publish
        self.log_path = self.root / LOG_FILENAME
        self._key_args = (key, Path(key_file) if key_file is not None else None, create_key)
        self._key: bytes | None = None
        self.reload()

    @property
    def key(self) -> bytes:
        if self._key is None:
            value, file, create = self._key_args
            try:
                self._key = resolve_key(value, file, default_file=self.root / KEY_FILENAME, create=create)
            except SigningKeyError as exc:
                raise RegistryError(f"registry {self.root}: {exc}") from None
        return self._key

    # --- reading ------------------------------------------------------------------------------
    def reload(self) -> RegistryState:
        """Fold the log file through a ``RegistryFollower`` (signatures and order; artifacts at load time)."""
        follower = RegistryFollower(self.root, self.key if self.log_path.exists() else b"", verify_artifacts=False,
                                    log_path=self.log_path)
        for line in _log_lines(self.log_path):
            with contextlib.suppress(RejectedRecord):  # kept in follower.rejected
                follower.apply_record(line)
        self.follower = follower
        self.state = follower.state
        return self.state

    @property
    def rejected(self) -> list[Rejection]:
        """Log records refused on the last reload (unsigned, out of order, invalid), oldest first."""
        return list(self.follower.rejected)

    def artifact_dir(self, mv: ModelVersion) -> Path:
        return artifact_dir(self.root, mv)

    def resolve(self, name: str | ModelRef, ref: str | ModelRef | None = None) -> ModelVersion:
        """The registered version a reference names (``RegistryState.resolve``: any form of ``schemas.model_refs``)."""
        return self.state.resolve(name, ref)

    def load_scorer(self, name: str | ModelRef, ref: str | ModelRef | None = None,
                    ) -> OnnxScorer | CompositeScorer | RiverScorer:
        """Load what a reference names: ``load_scorer("models:/demo-risk@challenger")``, ``("demo-risk", "2")``, ...

        No ref: the champion.
        """
        return load_version(self.root, self.resolve(name, ref))

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
        self.follower.key = self.key  # (reload skips resolving the key while there is no log to verify)
        record = sign_record(RegistryRecord(seq=self.follower.seq + 1, key=key, change=change, model=model,
                                            route=route, at_ms=time.time_ns() // 1_000_000, by=_who()), self.key)
        try:
            self.follower.validate(record)
        except RejectedRecord as exc:  # never publish what every worker would refuse
            raise RegistryError(f"refusing to write {key}: {exc.reason}") from None
        with self.log_path.open("ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                f.write(b"\n")  # a line cut short by a crash stays one bad line instead of swallowing this one
            f.write(record.model_dump_json().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.follower.apply_record(record)
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
            dest = _store_dir(self.root, card.name, card.version)
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
                       hmac_key: str | bytes | None = None, *, snapshot_key_file: str | Path | None = None,
                       create_snapshot_key: bool = True) -> RegistryRecord:
        """Register a River snapshot (``<snapshot_dir>/<learner>/vNNNNNN``) as ``name@version``, frozen.

        The snapshot must verify under the snapshot store's key (``hmac_key``, else ``snapshot_key_file``,
        else ``<snapshot_dir>/.signing-key``); from then on the signed record pins its sha256.
        """
        from models.registry_river import flat_metrics, load_river_dir, read_snapshot  # river+pandas: 1 s to import

        name = _model_name(name)
        for value, what in [(name, "model name"), (version, "version"), *((a, "alias") for a in aliases)]:
            _check_name(value, what)
        src = Path(snapshot_dir)
        meta, _data = read_snapshot(src, hmac_key, key_file=snapshot_key_file,  # verified before anything is copied
                                    create_key=create_snapshot_key)
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
            dest = _store_dir(self.root, name, version)
            tmp = dest.with_name(version + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(dest, ignore_errors=True)  # left by a register that failed before its log record
            tmp.mkdir(parents=True)
            for filename in (RIVER_ARTIFACT, RIVER_META):  # only what was verified, never whatever else is there
                shutil.copyfile(src / filename, tmp / filename)
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
        """Register a composite of registered ONNX versions; parts are pinned to their version and sha256 now.

        A part's ``model`` and ``version`` may be references (``models:/demo-risk/1``); they are pinned as name and
        version.
        """
        name = _model_name(name)
        for value, what in [(name, "model name"), (version, "version"), *((a, "alias") for a in aliases)]:
            _check_name(value, what)
        with self._locked():
            pinned, parts = [], []
            for part in spec.parts:
                mv = self.state.resolve(part.model, part.version)
                if mv.kind != "onnx":
                    raise RegistryError(f"part {mv.name}@{mv.version} is a {mv.kind}; parts must be ONNX versions")
                pinned.append(part.model_copy(update={"model": mv.name, "version": mv.version, "sha256": mv.sha256}))
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
            dest = _store_dir(self.root, name, version)
            dest.mkdir(parents=True, exist_ok=True)
            (dest / COMPOSITE_FILENAME).write_text(spec.model_dump_json(indent=2) + "\n")  # for people
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

    def promote(self, name: str, version: str | None = None, alias: str = CHAMPION) -> RegistryRecord:
        """Point ``alias`` (champion by default) at ``version`` (a version or another alias).

        ``promote("demo-risk", "2")``, ``promote("models:/demo-risk/2")`` and ``promote("models:/demo-risk",
        "models:/demo-risk@challenger")`` are all accepted (``schemas.model_refs``).
        """
        _check_name(alias, "alias")
        mref = _parse(name, version)
        if not mref.pinned:
            raise RegistryError(f"promote {name}: which version? give NAME VERSION, or {MODELS_SCHEME}NAME/VERSION "
                                f"or {MODELS_SCHEME}NAME@ALIAS")
        name = mref.name
        with self._locked():
            state = self.state.model(name).model_copy(deep=True)
            target = state.resolve(mref).version
            previous = state.aliases.get(alias)
            if previous == target:
                raise RegistryError(f"{name}: {alias} already is {target}")
            verify_artifact(self.root, state.versions[target], self.state)  # what workers will load is the registered
            _point(state, alias, target)
            kind: ChangeKind = "promote" if alias == CHAMPION else "alias"
            return self._append(f"model:{name}", Change(kind=kind, version=target, alias=alias, previous=previous),
                                model=state)

    def rollback(self, name: str, alias: str = CHAMPION, to: str | None = None) -> RegistryRecord:
        """Move ``alias`` back: to the version it held before (default), or to any registered version ``to``.

        ``name``: NAME or ``models:/NAME``; ``to``: a version or alias, or a reference to one of this model.
        """
        name = _model_name(name)
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
            verify_artifact(self.root, state.versions[target], self.state)
            state.aliases[alias] = target
            state.alias_history[alias] = history
            return self._append(f"model:{name}", Change(kind="rollback", version=target, alias=alias,
                                                        previous=current), model=state)

    def unalias(self, name: str, alias: str) -> RegistryRecord:
        if alias == CHAMPION:
            raise RegistryError("champion cannot be removed: promote or roll back instead")
        name = _model_name(name)
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


def _store_dir(root: Path, name: str, version: str) -> Path:
    """``<root>/models/<name>/<version>``, confined to the store (RegistryError otherwise)."""
    try:
        return confined(root, "models", name, version, what="registry artifact")
    except UnsafePath as exc:
        raise RegistryError(str(exc)) from None


def _check_path(mv: ModelVersion) -> None:
    expected = f"models/{mv.name}/{mv.version}"
    if mv.path != expected:
        raise RegistryError(f"{mv.name}@{mv.version}: artifact path {mv.path!r} is not {expected!r}; registry "
                            "artifacts live only in the registry's models/<name>/<version>")


def artifact_dir(root: str | Path, mv: ModelVersion) -> Path:
    """Where ``mv``'s artifact is: only ever ``<root>/models/<name>/<version>``, whatever a record claims."""
    _check_path(mv)
    return _store_dir(Path(root), mv.name, mv.version)


def _file_sha256(path: Path, what: str) -> str:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise RegistryError(f"{what}: artifact missing at {path}; the registry directory must be shared by every "
                            "worker and the CLI") from None


def verify_artifact(root: str | Path, mv: ModelVersion, state: RegistryState | None = None) -> None:
    """``RegistryError`` unless ``mv``'s artifact files are in the store and hash to the registered sha256.

    Hashes the files only (no ONNX session, no unpickling): cheap enough for every promote and every
    record a worker applies. A composite's parts are checked against ``state`` when given.
    """
    what = f"{mv.name}@{mv.version}"
    path = artifact_dir(root, mv)
    if mv.kind == "onnx":
        digest = _file_sha256(path / MODEL_FILENAME, what)
        if not (path / CARD_FILENAME).exists():
            raise RegistryError(f"{what}: artifact missing at {path / CARD_FILENAME}")
    elif mv.kind == "river":
        digest = _file_sha256(path / RIVER_ARTIFACT, what)
        try:
            meta_sha = json.loads((path / RIVER_META).read_bytes()).get("sha256")
        except (FileNotFoundError, ValueError, AttributeError):
            raise RegistryError(f"{what}: {RIVER_META} missing or unreadable at {path}") from None
        if meta_sha != mv.sha256:
            raise RegistryError(f"{what}: {RIVER_META} pins {meta_sha}, not the registered {mv.sha256}")
    else:
        try:
            spec = CompositeSpec.model_validate(mv.composite)
        except ValidationError as exc:
            raise RegistryError(f"{what}: composite spec unreadable: {_first_error(exc)}") from None
        digest = spec.sha256()
        for part in spec.parts:
            part_mv = ModelVersion(name=part.model, version=part.version, sha256=part.sha256 or "", features=[],
                                   classes=[], created_at=mv.created_at, registered_at_ms=0,
                                   path=f"models/{part.model}/{part.version}")
            if state is not None:
                try:
                    registered = state.model(part.model).versions[part.version]
                except (RegistryError, KeyError):
                    raise RegistryError(f"{what}: part {part.model}@{part.version} is not registered") from None
                if registered.kind != "onnx" or registered.sha256 != part.sha256:
                    raise RegistryError(f"{what}: part {part.model}@{part.version} is not the pinned ONNX version")
            verify_artifact(root, part_mv)
    if digest != mv.sha256:
        raise RegistryError(f"{what}: artifact sha256 {digest} is not the registered {mv.sha256}; refusing it")


def load_version_dir(path: Path, sha256: str, mv: ModelVersion | None = None) -> OnnxScorer:
    scorer = OnnxScorer.from_dir(path)
    if scorer.sha256 != sha256:
        raise RegistryError(f"{path}: model sha256 {scorer.sha256} is not the registered {sha256}")
    if mv is not None and (scorer.name, scorer.version, list(scorer.feature_names), list(scorer.classes)) != (
            mv.name, mv.version, mv.features, mv.classes):  # the card is not pinned by the sha256: check what it says
        raise RegistryError(f"{mv.name}@{mv.version}: the model card at {path} describes {scorer.name}@"
                            f"{scorer.version} {list(scorer.feature_names)} {list(scorer.classes)}, not the registered "
                            "version")
    return scorer


def load_version(root: str | Path, mv: ModelVersion) -> OnnxScorer | CompositeScorer | RiverScorer:
    """Load a registered version from the registry directory, verifying it is the registered artifact."""
    path = artifact_dir(root, mv)
    if mv.kind == "river":
        from models.registry_river import load_river_dir  # river + pandas cost ~1 s to import: only for River versions

        return load_river_dir(path, mv.sha256, mv.name, mv.version)
    if mv.kind == "composite":
        spec = CompositeSpec.model_validate(mv.composite)
        if spec.sha256() != mv.sha256:
            raise RegistryError(f"{mv.name}@{mv.version}: composite spec does not match its sha256")
        parts = [load_version_dir(_store_dir(Path(root), p.model, p.version), p.sha256 or "") for p in spec.parts]
        return CompositeScorer(mv.name, mv.version, spec, parts)
    if not (path / CARD_FILENAME).exists() or not (path / MODEL_FILENAME).exists():
        raise RegistryError(f"{mv.name}@{mv.version}: artifact missing at {path}; the registry directory must be "
                            "shared by every worker and the CLI")
    return load_version_dir(path, mv.sha256, mv)
