"""One set of checks run on every ``Scorer`` the worker can serve (as river/checks runs on every estimator).

ONNX models, composites, River snapshots and live learners must answer the same questions the same way, since
routing, drift, replay and ``models diff`` use them only through ``models.scorer.Scorer``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.composite import CompositeScorer, CompositeSpec, Part
from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset
from models.onnx_scorer import OnnxScorer
from models.registry_river import load_river_dir
from models.scorer import ScoreBatch, Scorer
from models.train_demo import train_demo_model
from online_learning.learner import Learner
from online_learning.snapshots import SnapshotStore, dumps_state
from online_learning.specs import get_spec
from streams.learning.scoring import Serving


@pytest.fixture(scope="module")
def onnx(tmp_path_factory: pytest.TempPathFactory) -> OnnxScorer:
    out = tmp_path_factory.mktemp("onnx") / "demo-risk" / "1"
    train_demo_model(out, seed=3, n=3000)
    return OnnxScorer.from_dir(out)


@pytest.fixture(scope="module")
def learner() -> Learner:
    X, y = make_dataset(31, 2000)
    live = Learner(get_spec("logreg"), FEATURE_NAMES, classes=CLASS_NAMES)
    live.learn_many(pd.DataFrame(X, columns=FEATURE_NAMES), [CLASS_NAMES[int(v)] for v in y])
    live.flush()
    return live


def _composite(onnx: OnnxScorer, _tmp: Path, _learner: Learner) -> Scorer:
    spec = CompositeSpec(kind="weighted_average", parts=[Part(model="demo-risk", version="1", weight=3),
                                                         Part(model="demo-risk", version="1", weight=1)])
    return CompositeScorer("demo-risk", "blend", spec, [onnx, onnx])


def _river(_onnx: OnnxScorer, tmp: Path, learner: Learner) -> Scorer:
    store = SnapshotStore(tmp / "snapshots", "logreg", "k" * 32)
    meta = store.write(dumps_state({"model": learner.state()}), version=1, parent=None, kind="learned", worker="w",
                       feature_names=list(FEATURE_NAMES), classes=list(CLASS_NAMES), learned_total=2000)
    return load_river_dir(store.dir / "v000001", meta.sha256, "demo-risk", "river-1")


def _live(_onnx: OnnxScorer, _tmp: Path, learner: Learner) -> Scorer:
    return Serving(learner, 4, "ab" * 32, "logreg")


MAKERS = {"onnx": lambda onnx, tmp, learner: onnx, "composite": _composite, "river": _river, "live": _live}


@pytest.fixture(params=sorted(MAKERS))
def scorer(request: pytest.FixtureRequest, onnx: OnnxScorer, learner: Learner, tmp_path: Path) -> Scorer:
    return MAKERS[request.param](onnx, tmp_path, learner)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    rows, _ = make_dataset(5, 64)
    return rows.astype(np.float32)


def test_it_is_a_scorer_with_an_identity_and_a_signature(scorer: Scorer):
    assert isinstance(scorer, Scorer)
    assert scorer.name and scorer.version and isinstance(scorer.version, str)
    assert len(scorer.sha256) == 64 and int(scorer.sha256, 16) >= 0
    assert list(scorer.feature_names) == list(FEATURE_NAMES)
    assert [str(c) for c in scorer.classes] == list(CLASS_NAMES)


def test_predict_many_returns_one_well_formed_row_per_input(scorer: Scorer, X: np.ndarray):
    batch = scorer.predict_many(X)
    assert isinstance(batch, ScoreBatch) and len(batch) == len(X)
    assert batch.scores.shape == (len(X),) and batch.labels.shape == (len(X),)
    assert batch.probabilities.shape == (len(X), len(scorer.classes))
    assert np.all((batch.probabilities >= 0) & (batch.probabilities <= 1))
    np.testing.assert_allclose(batch.probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(batch.scores, batch.probabilities[:, -1])  # score = positive-class probability
    classes = np.asarray([str(c) for c in scorer.classes])
    assert [str(label) for label in batch.labels] == classes[batch.probabilities.argmax(axis=1)].tolist()


def test_scores_do_not_depend_on_the_batch_they_arrive_in(scorer: Scorer, X: np.ndarray):
    whole = scorer.predict_many(X).scores
    alone = np.concatenate([scorer.predict_many(X[i: i + 1]).scores for i in range(len(X))])
    np.testing.assert_allclose(alone, whole, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(scorer.predict_many(X).scores, whole)  # and again: no state changes


def test_predict_one_agrees_with_predict_many(scorer: Scorer, X: np.ndarray):
    one = scorer.predict_one(dict(zip(scorer.feature_names, X[0].tolist(), strict=True)))
    batch = scorer.predict_many(X[:1])
    assert sorted(one) == ["label", "probabilities", "score"]
    assert one["score"] == pytest.approx(float(batch.scores[0]), abs=1e-6)
    assert str(one["label"]) == str(batch.labels[0])
    assert set(one["probabilities"]) == {str(c) for c in scorer.classes}
