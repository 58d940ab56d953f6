"""Immutable, versioned learner snapshots on a filesystem shared by the workers of an app.

Layout: ``<root>/<learner>/v000007/{model.pkl, snapshot.json}``. A snapshot is written to a hidden
temporary directory and published with one ``rename``, which fails when the version already exists:
a version is created exactly once, by whoever gets there first. Writers always ask for
``(the version their state descends from) + 1``, so a stale writer (a worker that lost ownership, or
that raced a rollback) gets ``SnapshotConflict`` instead of forking history; it then reloads the latest.

``snapshot.json`` says what the snapshot *is*: its parent, the labels offsets learned since the parent
and where to resume, counts, prequential metrics, and the sha256 and HMAC-SHA256 signature of
``model.pkl`` under the deployment key (``models.signing``).

The artifact is a pickle (River models have no other complete serialisation), and a pickle names
callables that run when it is loaded. So ``load`` (1) verifies the signature *before* unpickling:
every snapshot is signed, and an unsigned or mis-signed one is refused (the sha256 alone only catches
corruption: it is as writable as the artifact); (2) unpickles with an allowlist of exact
``(module, name)`` pairs, the ones the supported learner specs pickle (``ALLOWED_GLOBALS``, enumerated
by the tests): no module prefixes, no dotted paths into modules, no builtin functions.

The key: ``hmac_key`` when given (``STREAMSCORE_SIGNING_KEY``), else ``key_file`` (default
``<root>/.signing-key``), generated on first use only when ``create_key``.

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
import io
import os
import pickle
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from models.signing import SigningKeyError, resolve_key, sign, verify
from models.store_paths import confined
from schemas.labels import LearnedRange, LearnerMetrics, ResumeOffset

ARTIFACT = "model.pkl"
META = "snapshot.json"
KEY_FILENAME = ".signing-key"


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


# Exactly the globals that snapshots of every learner spec (online_learning.specs) pickle, recorded
# with find_class while unpickling trained, drifted models and their metrics (river 0.26.1, numpy 2.4;
# tests/control/test_snapshot_safety.py re-enumerates them and fails when this list is stale). Anything
# else is refused, including names that would otherwise resolve through a module (e.g.
# ``river.datasets.base`` + ``os.system``, or a module's ``__builtins__``).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "float"),  # default factories (defaultdict(float)); the classes, not builtin functions
    ("builtins", "int"),
    ("collections", "Counter"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("functools", "partial"),  # ConfusionMatrix: defaultdict(partial(defaultdict, float))
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "scalar"),  # numpy scalars (weights); raw bytes checked against the dtype size
    ("numpy.core.multiarray", "scalar"),  # the same function as numpy 1.x (allowed by pyproject) names it
    ("online_learning.prequential", "PrequentialMetrics"),
    ("random", "Random"),
    ("river._river_rust.drift", "AdaptiveWindowing"),
    ("river._river_rust.vectordict", "VectorDict"),
    ("river.compose.pipeline", "Pipeline"),
    ("river.drift.adwin", "ADWIN"),
    ("river.forest.adaptive_random_forest", "ARFClassifier"),
    ("river.forest.adaptive_random_forest", "BaseTreeClassifier"),
    ("river.linear_model.lin_reg", "LinearRegression"),
    ("river.linear_model.log_reg", "LogisticRegression"),
    ("river.metrics.accuracy", "Accuracy"),
    ("river.metrics.confusion", "ConfusionMatrix"),
    ("river.metrics.log_loss", "LogLoss"),
    ("river.metrics.mae", "MAE"),
    ("river.metrics.mse", "RMSE"),
    ("river.metrics.roc_auc", "ROCAUC"),
    ("river.optim.initializers", "Zeros"),
    ("river.optim.losses", "Log"),
    ("river.optim.losses", "Squared"),
    ("river.optim.schedulers", "Constant"),
    ("river.optim.sgd", "SGD"),
    ("river.preprocessing.scale", "StandardScaler"),
    ("river.proba.gaussian", "Gaussian"),
    ("river.stats.mean", "Mean"),
    ("river.stats.var", "Var"),
    ("river.tree.hoeffding_tree_classifier", "HoeffdingTreeClassifier"),
    ("river.tree.hoeffding_tree_regressor", "HoeffdingTreeRegressor"),
    ("river.tree.nodes.arf_htc_nodes", "RandomLeafNaiveBayesAdaptive"),
    ("river.tree.nodes.branch", "NumericBinaryBranch"),
    ("river.tree.nodes.htc_nodes", "LeafNaiveBayesAdaptive"),
    ("river.tree.nodes.htr_nodes", "LeafAdaptive"),
    ("river.tree.splitter.ebst_splitter", "EBSTNode"),
    # the one qualified name: a staticmethod EBSTNode keeps in a slot, pickled by its qualname. Listed as
    # this exact pair; no other dotted name resolves.
    ("river.tree.splitter.ebst_splitter", "EBSTNode._update_estimator_univariate"),
    ("river.tree.splitter.gaussian_splitter", "GaussianSplitter"),
    ("river.tree.splitter.tebst_splitter", "TEBSTSplitter"),
})
# Not allowed although older versions of this list had them, because no spec needs them: copyreg._reconstructor
# (protocol 5 pickles classes with NEWOBJ; the reconstructor calls base.__new__/__init__ with pickle data),
# numpy.core.multiarray._reconstruct / numpy.ndarray (no spec pickles an array), builtins beyond the two
# classes above (bytes, str, list... are pickle opcodes, not globals).


class _AllowlistUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise SnapshotIntegrityError(f"snapshot artifact references {module}.{name}, which is not an allowed class")

    def persistent_load(self, pid: Any) -> Any:
        raise SnapshotIntegrityError("snapshot artifact uses persistent ids, which snapshots never contain")


def loads_state(data: bytes) -> Any:
    """Unpickle with the exact allowlist; ``SnapshotIntegrityError`` for anything it refuses or cannot read.

    Call only on bytes whose signature was verified: the allowlist stops code execution by name, the
    signature stops crafted states of allowed classes.
    """
    try:
        return _AllowlistUnpickler(io.BytesIO(data)).load()
    except SnapshotIntegrityError:
        raise
    except Exception as exc:  # truncated, wrong protocol, a missing attribute...: never a crash of the caller
        raise SnapshotIntegrityError(f"snapshot artifact does not unpickle: {type(exc).__name__}: {exc}") from exc


def _name(version: int) -> str:
    return f"v{version:06d}"


class SnapshotStore:
    """The snapshots of one learner under ``root``, each signed with the deployment key and verified on load.

    ``learner`` must be one plain name (``models.store_paths.confined``): ``--learner ../..`` is refused.
    The key is read on first use: ``hmac_key`` if given, else ``key_file`` (default ``<root>/.signing-key``),
    generated there only when ``create_key`` (the embedded set-up; a real deployment passes the key).
    """

    def __init__(self, root: str | Path, learner: str, hmac_key: str | bytes | None = None, *,
                 key_file: str | Path | None = None, create_key: bool = True) -> None:
        self.root = Path(root)
        self.learner = learner
        self.dir = confined(self.root, learner, what="learner")
        self._key_value = hmac_key
        self._key_file = Path(key_file) if key_file is not None else None
        self._create_key = create_key
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        """The signing key (read or generated on first use); ``SnapshotError`` saying how to provide one."""
        if self._key is None:
            try:
                self._key = resolve_key(self._key_value, self._key_file, default_file=self.root / KEY_FILENAME,
                                        create=self._create_key)
            except SigningKeyError as exc:
                raise SnapshotError(f"{self.learner}: {exc}") from None
        return self._key

    def _version_dir(self, version: int) -> Path:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise KeyError(f"{self.learner}: snapshot versions are integers >= 1, not {version!r}")
        return confined(self.dir, _name(version), what="snapshot version")

    # --- reading ----------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(n[1:]) for n in names if n.startswith("v") and n[1:].isdigit() and int(n[1:]) >= 1)

    def latest_version(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def latest(self) -> SnapshotMeta | None:
        version = self.latest_version()
        return None if version is None else self.meta(version)

    def meta(self, version: int) -> SnapshotMeta:
        """snapshot.json of ``version``, unverified (for listing); ``verified_bytes`` before trusting it."""
        path = self._version_dir(version) / META
        try:
            meta = SnapshotMeta.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise KeyError(f"{self.learner} has no snapshot version {version} (have {self.versions()})") from None
        if meta.version != version or meta.learner != self.learner:
            raise SnapshotIntegrityError(f"{path} describes {meta.learner} v{meta.version}")
        if meta.artifact != ARTIFACT:
            raise SnapshotIntegrityError(f"{path} names artifact {meta.artifact!r}; snapshots keep it in {ARTIFACT}")
        return meta

    def verified_bytes(self, version: int) -> tuple[SnapshotMeta, bytes]:
        """The artifact bytes, after checking them against the signature and sha256 in snapshot.json.

        Signed snapshot.json fields are not covered: only the artifact is (its sha256 and HMAC), which is
        what runs; the metadata is what the owner recorded about it.
        """
        meta = self.meta(version)
        key = self.key
        data = (self._version_dir(version) / ARTIFACT).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta.sha256:
            raise SnapshotIntegrityError(f"{self.learner} v{version}: artifact sha256 is {digest}, "
                                         f"snapshot.json pins {meta.sha256}; refusing to load")
        if meta.hmac_sha256 is None:
            raise SnapshotIntegrityError(f"{self.learner} v{version}: artifact is unsigned; refusing to load "
                                         "(every snapshot must be signed with the deployment key)")
        if not verify(key, data, meta.hmac_sha256):
            raise SnapshotIntegrityError(f"{self.learner} v{version}: HMAC signature does not verify with the "
                                         "deployment key; refusing to load")
        return meta, data

    def load(self, version: int) -> tuple[SnapshotMeta, Any]:
        meta, data = self.verified_bytes(version)
        return meta, loads_state(data)

    # --- writing ----------------------------------------------------------------------------------
    def write(self, data: bytes, *, version: int, **fields: Any) -> SnapshotMeta:
        """Publish ``data`` as ``version``; SnapshotConflict if that version exists already."""
        meta = SnapshotMeta(
            version=version, learner=self.learner, created_at=fields.pop("created_at", int(time.time() * 1000)),
            sha256=hashlib.sha256(data).hexdigest(), size=len(data), hmac_sha256=sign(self.key, data), **fields,
        )
        final = self._version_dir(version)
        self.dir.mkdir(parents=True, exist_ok=True)
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
