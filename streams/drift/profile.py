"""Reference profile: what the training data (and the model's held-out scores) looked like.

Drift is always relative to something. The profile is written at export as ``reference_profile.json``
next to ``model.onnx``, and the model card pins its sha256, so a drift statistic can be traced to the
exact reference it was computed against. Per feature it keeps:

* quantile bin edges and the reference counts in those bins (PSI),
* mean, standard deviation and missing rate,
* a fixed-size random sample of the values (KS and Wasserstein need raw values, not bins),
* for categorical features (few distinct values, e.g. ``is_foreign``) the category values and counts
  (chi-square) instead of quantile bins.

The prediction profile is the same summary of the model's scores on the *held-out* split, which is
what the scores of undrifted live traffic should look like.

>>> import tempfile
>>> rng = np.random.default_rng(0)
>>> X = np.column_stack([rng.normal(size=500), (rng.random(500) < 0.1).astype(float)])
>>> profile = build_profile(X, ["x", "flag"], rng.random(200), model_name="m", model_version="1",
...                         source="example", sample_size=100)
>>> [(f.name, f.kind, len(f.counts)) for f in profile.features]
[('x', 'numeric', 10), ('flag', 'categorical', 2)]
>>> profile.feature("flag").categories, len(profile.feature("x").sample), profile.prediction.n
([0.0, 1.0], 100, 200)
>>> with tempfile.TemporaryDirectory() as d:
...     digest = profile.save(d)
...     ReferenceProfile.load(d, expected_sha256=digest) == profile
True
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from streams.drift.stats import bin_counts, quantile_edges

PROFILE_FILENAME = "reference_profile.json"
PROFILE_FORMAT = 1
DEFAULT_BINS = 10
DEFAULT_SAMPLE_SIZE = 2000
# A feature with at most this many distinct reference values is categorical (chi-square, not KS):
# binary flags like is_foreign, small enums. Counts and hours have more and are binned by quantile.
DEFAULT_MAX_CATEGORIES = 5


class ProfileIntegrityError(RuntimeError):
    """reference_profile.json is not the file the model card pins."""


class FeatureProfile(BaseModel):
    """Summary of one column (a feature, or the model score) of the reference data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["numeric", "categorical"]
    n: int = Field(ge=0, description="Rows of the reference, missing values included.")
    missing_rate: float = Field(ge=0, le=1)
    mean: float
    std: float
    edges: list[float] = Field(default_factory=list, description="numeric: interior quantile bin edges.")
    categories: list[float] = Field(default_factory=list, description="categorical: the distinct values.")
    counts: list[int] = Field(description="Reference counts per bin (numeric) or per category (categorical).")
    sample: list[float] = Field(default_factory=list, description="Random sample of the finite values.")

    @property
    def proportions(self) -> np.ndarray:
        counts = np.asarray(self.counts, np.float64)
        return counts / counts.sum() if counts.sum() else counts

    @cached_property
    def sample_array(self) -> np.ndarray:
        return np.asarray(self.sample, np.float64)

    @cached_property
    def edges_array(self) -> np.ndarray:
        return np.asarray(self.edges, np.float64)


class ReferenceProfile(BaseModel):
    """The reference every drift statistic of one model version is computed against."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = PROFILE_FORMAT
    model_name: str
    model_version: str
    source: str = Field(description="What the reference data is, e.g. the training split's generator.")
    seed: int = Field(description="Seed of the random samples, so the profile is reproducible.")
    features: list[FeatureProfile]
    prediction: FeatureProfile = Field(description="The model's scores on held-out data.")

    def feature(self, name: str) -> FeatureProfile:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r} in the profile of {self.model_name}@{self.model_version}")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json_bytes(self) -> bytes:
        return (self.model_dump_json(indent=1) + "\n").encode()

    def save(self, directory: str | Path) -> str:
        """Write ``<directory>/reference_profile.json`` atomically; return its sha256 (for the model card)."""
        data = self.to_json_bytes()
        path = Path(directory) / PROFILE_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # a reader never sees a half-written profile
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, directory: str | Path, expected_sha256: str | None = None) -> ReferenceProfile:
        """Read the profile; with ``expected_sha256`` (from the model card) refuse any other file."""
        data = (Path(directory) / PROFILE_FILENAME).read_bytes()
        if expected_sha256 is not None:
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected_sha256:
                raise ProfileIntegrityError(
                    f"{PROFILE_FILENAME} in {directory} has sha256 {digest}, the model card pins {expected_sha256}"
                )
        return cls.model_validate_json(data)


def profile_column(
    values: np.ndarray,
    name: str,
    rng: np.random.Generator,
    *,
    n_bins: int = DEFAULT_BINS,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    kind: Literal["numeric", "categorical"] | None = None,
) -> FeatureProfile:
    """Summarise one column; ``kind`` is inferred from the number of distinct values unless given.

    >>> f = profile_column(np.array([1.0, 2.0, np.nan, 4.0]), "x", np.random.default_rng(0), n_bins=2)
    >>> f.kind, f.missing_rate, f.edges, f.counts
    ('categorical', 0.25, [], [1, 1, 1])
    """
    x = np.asarray(values, np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        raise ValueError(f"column {name!r} has no finite values")
    distinct = np.unique(finite)
    if kind is None:
        kind = "categorical" if distinct.size <= max_categories else "numeric"
    if kind == "categorical":
        edges: list[float] = []
        categories = distinct.tolist()
        counts = np.searchsorted(distinct, finite)  # every value is one of the categories
        counts = np.bincount(counts, minlength=distinct.size)
        sample: list[float] = []  # chi-square works on the counts; a sample would add nothing
    else:
        edge_array = quantile_edges(finite, n_bins)
        edges, categories = edge_array.tolist(), []
        counts = bin_counts(finite, edge_array)
        take = min(sample_size, finite.size)
        sample = np.sort(rng.choice(finite, size=take, replace=False)).tolist()
    return FeatureProfile(
        name=name,
        kind=kind,
        n=int(x.size),
        missing_rate=float(np.isnan(x).mean()),
        mean=float(finite.mean()),
        std=float(finite.std()),
        edges=edges,
        categories=categories,
        counts=[int(c) for c in counts],
        sample=sample,
    )


def build_profile(
    X: np.ndarray,
    feature_names: Sequence[str],
    held_out_scores: np.ndarray,
    *,
    model_name: str,
    model_version: str,
    source: str,
    seed: int = 0,
    n_bins: int = DEFAULT_BINS,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> ReferenceProfile:
    """Profile the training features ``X`` (n, k) and the held-out scores; deterministic for a seed."""
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise ValueError(f"X has shape {X.shape}, expected (n, {len(feature_names)})")
    rng = np.random.default_rng(seed)
    options = {"n_bins": n_bins, "sample_size": sample_size, "max_categories": max_categories}
    features = [profile_column(X[:, j], name, rng, **options) for j, name in enumerate(feature_names)]
    # Scores are continuous probabilities: always binned, never treated as categories.
    prediction = profile_column(held_out_scores, "score", rng, n_bins=n_bins, sample_size=sample_size, kind="numeric")
    return ReferenceProfile(model_name=model_name, model_version=model_version, source=source, seed=seed,
                            features=features, prediction=prediction)
