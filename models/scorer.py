"""The one interface every model the worker can serve implements: ``Scorer``.

ONNX models (``models.onnx_scorer.OnnxScorer``), composites (``models.composite.CompositeScorer``),
River snapshots (``models.registry_river.RiverScorer``) and live learners
(``online_learning.learner.Learner``) all answer the same questions, so routing, drift, replay and
``models diff`` never ask which kind they hold. ``tests/unit/models/test_scorer_conformance.py`` runs the same
checks on every implementation (as River's ``river/checks`` does for its estimators).

>>> import numpy as np
>>> class Constant:
...     name, version, sha256 = "const", "1", "0" * 64
...     feature_names, classes = ["x"], ["no", "yes"]
...     def predict_many(self, X):
...         p = np.full(len(X), 0.25)
...         return ScoreBatch(p, np.array(["no"] * len(X), dtype=object), np.column_stack([1 - p, p]))
...     def predict_one(self, features):
...         return predict_one_via_many(self, features)
>>> isinstance(Constant(), Scorer)
True
>>> Constant().predict_one({"x": 1.0})
{'score': 0.25, 'label': 'no', 'probabilities': {'no': 0.75, 'yes': 0.25}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ScoreBatch", "Scorer", "predict_one_via_many"]


@dataclass(frozen=True, slots=True)
class ScoreBatch:
    """Scores for a batch, row-aligned with the input.

    scores: (n,) float64, probability of the positive class (the last class), or the prediction (regression).
    labels: (n,) str array, the most probable class.
    probabilities: (n, n_classes) float64, columns in the scorer's ``classes`` order.
    """

    scores: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@runtime_checkable
class Scorer(Protocol):
    """A servable model: identity, input signature, and batch/single scoring.

    ``predict_many`` takes a float32 matrix whose columns are ``feature_names`` in order; ``predict_one``
    a mapping of feature name to value, and returns ``{"score", "label", "probabilities"}``.
    """

    name: str
    version: str
    sha256: str
    feature_names: Sequence[str]
    classes: Sequence[str]

    def predict_many(self, X: np.ndarray) -> ScoreBatch: ...

    def predict_one(self, features: Mapping[str, float]) -> dict[str, Any]: ...


def predict_one_via_many(scorer: Scorer, features: Mapping[str, float]) -> dict[str, Any]:
    """``predict_one`` for any scorer: one row through ``predict_many`` (same numbers as in a batch)."""
    row = np.asarray([[float(features[name]) for name in scorer.feature_names]], dtype=np.float32)
    batch = scorer.predict_many(row)
    probabilities = batch.probabilities[0].tolist()
    return {
        "score": float(batch.scores[0]),
        "label": str(batch.labels[0]),
        "probabilities": {str(c): p for c, p in zip(scorer.classes, probabilities, strict=True)},
    }
