"""Named learner specs: which River pipeline a learner name builds, and which task it solves.

A spec is a recipe, not a model: ``build()`` returns a fresh, untrained pipeline each call, so a
worker with no snapshot yet and a unit test start from the same state. Names are what operators
type (``STREAMSCORE_LEARNER=logreg``) and what online predictions carry as ``model_name``.

>>> spec = get_spec("logreg")
>>> spec.task, supports_minibatch(spec.build(), spec.task)
('binary', True)
>>> supports_minibatch(get_spec("hoeffding").build(), "binary")
False
>>> sorted(REGISTRY)
['arf', 'hoeffding', 'hoeffding-reg', 'linreg', 'logreg']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from online_learning.river_import import river_without_sklearn

with river_without_sklearn():  # 89 MB instead of 160 (online_learning/river_import.py)
    from river import base, compose, forest, linear_model, optim, preprocessing, tree

Task = Literal["binary", "regression"]

# learn_many takes ONE step along the batch's mean gradient, so with a fixed learning rate a label in
# a batch of 1 would move the model 256x more than a label in a batch of 256. Weighting each batch by
# n / MINIBATCH_REFERENCE makes every label count the same however the stream happens to be batched
# (measured on the demo stream: batches of 1..19 reach the same log loss as fixed batches of 256).
MINIBATCH_REFERENCE = 256


@dataclass(frozen=True)
class LearnerSpec:
    name: str
    task: Task
    build: Callable[[], Any]
    description: str


def supports_minibatch(model: Any, task: Task) -> bool:
    """True when every step of ``model`` has the pandas mini-batch methods (learn_many and predict_*_many).

    Checked on the steps, not the pipeline: ``Pipeline`` always *has* learn_many, but it fails at call
    time when its last step has none.
    """
    steps = list(model.steps.values()) if isinstance(model, compose.Pipeline) else [model]
    *transformers, last = steps
    wanted = base.MiniBatchClassifier if task == "binary" else base.MiniBatchRegressor
    return isinstance(last, wanted) and all(isinstance(t, base.MiniBatchTransformer) for t in transformers)


def _logreg() -> Any:
    # lr 4 per 256-label batch = 1/64 per label on standardised features; measured on the demo stream
    # (6000 events, batches of 250): log loss 0.33 vs 0.68 with River's default SGD(0.01), which
    # barely moves in mini-batch mode because it takes one step per batch.
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(4.0), intercept_lr=4.0)


def _linreg() -> Any:
    # Squared loss has unbounded gradients: SGD(2.0) diverged on the demo's risk target in batches of 250
    # (measured), SGD(0.5) did not.
    return preprocessing.StandardScaler() | linear_model.LinearRegression(optimizer=optim.SGD(0.5), intercept_lr=0.5)


REGISTRY: dict[str, LearnerSpec] = {
    spec.name: spec
    for spec in (
        LearnerSpec("logreg", "binary", _logreg,
                    "StandardScaler | LogisticRegression; mini-batch learn_many/predict_proba_many on pandas"),
        LearnerSpec("hoeffding", "binary", lambda: tree.HoeffdingTreeClassifier(grace_period=100),
                    "Hoeffding tree (VFDT); learns one event at a time on a background thread"),
        LearnerSpec("arf", "binary", lambda: forest.ARFClassifier(n_models=5, seed=42),
                    "Adaptive random forest of 5 trees with drift detectors; background learning"),
        LearnerSpec("linreg", "regression", _linreg,
                    "StandardScaler | LinearRegression; mini-batch learn_many/predict_many on pandas"),
        LearnerSpec("hoeffding-reg", "regression",
                    lambda: preprocessing.StandardScaler() | tree.HoeffdingTreeRegressor(grace_period=100),
                    "StandardScaler | Hoeffding tree regressor; background learning"),
    )
}


def get_spec(name: str) -> LearnerSpec:
    """The spec registered under ``name``; KeyError naming the known ones otherwise.

    >>> get_spec("nope")
    Traceback (most recent call last):
    ...
    KeyError: "unknown learner 'nope'; known: ['arf', 'hoeffding', 'hoeffding-reg', 'linreg', 'logreg']"
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown learner {name!r}; known: {sorted(REGISTRY)}") from None
