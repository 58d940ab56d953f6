"""The one training entry point: a recipe and data in, model.onnx + reference profile + model card out.

``train(recipe, X, y, out_dir)`` splits the data (stratified, ``recipe.held_out_fraction``, seeded),
fits ``recipe.build_estimator()``, exports it to ONNX, computes the held-out metrics with
``OnnxScorer`` on the exported bytes (the worker's own code path; the export is refused if ONNX and
sklearn disagree), profiles the training features and held-out scores, and writes the three files
through ``models.artifacts.write_artifacts`` (atomic, never over someone else's model, never under a
running worker). The same recipe, data and library versions give byte-identical files in any process.

>>> import tempfile
>>> from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset
>>> recipe = Recipe(name="risk", version="1", features=FEATURE_NAMES, classes=CLASS_NAMES, estimator="logreg",
...                 params={"C": 1.0}, seed=1)
>>> X, y = make_dataset(seed=1, n=2000)
>>> with tempfile.TemporaryDirectory() as d:
...     card = train(recipe, X, y, d, parent_version="0")
>>> card.recipe_hash == recipe.recipe_hash, card.parent_version, card.n_test, sorted(card.metrics)
(True, '0', 500, ['accuracy', 'log_loss', 'roc_auc'])
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from models.artifacts import foreign_model_error, write_artifacts
from models.card import CARD_FILENAME, ModelCard, dataset_sha256, sha256_bytes
from models.onnx_scorer import MODEL_FILENAME, OnnxScorer
from models.recipe import Recipe
from streams.drift.profile import PROFILE_FILENAME, build_profile

# skl2onnx lowers these to the opsets the graph actually needs (16 / ml 1 for the demo GBT), which
# keeps the artifact loadable by every onnxruntime the project allows (>= 1.18).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# ONNX computes in float32; anything beyond this means a conversion bug.
PARITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Split:
    """Train and held-out rows (float64 X, int64 y holding class indices)."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def split_data(recipe: Recipe, X: np.ndarray, y: np.ndarray) -> Split:
    """Check the shapes and labels, then split stratified by ``recipe.held_out_fraction`` (seeded)."""
    X, y = np.asarray(X, np.float64), np.asarray(y)
    if X.ndim != 2 or X.shape[1] != len(recipe.features):
        raise ValueError(f"X has shape {X.shape}; recipe {recipe.name} v{recipe.version} takes "
                         f"{len(recipe.features)} features {list(recipe.features)}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y has shape {y.shape}, expected ({X.shape[0]},)")
    labels = np.unique(y)
    if not np.array_equal(labels, np.arange(len(recipe.classes))):
        raise ValueError(f"y must hold every class index 0..{len(recipe.classes) - 1} of {list(recipe.classes)}, "
                         f"found {labels.tolist()}")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y.astype(np.int64), test_size=recipe.held_out_fraction, random_state=recipe.seed, stratify=y
    )
    return Split(X_train, X_test, y_train, y_test)


def fit(recipe: Recipe, split: Split) -> Any:
    """Fit a fresh estimator of ``recipe`` on ``split``'s training rows; deterministic for the recipe and data."""
    estimator = recipe.build_estimator()
    estimator.fit(split.X_train, split.y_train)
    if list(estimator.classes_) != list(range(len(recipe.classes))):
        raise RuntimeError(f"expected classes {list(range(len(recipe.classes)))}, got {estimator.classes_}")
    return estimator


def to_onnx(recipe: Recipe, estimator: Any, name: str, version: str) -> bytes:
    """Export to ONNX bytes that depend on the estimator and names only (not on the process or run)."""
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    onx = convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, len(recipe.features)]))],
        options={id(final): {"zipmap": False}},  # plain float tensor, not a list of dicts
        target_opset=TARGET_OPSET,
    )
    # skl2onnx 1.20 fills opset_import from a *set* of (domain, version) pairs, so its order follows
    # the string hash seed: 5 of 20 PYTHONHASHSEEDs put "" before "ai.onnx.ml", a different sha256 for
    # the same model. Sorting by domain makes the order canonical (ONNX gives it no meaning).
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    onx.opset_import.extend(onnx.helper.make_opsetid(domain, v) for domain, v in opsets)
    onx.graph.name = f"{name}-{version}"  # skl2onnx picks a random uuid
    onx.doc_string = f"{name} v{version}: {recipe.describe()} (see model_card.json)"
    metadata = {"name": name, "version": version, "features": ",".join(recipe.features),
                "recipe_hash": recipe.recipe_hash}
    for key, value in metadata.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    return onx.SerializeToString(deterministic=True)


