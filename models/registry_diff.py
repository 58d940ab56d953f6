"""Differential test of two model versions: score the same rows with both and say where they disagree.

Used by ``streamscore models diff NAME A B --data ...`` before a promotion: label agreement, mean and
max absolute score difference, and the rows that differ most (to look at before trusting the new version).
The two versions are named as ``version_pair`` says: NAME A B, or two references (``models:/demo-risk@champion
models:/demo-risk/2``, ``schemas.model_refs``).
Rows come from a JSON-lines file of feature events, the newest messages of an input topic, or an archived
dataset version (``datastore``); events whose features do not fit the models are counted, not scored.

>>> import tempfile
>>> from models.demo import sample_events
>>> from models.onnx_scorer import OnnxScorer
>>> from models.train_demo import train_demo_model
>>> with tempfile.TemporaryDirectory() as d:
...     _ = train_demo_model(f"{d}/a", seed=1, n=1500)
...     a = OnnxScorer.from_dir(f"{d}/a")
>>> report = diff_scores(a, a, sample_events(5, 200), top=3)
>>> report.n, report.agreement, report.max_abs_diff, len(report.top)
(200, 1.0, 0.0, 3)
>>> [str(r) for r in version_pair(["demo-risk", "champion", "models:/demo-risk/2"])]
['demo-risk@champion', 'models:/demo-risk/2']
>>> [str(r) for r in version_pair(["models:/demo-risk@champion", "demo-risk@2"])]
['models:/demo-risk@champion', 'demo-risk@2']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.onnx_scorer import features_matrix
from models.scorer import Scorer
from schemas.model_refs import ModelRef, ModelRefError, is_model_ref, parse_model_ref

if TYPE_CHECKING:
    from models.registry import ModelRegistry

PAIR_FORMS = "NAME A B (A, B: versions, aliases or references of NAME), or A B (two references, e.g. " \
             "models:/demo-risk@champion models:/demo-risk/2)"


@dataclass(frozen=True)
class DiffRow:
    event_id: str
    score_a: float
    score_b: float
    label_a: str
    label_b: str

    @property
    def diff(self) -> float:
        return self.score_b - self.score_a


@dataclass(frozen=True)
class DiffReport:
    a: str
    b: str
    n: int
    skipped: int
    agreement: float = field(metadata={"doc": "Share of rows with the same predicted label."})
    mean_abs_diff: float
    max_abs_diff: float
    mean_diff: float = field(metadata={"doc": "Mean of score_b - score_a (the direction of the shift)."})
    top: list[DiffRow]

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "n": self.n, "skipped": self.skipped, "agreement": self.agreement,
                "mean_abs_diff": self.mean_abs_diff, "max_abs_diff": self.max_abs_diff, "mean_diff": self.mean_diff,
                "top": [{**vars(r), "diff": r.diff} for r in self.top]}


def version_pair(args: Sequence[str]) -> tuple[ModelRef, ModelRef]:
    """The two versions a diff compares, from the command line's words: ``NAME A B`` or ``A B`` (two references).

    ``ModelRefError`` (a ``ValueError``, one line) for anything else; a bare word in the two-word form is refused
    rather than read as a model whose champion is meant.
    """
    if len(args) == 3:
        name, a, b = args
        return parse_model_ref(name, a), parse_model_ref(name, b)
    if len(args) == 2 and all(is_model_ref(x) for x in args):
        return parse_model_ref(args[0]), parse_model_ref(args[1])
    raise ModelRefError(f"diff {' '.join(args)}: give {PAIR_FORMS}")


def diff_registered(registry: ModelRegistry, a: str | ModelRef, b: str | ModelRef,
                    events: Iterable[Mapping[str, Any]], top: int = 10) -> DiffReport:
    """``diff_scores`` of the registered versions ``a`` and ``b`` name (any form of ``schemas.model_refs``)."""
    return diff_scores(registry.load_scorer(a), registry.load_scorer(b), events, top=top)


def diff_scores(a: Scorer, b: Scorer, events: Iterable[Mapping[str, Any]], top: int = 10) -> DiffReport:
    """Score ``events`` (feature-event dicts) with both versions; the ``top`` rows by absolute score difference."""
    if list(a.feature_names) != list(b.feature_names) or list(a.classes) != list(b.classes):
        raise ValueError(f"{a.name}@{a.version} and {b.name}@{b.version} differ in signature: "
                         f"{a.feature_names}/{a.classes} vs {b.feature_names}/{b.classes}")
    ids, rows, skipped = [], [], 0
    for event in events:
        features = event.get("features") or {}
        if all(isinstance(features.get(f), int | float) for f in a.feature_names):
            ids.append(str(event.get("event_id", len(ids))))
            rows.append(features)
        else:
            skipped += 1
    if not rows:
        raise ValueError(f"no scorable rows ({skipped} events lacked the features {list(a.feature_names)})")
    X = features_matrix(rows, a.feature_names)
    sa, sb = a.predict_many(X), b.predict_many(X)
    delta = sb.scores - sa.scores
    order = np.argsort(-np.abs(delta), kind="stable")[:top]
    return DiffReport(
        a=f"{a.name}@{a.version}", b=f"{b.name}@{b.version}", n=len(rows), skipped=skipped,
        agreement=float((sa.labels == sb.labels).mean()), mean_abs_diff=float(np.abs(delta).mean()),
        max_abs_diff=float(np.abs(delta).max()), mean_diff=float(delta.mean()),
        top=[DiffRow(ids[i], float(sa.scores[i]), float(sb.scores[i]), str(sa.labels[i]), str(sb.labels[i]))
             for i in order],
    )
