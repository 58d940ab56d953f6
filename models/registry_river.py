"""River snapshots as registry versions: an online learner's frozen snapshot scored like an ONNX model.

``ModelRegistry.register_river`` copies a snapshot directory of the online-learning store
(``<snapshot_dir>/<learner>/vNNNNNN/{model.pkl, snapshot.json}``) into the registry after verifying it
(sha256 and the signature under the deployment key, ``models.signing``). ``RiverScorer`` then serves it
with the scoring interface of ``OnnxScorer``, so a River snapshot can be champion, a canary or a bandit
arm against ONNX versions. The registered snapshot is frozen: it does not keep learning (the online
learning lane, docs/online_learning.md, is where learning happens).

The pickle is only unpickled after its sha256 matched the registered one (pinned by a signed registry
record), with the exact allowlist of ``online_learning.snapshots.loads_state``, and what comes out must
be the model class of the learner spec the snapshot names.

>>> import tempfile
>>> import numpy as np
>>> from online_learning.snapshots import SnapshotStore, dumps_state
>>> from online_learning.specs import get_spec
>>> with tempfile.TemporaryDirectory() as d:
...     store = SnapshotStore(d, "logreg")
...     meta = store.write(dumps_state({"model": get_spec("logreg").build()}), version=1, parent=None,
...                        kind="learned", worker="w", feature_names=["a", "b"], classes=["no", "yes"])
...     scorer = load_river_dir(store.dir / "v000001", meta.sha256, "m", "r1")
>>> scorer.predict_many(np.zeros((2, 2), np.float32)).labels.tolist()  # untrained: p = 0.5, ties are negative
['no', 'no']
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.scorer import ScoreBatch, predict_one_via_many
from online_learning.learner import Learner
from online_learning.snapshots import ARTIFACT, META, SnapshotMeta, SnapshotStore, loads_state
from online_learning.specs import get_spec


class RiverSnapshotError(ValueError):
    pass


def read_snapshot(snapshot_dir: str | Path, hmac_key: str | bytes | None = None, *, key_file: str | Path | None = None,
                  create_key: bool = True) -> tuple[SnapshotMeta, bytes]:
    """Meta and verified artifact bytes of ``<root>/<learner>/vNNNNNN`` (sha256 and signature, see SnapshotStore)."""
    path = Path(snapshot_dir)
    if not (path / META).exists() or not path.name.startswith("v") or not path.name[1:].isdigit():
        raise RiverSnapshotError(f"{path} is not a snapshot directory (<snapshot_dir>/<learner>/vNNNNNN with {META})")
    store = SnapshotStore(path.parent.parent, path.parent.name, hmac_key, key_file=key_file, create_key=create_key)
    return store.verified_bytes(int(path.name[1:]))


def flat_metrics(meta: SnapshotMeta) -> dict[str, float]:
    """Prequential metrics as flat ``<scope>.<metric>`` numbers, like a model card's metrics."""
    return {f"{scope}.{name}": float(v) for scope, values in meta.metrics.items() for name, v in values.items()}


class RiverScorer:
    """A frozen River learner behind ``predict_many(X float32) -> ScoreBatch`` (binary learners)."""

    def __init__(self, name: str, version: str, meta: SnapshotMeta, model: object) -> None:
        spec = get_spec(meta.learner)
        if spec.task != "binary":
            raise RiverSnapshotError(f"{meta.learner} is a {spec.task} learner; only binary classifiers can be routed "
                                     "beside the ONNX classifiers")
        self.name, self.version, self.sha256 = name, version, meta.sha256
        self.feature_names: tuple[str, ...] = tuple(meta.feature_names)
        self.classes: tuple[str, ...] = tuple(meta.classes)
        self.n_features = len(self.feature_names)
        self._learner = Learner(spec, self.feature_names, classes=self.classes, model=model)

    def predict_many(self, X: np.ndarray) -> ScoreBatch:
        return self._learner.predict_many(pd.DataFrame(X.astype(np.float64), columns=list(self.feature_names)))

    def predict_one(self, features: Mapping[str, float]) -> dict[str, Any]:
        return predict_one_via_many(self, features)

    def __repr__(self) -> str:
        return f"RiverScorer({self.name}@{self.version}, sha256={self.sha256[:12]}...)"


def load_river_dir(path: Path, sha256: str, name: str, version: str) -> RiverScorer:
    """Load a registered snapshot copy, refusing bytes that are not the registered ones (before unpickling)."""
    try:
        meta = SnapshotMeta.model_validate_json((path / META).read_bytes())
        data = (path / ARTIFACT).read_bytes()
    except FileNotFoundError as exc:
        raise RiverSnapshotError(f"{name}@{version}: artifact missing at {path} ({exc.filename})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256 or meta.sha256 != sha256:
        raise RiverSnapshotError(f"{name}@{version}: snapshot sha256 {digest} is not the registered {sha256}")
    try:
        spec = get_spec(meta.learner)
    except KeyError as exc:
        raise RiverSnapshotError(f"{name}@{version}: {exc.args[0]}") from None
    state = loads_state(data)
    model = state.get("model") if isinstance(state, dict) else None
    expected = type(spec.build())
    if type(model) is not expected:  # a signed pickle of something else is still not this learner
        raise RiverSnapshotError(f"{name}@{version}: snapshot holds {type(model).__name__}, not the "
                                 f"{expected.__name__} of learner {meta.learner}")
    return RiverScorer(name, version, meta, model)
