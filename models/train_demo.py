"""Train the demo transaction-risk classifier; export model.onnx, reference_profile.json and model_card.json.

    python -m models.train_demo --out artifacts/models/demo-risk/1

Held-out metrics are computed by ``OnnxScorer`` on the exported bytes, i.e. by the same code
path the worker uses, and the export is refused if ONNX and sklearn disagree. The same held-out
scores and the training features make the reference profile drift is measured against.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     card = train_demo_model(d, seed=1, n=2000)
>>> card.name, card.n_train, card.n_test, card.metrics["roc_auc"] > 0.8
('demo-risk', 1500, 500, True)
>>> len(card.reference_profile_sha256)
64
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from models.card import CARD_FILENAME, ModelCard, dataset_sha256, sha256_bytes
from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset
from models.onnx_scorer import MODEL_FILENAME, OnnxScorer
from streams.drift.profile import build_profile

DEFAULT_OUT = Path("artifacts/models/demo-risk/1")
TEST_SIZE = 0.25
# skl2onnx lowers these to the opsets the graph actually needs (16 / ml 1 for this model), which
# keeps the artifact loadable by every onnxruntime the project allows (>= 1.18).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# ONNX trees sum leaf values in float32; anything beyond this means a conversion bug.
PARITY_TOLERANCE = 1e-5


def _export(clf: GradientBoostingClassifier, name: str, version: str) -> bytes:
    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, len(FEATURE_NAMES)]))],
        options={id(clf): {"zipmap": False}},  # plain float tensor, not a list of dicts
        target_opset=TARGET_OPSET,
    )
    onx.graph.name = f"{name}-{version}"  # skl2onnx picks a random uuid, which breaks reproducibility
    onx.doc_string = f"{name} v{version}: demo transaction-risk classifier (see model_card.json)"
    for key, value in {"name": name, "version": version, "features": ",".join(FEATURE_NAMES)}.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    return onx.SerializeToString()


def _write_atomic(path: Path, data: bytes) -> None:
    # A worker polling the directory must never see a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class DemoSplit:
    """The seeded train/test split of ``make_dataset(seed, n)`` (float64 X, int64 y)."""

    seed: int
    n: int
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def fit_demo_classifier(seed: int = 7, n: int = 20000) -> tuple[GradientBoostingClassifier, DemoSplit]:
    """Generate and split the data, fit the classifier; deterministic for a given (seed, n)."""
    X, y = make_dataset(seed, n)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=TEST_SIZE, random_state=seed, stratify=y)
    clf = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
    clf.fit(X_train, y_train)
    if list(clf.classes_) != [0, 1]:
        raise RuntimeError(f"expected classes [0, 1], got {clf.classes_}")
    return clf, DemoSplit(seed, n, X_train, X_test, y_train, y_test)


def export_demo_model(
    clf: GradientBoostingClassifier,
    split: DemoSplit,
    out_dir: str | Path,
    name: str = "demo-risk",
    version: str = "1",
    data_dir: str | Path | None = None,
) -> ModelCard:
    """Export ``clf`` to ONNX, evaluate it on ``split.X_test``; write model.onnx, the profile, the card.

    With ``data_dir`` the training split is archived there as a dataset version (docs/data_versioning.md)
    and the card's ``training_data_version`` is its content id; otherwise it names the generator call.
    """
    out_dir = Path(out_dir)
    model_bytes = _export(clf, name, version)
    data_version = f"models.demo.make_dataset(seed={split.seed}, n={split.n})"
    if data_dir is not None:
        from datastore.storage import LocalStorage
        from datastore.training import archive_training_data

        data_version = archive_training_data(LocalStorage(data_dir), name, version, split.X_train, split.y_train,
                                             FEATURE_NAMES, CLASS_NAMES).id
    draft = ModelCard(
        name=name,
        version=version,
        features=list(FEATURE_NAMES),
        classes=list(CLASS_NAMES),
        onnx_sha256=sha256_bytes(model_bytes),
        training_data_sha256=dataset_sha256(split.X_train, split.y_train),
        training_data_version=data_version,
        seed=split.seed,
        n_train=len(split.y_train),
        n_test=len(split.y_test),
        library_versions={
            "sklearn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,  # the synthetic data depends on numpy's Generator streams
        },
        description="GradientBoostingClassifier(n_estimators=100, max_depth=3) on the synthetic "
        f"transaction-risk data; score = P({CLASS_NAMES[1]!r}).",
    )

    y_test = split.y_test
    batch = OnnxScorer(draft, model_bytes).predict_many(split.X_test.astype(np.float32))
    gap = float(np.abs(batch.probabilities - clf.predict_proba(split.X_test)).max())
    if gap > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and sklearn probabilities differ by {gap:.2e} (> {PARITY_TOLERANCE})")
    card = draft.model_copy(
        update={
            "metrics": {
                "roc_auc": float(roc_auc_score(y_test, batch.scores)),
                "accuracy": float(accuracy_score(y_test, batch.probabilities.argmax(axis=1))),
                "log_loss": float(log_loss(y_test, batch.probabilities, labels=[0, 1])),
            }
        }
    )

    # Training features vs held-out scores: the scores of unseen, undrifted data are the reference
    # for live scores (scores on the training rows would be overfit, hence sharper).
    profile = build_profile(
        split.X_train, FEATURE_NAMES, batch.scores, model_name=name, model_version=version, seed=split.seed,
        source=f"training split (X_train, n={len(split.y_train)}) and held-out scores (X_test, "
        f"n={len(y_test)}) of {card.training_data_version}",
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / MODEL_FILENAME, model_bytes)
    card = card.model_copy(update={"reference_profile_sha256": profile.save(out_dir)})
    # The card goes last: a directory with a card always has the model it describes.
    _write_atomic(out_dir / CARD_FILENAME, (card.model_dump_json(indent=2) + "\n").encode())
    return card


def train_demo_model(
    out_dir: str | Path, seed: int = 7, n: int = 20000, name: str = "demo-risk", version: str = "1",
    data_dir: str | Path | None = None,
) -> ModelCard:
    """Train on ``make_dataset(seed, n)``; write model.onnx, reference_profile.json, model_card.json to ``out_dir``.

    Same arguments and library versions give byte-identical model.onnx (same ``onnx_sha256``).
    """
    clf, split = fit_demo_classifier(seed, n)
    return export_demo_model(clf, split, out_dir, name=name, version=version, data_dir=data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n", type=int, default=20000, help="rows generated (train + test)")
    parser.add_argument("--name", default="demo-risk")
    parser.add_argument("--version", default="1")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="archive the training split there as a dataset version (e.g. .streamscore/data)")
    args = parser.parse_args(argv)

    card = train_demo_model(args.out, seed=args.seed, n=args.n, name=args.name, version=args.version,
                            data_dir=args.data_dir)
    m = card.metrics
    print(f"trained {card.name} v{card.version} -> {args.out}")
    print(f"  data     seed={card.seed} train={card.n_train} test={card.n_test}")
    print(f"           training_data_sha256={card.training_data_sha256}")
    print(f"           training_data_version={card.training_data_version}")
    print(f"  held-out roc_auc={m['roc_auc']:.4f} accuracy={m['accuracy']:.4f} log_loss={m['log_loss']:.4f}")
    print(f"  onnx     sha256={card.onnx_sha256}")
    print(f"  profile  sha256={card.reference_profile_sha256}  (reference_profile.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
