"""Training recipe: the declared, versioned description of how a model is trained.

A recipe names the input features (in model order), the classes (``y`` holds their indices), the
estimator kind and its hyper-parameters, the seed (split, estimator and profile samples) and the
held-out fraction. ``recipe_hash`` is the sha256 of its canonical JSON (sorted keys, no whitespace),
so two recipes hash alike exactly when they train alike; the model card records both.
``declared_at`` is the recipe's own date: the model card's ``created_at`` when the training data
carries no time, because a reproducible build must not read the clock.

>>> r = Recipe(name="demo", version="1", features=("a", "b"), classes=("no", "yes"), estimator="gbt",
...            params={"n_estimators": 10, "max_depth": 2}, seed=3)
>>> r2 = Recipe(name="demo", version="1", features=("a", "b"), classes=("no", "yes"), estimator="gbt",
...             params={"max_depth": 2, "n_estimators": 10}, seed=3)
>>> r.recipe_hash == r2.recipe_hash, len(r.recipe_hash), list(r.params)
(True, 64, ['max_depth', 'n_estimators'])
>>> r.model_copy(update={"seed": 4}).recipe_hash == r.recipe_hash
False
>>> Recipe.model_validate_json(r.canonical_json()) == r
True
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

RECIPE_FORMAT = 1
EstimatorKind = Literal["gbt", "logreg"]
ParamValue = bool | int | float | str | None
# Before any model existed: the date of recipes that do not declare one.
DEFAULT_DECLARED_AT = datetime(2026, 11, 23, tzinfo=timezone.utc)


class Recipe(BaseModel):
    """How to train one model: features, target classes, estimator, hyper-parameters, seed, split."""

    # Frozen and closed, like the model card: a recipe is a declaration, a typo must not pass silently.
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = RECIPE_FORMAT
    name: str = Field(min_length=1, description="Recipe name, e.g. the model family it trains.")
    version: str = Field(min_length=1, description="Recipe version; bump it when anything below changes.")
    features: tuple[str, ...] = Field(min_length=1, description="Input columns, in model order.")
    classes: tuple[str, ...] = Field(min_length=2, description="Class names; y holds indices, the last is positive.")
    estimator: EstimatorKind = Field(description="gbt: GradientBoostingClassifier; logreg: StandardScaler + "
                                     "LogisticRegression.")
    params: dict[str, ParamValue] = Field(default_factory=dict, description="Estimator hyper-parameters.")
    seed: int = Field(description="random_state of the split and the estimator; seed of the profile samples.")
    held_out_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="Stratified held-out split for metrics.")
    declared_at: datetime = Field(DEFAULT_DECLARED_AT, description="When this recipe version was declared.")

    @field_validator("features", "classes")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"names must be unique: {list(value)}")
        return value

    @field_validator("params")
    @classmethod
    def _sorted_params(cls, value: dict[str, ParamValue]) -> dict[str, ParamValue]:
        if "random_state" in value:
            raise ValueError("random_state is the recipe's seed; do not set it in params")
        return dict(sorted(value.items()))  # same parameters, same card bytes, whatever the source order

    @field_validator("declared_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("declared_at needs a time zone (e.g. 2026-11-23T00:00:00Z)")
        return value

    @model_validator(mode="after")
    def _params_exist(self, info: ValidationInfo) -> Recipe:
        # An unknown hyper-parameter fails when the recipe is read, not after the data is loaded. The recipe of a
        # model card (TRAINED) was checked when that model was trained: a worker loading its card does not import
        # scikit-learn (~200 MB of RSS with scipy, pandas and pyarrow) to check it again.
        if info.context is not None and info.context.get(TRAINED):
            return self
        known = set(_classifier(self.estimator)().get_params())
        if unknown := sorted(set(self.params) - known):
            raise ValueError(f"unknown {self.estimator} hyper-parameters {unknown}; known: {sorted(known)}")
        return self

    def build_estimator(self) -> Any:
        """A fresh, unfitted sklearn classifier for this recipe (sklearn is imported only here)."""
        clf = _classifier(self.estimator)(**self.params, random_state=self.seed)
        if self.estimator == "gbt":
            return clf
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # Unscaled amounts (up to 25000) next to 0..1 scores make lbfgs converge badly without a scaler.
        return make_pipeline(StandardScaler(), clf)

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace, no NaN: the exact text ``recipe_hash`` digests."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)

    @property
    def recipe_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def describe(self) -> str:
        """One line for logs and the model card's description."""
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name} recipe v{self.version}: {self.estimator}({params}), seed {self.seed}"

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe from a JSON file; raises pydantic.ValidationError if malformed."""
        return cls.model_validate_json(Path(path).read_bytes())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        return path


TRAINED = "trained"  # validation context: the recipe is a trained model's (models.card.ModelCard.load)


def _classifier(kind: EstimatorKind) -> type:
    if kind == "gbt":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression
