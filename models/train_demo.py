"""Train the demo transaction-risk classifier: the demo recipe on the synthetic data (models.training).

    python -m models.train_demo --out artifacts/models/demo-risk/1 [--force]

Writes model.onnx, reference_profile.json and model_card.json; the same seed gives byte-identical
files in any process. It never overwrites a different model without ``--force``, never touches a
folder holding a model.onnx without a card, and never one a worker is serving (models.artifacts).
A refused folder is one line on stderr and exit code 2.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     card = train_demo_model(d, seed=1, n=2000)
>>> card.name, card.n_train, card.n_test, card.metrics["roc_auc"] > 0.8
('demo-risk', 1500, 500, True)
>>> card.recipe.estimator, card.recipe_hash == demo_recipe(seed=1).recipe_hash
('gbt', True)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sklearn.ensemble import GradientBoostingClassifier

from datastore.storage import LocalStorage
from datastore.training import archive_training_data
from models.artifacts import DEFAULT_SETTING, ModelDirError, foreign_model_error, served_model_dir
from models.card import ModelCard
from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset
from models.recipe import Recipe
from models.training import PARITY_TOLERANCE, Split, export, fit, split_data

__all__ = ["DEFAULT_OUT", "PARITY_TOLERANCE", "DemoSplit", "ModelDirError", "demo_recipe", "ensure_demo_model",
           "export_demo_model", "fit_demo_classifier", "main", "train_demo_model"]

DEFAULT_OUT = Path("artifacts/models/demo-risk/1")
DEFAULT_SEED = 7
DEFAULT_N = 20000


def demo_recipe(seed: int = DEFAULT_SEED) -> Recipe:
    """The demo model's recipe; ``seed`` seeds the data generator too (see ``train_demo_model``)."""
    return Recipe(name="demo-risk", version="1", features=FEATURE_NAMES, classes=CLASS_NAMES, estimator="gbt",
                  params={"n_estimators": 100, "max_depth": 3}, seed=seed, held_out_fraction=0.25)


@dataclass(frozen=True)
class DemoSplit(Split):
    """The seeded train/test split of ``make_dataset(seed, n)`` (float64 X, int64 y)."""

    seed: int = DEFAULT_SEED
    n: int = DEFAULT_N

    @property
    def data_version(self) -> str:
        return f"models.demo.make_dataset(seed={self.seed}, n={self.n})"


def fit_demo_classifier(seed: int = DEFAULT_SEED, n: int = DEFAULT_N) -> tuple[GradientBoostingClassifier, DemoSplit]:
    """Generate and split the data, fit the classifier; deterministic for a given (seed, n)."""
    recipe = demo_recipe(seed)
    s = split_data(recipe, *make_dataset(seed, n))
    split = DemoSplit(s.X_train, s.X_test, s.y_train, s.y_test, seed=seed, n=n)
    return fit(recipe, split), split


def _export_demo(clf: GradientBoostingClassifier, split: DemoSplit, out_dir: str | Path, name: str, version: str,
                 data_dir: str | Path | None, force: bool) -> tuple[ModelCard, bool]:
    data_version = split.data_version
    if data_dir is not None:
        data_version = archive_training_data(LocalStorage(data_dir), name, version, split.X_train, split.y_train,
                                             FEATURE_NAMES, CLASS_NAMES).id
    recipe = demo_recipe(split.seed)
    return export(recipe, clf, split, out_dir, force=force, name=name, version=version,
                  training_data_version=data_version,
                  description=f"GradientBoostingClassifier(n_estimators=100, max_depth=3) on the synthetic "
                  f"transaction-risk data; score = P({CLASS_NAMES[1]!r}).")


def export_demo_model(
    clf: GradientBoostingClassifier,
    split: DemoSplit,
    out_dir: str | Path,
    name: str = "demo-risk",
    version: str = "1",
    data_dir: str | Path | None = None,
    *,
    force: bool = False,
) -> ModelCard:
    """Export ``clf`` to ONNX, evaluate it on ``split.X_test``; write model.onnx, the profile, the card.

    With ``data_dir`` the training split is archived there as a dataset version (docs/data_versioning.md)
    and the card's ``training_data_version`` is its content id; otherwise it names the generator call.
    """
    return _export_demo(clf, split, out_dir, name, version, data_dir, force)[0]


def _train(out_dir: str | Path, seed: int, n: int, name: str, version: str, data_dir: str | Path | None,
           force: bool) -> tuple[ModelCard, bool]:
    if (error := foreign_model_error(out_dir)) is not None:
        raise error  # before training, not after
    clf, split = fit_demo_classifier(seed, n)
    return _export_demo(clf, split, out_dir, name, version, data_dir, force)


def train_demo_model(
    out_dir: str | Path, seed: int = DEFAULT_SEED, n: int = DEFAULT_N, name: str = "demo-risk", version: str = "1",
    data_dir: str | Path | None = None, *, force: bool = False,
) -> ModelCard:
    """Train on ``make_dataset(seed, n)``; write model.onnx, reference_profile.json, model_card.json to ``out_dir``.

    Same arguments and library versions give byte-identical files. Raises ``ModelDirError`` for a
    folder it must not write (see models.artifacts); ``force`` replaces a different model of ours.
    """
    return _train(out_dir, seed, n, name, version, data_dir, force)[0]


def ensure_demo_model(model_dir: str | Path, default_dir: str | Path, *, setting: str = DEFAULT_SETTING) -> Path:
    """Return ``model_dir`` if it holds a model; train the demo there only if it is ``default_dir``.

    ``default_dir`` is the demo's own folder (artifacts/models/demo-risk/1 relative to the working
    directory). Any other folder without model.onnx + model_card.json raises ``ModelDirError`` with
    a one-line message naming ``setting`` (the variable the folder came from); the demo model is
    never written into a folder the user chose.
    """
    if served_model_dir(model_dir, default_dir, setting=setting) is None:
        train_demo_model(model_dir)
    return Path(model_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="rows generated (train + test)")
    parser.add_argument("--name", default="demo-risk")
    parser.add_argument("--version", default="1")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="archive the training split there as a dataset version (e.g. .streamscore/data)")
    parser.add_argument("--force", action="store_true",
                        help="replace a different model previously written to --out (never a served one)")
    args = parser.parse_args(argv)

    try:
        card, written = _train(args.out, args.seed, args.n, args.name, args.version, args.data_dir, args.force)
    except ModelDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = card.metrics
    print(f"{'trained' if written else 'unchanged (identical artifacts already there)'}: "
          f"{card.name} v{card.version} -> {args.out}")
    print(f"  recipe   {card.recipe.describe() if card.recipe else '-'}  hash={card.recipe_hash}")
    print(f"  data     seed={card.seed} train={card.n_train} test={card.n_test}")
    print(f"           training_data_sha256={card.training_data_sha256}")
    print(f"           training_data_version={card.training_data_version}")
    print(f"  held-out roc_auc={m['roc_auc']:.4f} accuracy={m['accuracy']:.4f} log_loss={m['log_loss']:.4f}")
    print(f"  onnx     sha256={card.onnx_sha256}")
    print(f"  profile  sha256={card.reference_profile_sha256}  (reference_profile.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
