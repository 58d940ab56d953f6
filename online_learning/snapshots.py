"""Immutable, versioned learner snapshots on a filesystem shared by the workers of an app.

Layout: ``<root>/<learner>/v000007/{model.pkl, snapshot.json}``. A snapshot is written to a hidden
temporary directory and published with one ``rename``, which fails when the version already exists:
a version is created exactly once, by whoever gets there first. Writers always ask for
``(the version their state descends from) + 1``, so a stale writer (a worker that lost ownership, or
that raced a rollback) gets ``SnapshotConflict`` instead of forking history; it then reloads the latest.

``snapshot.json`` says what the snapshot *is*: its parent, the labels offsets learned since the parent
and where to resume, counts, prequential metrics, and the sha256 (and, with a key, an HMAC-SHA256) of
``model.pkl``.

The artifact is a pickle (River models have no other complete serialisation). A pickle can run code
when loaded, so ``load`` (1) verifies the sha256 recorded at write time (and the HMAC when a key is
configured) *before* unpickling, and (2) unpickles with an allowlist of importable names (River,
numpy arrays, a few containers); a payload naming anything else (``os.system``...) is refused. The
sha256 protects against corruption and partial writes; only the HMAC key, kept out of the snapshot
directory, protects against someone who can write there.

>>> import tempfile
>>> from online_learning.specs import get_spec
>>> with tempfile.TemporaryDirectory() as d:
...     store = SnapshotStore(d, "logreg")
...     v1 = store.write(dumps_state({"model": get_spec("logreg").build()}), version=1, parent=None,
...                      kind="learned", worker="w1", feature_names=["x"], classes=["0", "1"])
...     meta, state = store.load(1)
...     rolled = store.rollback(1, worker="cli")
...     (meta.version, meta.sha256 == v1.sha256, type(state["model"]).__name__, rolled.version, rolled.parent)
(1, True, 'Pipeline', 2, 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import pickle
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from schemas.labels import LearnedRange, LearnerMetrics, ResumeOffset

ARTIFACT = "model.pkl"
META = "snapshot.json"


class SnapshotError(RuntimeError):
    pass


class SnapshotConflict(SnapshotError):
    """The version already exists: another writer (a new owner, or a rollback) got there first."""


class SnapshotIntegrityError(SnapshotError):
    """The artifact is not what its snapshot.json pins (sha256/HMAC), or names a disallowed global."""


class SnapshotMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    parent: int | None
    kind: Literal["learned", "rollback"]
    learner: str
    created_at: int  # epoch ms
    worker: str
    artifact: str = ARTIFACT
    sha256: str
    size: int
    hmac_sha256: str | None = None
    feature_names: list[str]
    classes: list[str]
    offsets: list[LearnedRange] = []  # labels consumed since the parent, per partition, both ends included
    next_offsets: list[ResumeOffset] = []  # where the labels consumer resumes from this snapshot
    learned: int = 0
    learned_total: int = 0
    consumed: int = 0
    unknown: int = 0
    late: int = 0
    duplicate: int = 0
    invalid: int = 0
    predicted_at_learn: int = 0
    metrics: dict[str, dict[str, float]] = {}
    rolled_back_from: int | None = None  # for a rollback: the latest version when it was made

    def resume_at(self) -> dict[tuple[str, int], int]:
        return {(o.topic, o.partition): o.offset for o in self.next_offsets}

    def to_record(self, emitted_at: int | None = None) -> LearnerMetrics:
        """The learner-metrics topic record of this snapshot."""
        return LearnerMetrics(
            learner=self.learner, model_version=str(self.version),
            parent_version=None if self.parent is None else str(self.parent), kind=self.kind, worker=self.worker,
            emitted_at=emitted_at if emitted_at is not None else int(time.time() * 1000),
            learned=self.learned, learned_total=self.learned_total, consumed=self.consumed, unknown=self.unknown,
            late=self.late, duplicate=self.duplicate, invalid=self.invalid,
            predicted_at_learn=self.predicted_at_learn, offsets=self.offsets, next_offsets=self.next_offsets,
            metrics=self.metrics,
        )


def dumps_state(state: Any) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


# Every global a pickled River pipeline, tree, forest or our metrics object needs (checked by the tests
# for each registered learner). Modules under these prefixes may be imported by name:
_ALLOWED_PREFIXES = ("river.",)
_ALLOWED_NAMES: dict[str, frozenset[str]] = {
    "builtins": frozenset({"bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
                           "object", "range", "set", "slice", "str", "tuple"}),
    "collections": frozenset({"Counter", "OrderedDict", "defaultdict", "deque"}),
    "copyreg": frozenset({"_reconstructor"}),
    "functools": frozenset({"partial"}),
    "random": frozenset({"Random"}),
    "numpy": frozenset({"dtype", "ndarray"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "online_learning.prequential": frozenset({"PrequentialMetrics"}),
}


class _AllowlistUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_ALLOWED_PREFIXES) or name in _ALLOWED_NAMES.get(module, ()):
            return super().find_class(module, name)
        raise SnapshotIntegrityError(f"snapshot artifact references {module}.{name}, which is not allowed")


def loads_state(data: bytes) -> Any:
    """Unpickle with the allowlist (call only on bytes whose digest was verified)."""
    return _AllowlistUnpickler(io.BytesIO(data)).load()


def _name(version: int) -> str:
    return f"v{version:06d}"


class SnapshotStore:
    """The snapshots of one learner under ``root``; ``hmac_key`` signs and is required to load when set."""

    def __init__(self, root: str | Path, learner: str, hmac_key: str | bytes | None = None) -> None:
        self.root = Path(root)
        self.learner = learner
        self.dir = self.root / learner
        self._key = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key

    # --- reading ----------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[1:]) for n in names if n.startswith("v") and n[1:].isdigit())

    def latest_version(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def latest(self) -> SnapshotMeta | None:
        version = self.latest_version()
        return None if version is None else self.meta(version)

    def meta(self, version: int) -> SnapshotMeta:
        path = self.dir / _name(version) / META
        try:
            meta = SnapshotMeta.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise KeyError(f"{self.learner} has no snapshot version {version} (have {self.versions()})") from None
        if meta.version != version or meta.learner != self.learner:
            raise SnapshotIntegrityError(f"{path} describes {meta.learner} v{meta.version}")
        return meta

    def verified_bytes(self, version: int) -> tuple[SnapshotMeta, bytes]:
        """The artifact bytes, after checking them against the sha256 (and HMAC) in snapshot.json."""
        meta = self.meta(version)
        data = (self.dir / _name(version) / meta.artifact).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta.sha256:
            raise SnapshotIntegrityError(f"{self.learner} v{version}: artifact sha256 is {digest}, "
                                         f"snapshot.json pins {meta.sha256}; refusing to load")
        if self._key is not None:
            expected = hmac.new(self._key, data, hashlib.sha256).hexdigest()
            if meta.hmac_sha256 is None or not hmac.compare_digest(expected, meta.hmac_sha256):
                raise SnapshotIntegrityError(f"{self.learner} v{version}: HMAC missing or wrong; refusing to load")
        return meta, data

    def load(self, version: int) -> tuple[SnapshotMeta, Any]:
        meta, data = self.verified_bytes(version)
        return meta, loads_state(data)

    # --- writing ----------------------------------------------------------------------------------
    def write(self, data: bytes, *, version: int, **fields: Any) -> SnapshotMeta:
        """Publish ``data`` as ``version``; SnapshotConflict if that version exists already."""
        meta = SnapshotMeta(
            version=version, learner=self.learner, created_at=fields.pop("created_at", int(time.time() * 1000)),
            sha256=hashlib.sha256(data).hexdigest(), size=len(data),
            hmac_sha256=hmac.new(self._key, data, hashlib.sha256).hexdigest() if self._key else None, **fields,
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / _name(version)
        if final.exists():
            raise SnapshotConflict(f"{self.learner} v{version} exists already")
        tmp = self.dir / f".tmp-{_name(version)}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _write_durably(tmp / meta.artifact, data)
            _write_durably(tmp / META, meta.model_dump_json(indent=1).encode())
            try:
                os.rename(tmp, final)  # atomic; refuses a non-empty target, so only one writer wins
            except OSError as exc:
                raise SnapshotConflict(f"{self.learner} v{version} exists already") from exc
        finally:
            if tmp.exists():
                for child in tmp.iterdir():
                    child.unlink()
                tmp.rmdir()
        _fsync_dir(self.dir)
        return meta

    def rollback(self, target: int, worker: str, attempts: int = 10) -> SnapshotMeta:
        """A new version holding ``target``'s model, whose parent is ``target``; history is never rewritten.

        Labels keep flowing from where the latest snapshot stopped: what was learned after ``target`` is
        discarded, not replayed, and the next labels are learned on top of ``target``'s model.
        """
        for _ in range(attempts):
            latest = self.latest()
            if latest is None:
                raise KeyError(f"{self.learner} has no snapshots")
            meta, data = self.verified_bytes(target)
            try:
                return self.write(
                    data, version=latest.version + 1, parent=target, kind="rollback", worker=worker,
                    feature_names=meta.feature_names, classes=meta.classes, next_offsets=latest.next_offsets,
                    learned_total=meta.learned_total, metrics=meta.metrics, rolled_back_from=latest.version,
                )
            except SnapshotConflict:
                continue  # the owner just wrote a snapshot: roll back on top of that one
        raise SnapshotConflict(f"could not roll back {self.learner} to v{target}: {attempts} conflicting writes")


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
