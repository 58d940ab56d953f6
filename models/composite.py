"""Composite models: a declared graph where several registered versions' outputs feed one score.

A composite is registered like any version (``ModelRegistry.register_composite``), so it can be champion,
an A/B variant, a canary or a bandit arm, and be rolled back. Its parts are pinned to concrete versions
and their sha256 when it is registered (an alias given as a part is resolved then), so a composite version
never changes meaning; its own sha256 is that of its canonical spec. Kinds:

* ``weighted_average``: class probabilities averaged with the part weights;
* ``rule``: ``max`` (the most alarmed part decides: P(positive) = max) or ``min`` (all must agree);
* ``stacking``: logistic regression on the parts' positive-class log-odds, ``sigmoid(b + sum c_i logit(p_i))``,
  coefficients fitted offline with ``fit_stacking`` (binary models).

``CompositeScorer`` has the scoring interface of ``OnnxScorer`` (name, version, sha256, feature_names,
classes, ``predict_many``), so the pipeline and the router treat it as one model.

>>> import tempfile
>>> from models.demo import sample_events
>>> from models.onnx_scorer import OnnxScorer
>>> from models.train_demo import train_demo_model
>>> with tempfile.TemporaryDirectory() as d:
...     _ = train_demo_model(f"{d}/1", seed=1, n=1500, version="1")
...     _ = train_demo_model(f"{d}/2", seed=2, n=1500, version="2")
...     parts = [OnnxScorer.from_dir(f"{d}/1"), OnnxScorer.from_dir(f"{d}/2")]
>>> spec = CompositeSpec(kind="weighted_average", parts=[Part(model="demo-risk", version="1", weight=3),
...                                                      Part(model="demo-risk", version="2", weight=1)])
>>> blend = CompositeScorer("demo-risk", "blend-1", spec, parts)
>>> X = parts[0].to_matrix([e["features"] for e in sample_events(3, 5)])
>>> expected = (3 * parts[0].predict_many(X).scores + parts[1].predict_many(X).scores) / 4
>>> bool(abs(blend.predict_many(X).scores - expected).max() < 1e-12)
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.scorer import ScoreBatch, Scorer, predict_one_via_many

_EPS = 1e-7  # clip probabilities before logit: trees can output exactly 0 or 1


class Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    version: str = Field(description="A version; an alias is resolved to its version when registering.")
    sha256: str | None = Field(None, description="Pinned at registration.")
    weight: float = Field(1.0, ge=0, description="weighted_average: the part's weight.")


class CompositeSpec(BaseModel):
    """The graph of a composite: which parts, combined how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["weighted_average", "rule", "stacking"]
    parts: list[Part] = Field(min_length=2)
    rule: Literal["max", "min"] = "max"
    coefficients: list[float] | None = Field(None, description="stacking: one per part.")
    intercept: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> CompositeSpec:
        if self.kind == "weighted_average" and sum(p.weight for p in self.parts) <= 0:
            raise ValueError("weighted_average needs weights summing to > 0")
        if self.kind == "stacking" and (self.coefficients is None or len(self.coefficients) != len(self.parts)):
            raise ValueError(f"stacking needs one coefficient per part ({len(self.parts)})")
        return self

    def sha256(self) -> str:
        """Digest of the canonical JSON: the composite's identity (it pins every part's sha256)."""
        return hashlib.sha256(self.model_dump_json(exclude_none=False).encode()).hexdigest()


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class CompositeScorer:
    """Scores with every part and combines; the parts must share features and classes."""

    def __init__(self, name: str, version: str, spec: CompositeSpec, parts: Sequence[Scorer]) -> None:
        if len(parts) != len(spec.parts):
            raise ValueError(f"{len(spec.parts)} parts declared, {len(parts)} given")
        first = parts[0]
        for p in parts[1:]:
            if p.feature_names != first.feature_names or p.classes != first.classes:
                raise ValueError(f"parts differ in signature: {first.name}@{first.version} vs {p.name}@{p.version}")
        if spec.kind != "weighted_average" and len(first.classes) != 2:
            raise ValueError(f"{spec.kind} composites need binary parts, got classes {first.classes}")
        self.name, self.version, self.spec = name, version, spec
        self.sha256 = spec.sha256()
        self.parts = tuple(parts)
        self.feature_names = first.feature_names
        self.classes = first.classes
        self.n_features = len(self.feature_names)
        self._classes_arr = np.asarray(self.classes)

    def predict_many(self, X: np.ndarray) -> ScoreBatch:
        batches = [p.predict_many(X) for p in self.parts]
        spec = self.spec
        if spec.kind == "weighted_average":
            w = np.asarray([p.weight for p in spec.parts], dtype=np.float64)
            proba = np.tensordot(w / w.sum(), np.stack([b.probabilities for b in batches]), axes=1)
        else:
            scores = np.stack([b.scores for b in batches])  # (parts, n) positive-class probabilities
            if spec.kind == "rule":
                positive = scores.max(axis=0) if spec.rule == "max" else scores.min(axis=0)
            else:
                z = spec.intercept + np.tensordot(np.asarray(spec.coefficients), _logit(scores), axes=1)
                positive = 1.0 / (1.0 + np.exp(-z))
            proba = np.column_stack([1.0 - positive, positive])
        return ScoreBatch(scores=proba[:, -1].copy(), labels=self._classes_arr[proba.argmax(axis=1)],
                          probabilities=proba)

    def predict_one(self, features: Mapping[str, float]) -> dict[str, Any]:
        return predict_one_via_many(self, features)

    def __repr__(self) -> str:
        parts = ", ".join(f"{p.name}@{p.version}" for p in self.parts)
        return f"CompositeScorer({self.name}@{self.version}, {self.spec.kind}: {parts})"


def fit_stacking(parts: Sequence[Scorer], X: np.ndarray, y: np.ndarray) -> tuple[list[float], float]:
    """Coefficients and intercept of a logistic regression on the parts' log-odds (y: 1 = positive class).

    Fit on data none of the parts was trained on, or the blend learns the parts' overfitting.
    """
    from sklearn.linear_model import LogisticRegression

    features = np.column_stack([_logit(p.predict_many(X).scores) for p in parts])
    lr = LogisticRegression().fit(features, y)
    return [float(c) for c in lr.coef_[0]], float(lr.intercept_[0])
