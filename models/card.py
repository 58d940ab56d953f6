"""Model card: what a model is, what it was trained on and how well it did, next to model.onnx.

The worker trusts a model only through its card: ``onnx_sha256`` pins the exact artifact and
``training_data_sha256`` pins the data, so a prediction can be traced back to both;
``reference_profile_sha256`` pins the training-data profile that drift is measured against.
``recipe`` and ``recipe_hash`` say how it was trained (see models.recipe), ``parent_version`` which
version it retrains. Nothing in a card comes from the clock: ``created_at`` is the training data's
time or the recipe's declared date, so the same recipe and data give a byte-identical card.

>>> import tempfile
>>> card = ModelCard(
...     name="demo", version="1", features=["a", "b"], classes=["no", "yes"], onnx_sha256="0" * 64,
...     training_data_sha256="1" * 64, seed=0, n_train=10, n_test=5,
...     metrics={"roc_auc": 0.9, "accuracy": 0.8, "log_loss": 0.3},
...     library_versions={"sklearn": "1.9.1"}, created_at="2026-11-23T00:00:00Z",
... )
>>> with tempfile.TemporaryDirectory() as d:
...     ModelCard.load(card.save(d).parent) == card
True
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.recipe import TRAINED, Recipe

CARD_FILENAME = "model_card.json"
_SHA256 = r"^[0-9a-f]{64}$"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_sha256(X: np.ndarray, y: np.ndarray) -> str:
    """sha256 of X then y, both as C-ordered little-endian float64 bytes.

    Fixing dtype and byte order makes the digest depend on the values only, not on how the
    arrays happen to be stored (int labels, Fortran order, big-endian platforms).

    >>> dataset_sha256(np.zeros((2, 3)), np.array([0, 1])) == dataset_sha256(
    ...     np.zeros((2, 3), dtype=np.float32), np.array([0.0, 1.0]))
    True
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(y, dtype="<f8").tobytes())
    return h.hexdigest()


class ModelCard(BaseModel):
    """Metadata stored as ``model_card.json`` beside ``model.onnx``."""

    # Frozen: a loaded card is evidence, not state. Unknown keys are refused so that a card
    # written by a newer trainer fails loudly instead of silently dropping meaning.
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    framework: Literal["onnx"] = "onnx"
    features: list[str] = Field(min_length=1, description="Input columns, in model order.")
    classes: list[str] = Field(
        min_length=2, description="Output classes in probability-column order; the last is positive."
    )
    onnx_sha256: str = Field(pattern=_SHA256)
    training_data_sha256: str = Field(pattern=_SHA256, description="See dataset_sha256().")
    training_data_version: str | None = None
    reference_profile_sha256: str | None = Field(
        None, pattern=_SHA256, description="sha256 of reference_profile.json (see streams.drift.profile); drift "
        "statistics are computed against that exact file. None for models exported without one."
    )
    seed: int
    n_train: int = Field(ge=0)
    n_test: int = Field(ge=0)
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Held-out metrics: roc_auc, accuracy, log_loss."
    )
    created_at: datetime = Field(
        description="Reproducible build time: the training data's time when it has one, "
        "else the recipe's declared_at; never the wall clock."
    )
    library_versions: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    # None for cards written before recipes existed; they still load.
    recipe: Recipe | None = None
    recipe_hash: str | None = Field(None, pattern=_SHA256, description="Recipe.recipe_hash of ``recipe``.")
    parent_version: str | None = Field(None, description="The model version this one retrains, if any.")

    @field_validator("features", "classes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"names must be unique: {value}")
        return value

    @model_validator(mode="after")
    def _recipe_matches(self) -> ModelCard:
        if self.recipe is not None and self.recipe_hash != self.recipe.recipe_hash:
            raise ValueError(f"recipe_hash {self.recipe_hash} is not the recipe's hash {self.recipe.recipe_hash}")
        return self

    def to_json_bytes(self) -> bytes:
        """The exact bytes of model_card.json (the trainer hashes and compares these)."""
        return (self.model_dump_json(indent=2) + "\n").encode()

    @property
    def positive_class(self) -> str:
        return self.classes[-1]

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/model_card.json`` (creating the directory) and return its path."""
        path = Path(directory) / CARD_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_json_bytes())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ModelCard:
        """Read ``<directory>/model_card.json``; raises pydantic.ValidationError if malformed."""
        path = Path(directory) / CARD_FILENAME
        return cls.model_validate_json(path.read_bytes(), context={TRAINED: True})  # its recipe was checked