def library_versions() -> dict[str, str]:
    return {
        "sklearn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,  # synthetic data and splits depend on numpy's random streams
    }


def build_artifacts(
    recipe: Recipe,
    estimator: Any,
    split: Split,
    *,
    name: str | None = None,
    version: str = "1",
    training_data_version: str | None = None,
    parent_version: str | None = None,
    created_at: datetime | None = None,
    description: str | None = None,
) -> tuple[ModelCard, dict[str, bytes]]:
    """The model card and the bytes of the three files (in write order, card last); writes nothing.

    ``created_at`` should be the training data's time (e.g. its newest record) when it has one;
    the default is ``recipe.declared_at``. It is never the clock, so the bytes are reproducible.
    """
    name = name or recipe.name
    model_bytes = to_onnx(recipe, estimator, name, version)
    draft = ModelCard(
        name=name,
        version=version,
        features=list(recipe.features),
        classes=list(recipe.classes),
        onnx_sha256=sha256_bytes(model_bytes),
        training_data_sha256=dataset_sha256(split.X_train, split.y_train),
        training_data_version=training_data_version,
        seed=recipe.seed,
        n_train=len(split.y_train),
        n_test=len(split.y_test),
        created_at=created_at or recipe.declared_at,
        library_versions=library_versions(),
        description=description or f"{recipe.describe()}; score = P({recipe.classes[-1]!r}).",
        recipe=recipe,
        recipe_hash=recipe.recipe_hash,
        parent_version=parent_version,
    )
    batch = OnnxScorer(draft, model_bytes).predict_many(split.X_test.astype(np.float32))
    gap = float(np.abs(batch.probabilities - estimator.predict_proba(split.X_test)).max())
    if gap > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and sklearn probabilities differ by {gap:.2e} (> {PARITY_TOLERANCE})")
    y_test, labels = split.y_test, list(range(len(recipe.classes)))
    binary = len(labels) == 2
    metrics = {
        "roc_auc": float(roc_auc_score(y_test, batch.scores) if binary else
                         roc_auc_score(y_test, batch.probabilities, multi_class="ovr", labels=labels)),
        "accuracy": float(accuracy_score(y_test, batch.probabilities.argmax(axis=1))),
        # float32 rows of a logistic model sum to 1 only within ~1e-7; sklearn warns on that.
        "log_loss": float(log_loss(y_test, batch.probabilities / batch.probabilities.sum(axis=1, keepdims=True),
                                   labels=labels)),
    }
    # Training features vs held-out scores: the scores of unseen, undrifted data are the reference
    # for live scores (scores on the training rows would be overfit, hence sharper).
    profile = build_profile(
        split.X_train, list(recipe.features), batch.scores, model_name=name, model_version=version, seed=recipe.seed,
        source=f"training split (X_train, n={len(split.y_train)}) and held-out scores (X_test, "
        f"n={len(y_test)}) of {training_data_version or 'unversioned data'}",
    )
    profile_bytes = profile.to_json_bytes()
    card = draft.model_copy(update={"metrics": metrics, "reference_profile_sha256": sha256_bytes(profile_bytes)})
    files = {PROFILE_FILENAME: profile_bytes, MODEL_FILENAME: model_bytes, CARD_FILENAME: card.to_json_bytes()}
    return card, files


def export(recipe: Recipe, estimator: Any, split: Split, out_dir: str | Path, *, force: bool = False,
           **card_fields: Any) -> tuple[ModelCard, bool]:
    """``build_artifacts`` then ``write_artifacts``; returns the card and whether anything was written."""
    card, files = build_artifacts(recipe, estimator, split, **card_fields)
    return card, write_artifacts(out_dir, files, force=force)


def train(
    recipe: Recipe,
    X: np.ndarray,
    y: np.ndarray,
    out_dir: str | Path,
    *,
    name: str | None = None,
    version: str = "1",
    training_data_version: str | None = None,
    parent_version: str | None = None,
    created_at: datetime | None = None,
    force: bool = False,
) -> ModelCard:
    """Train ``recipe`` on ``(X, y)`` (y = class indices) and write the model folder ``out_dir``.

    An identical re-train is a no-op; different existing artifacts need ``force`` (models.artifacts).
    """
    if (error := foreign_model_error(out_dir)) is not None:
        raise error  # before minutes of training, not after
    split = split_data(recipe, X, y)
    card, _ = export(recipe, fit(recipe, split), split, out_dir, force=force, name=name, version=version,
                     training_data_version=training_data_version, parent_version=parent_version,
                     created_at=created_at)
    return card
