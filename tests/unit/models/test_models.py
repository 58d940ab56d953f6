"""Demo data, model card, training/export and the ONNX scorer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from models.card import ModelCard, dataset_sha256
from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset, sample_events
from models.onnx_scorer import ModelIntegrityError, OnnxScorer
from models.train_demo import DemoSplit, export_demo_model, fit_demo_classifier, main, train_demo_model

AUC_BAR = 0.88  # the hidden rule's own (Bayes) AUC is ~0.93; the model reaches ~0.925
PARITY = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[GradientBoostingClassifier, DemoSplit, Path]:
    """The default demo model (seed 7, n 20000), fitted once for the whole module."""
    out = tmp_path_factory.mktemp("demo-risk") / "1"
    clf, split = fit_demo_classifier(seed=7, n=20000)
    export_demo_model(clf, split, out)
    return clf, split, out


@pytest.fixture(scope="module")
def scorer(trained: tuple[GradientBoostingClassifier, DemoSplit, Path]) -> OnnxScorer:
    return OnnxScorer.from_dir(trained[2])


# --- demo data ---------------------------------------------------------------------------------


def test_dataset_is_seeded_and_plausible() -> None:
    X, y = make_dataset(seed=11, n=5000)
    X2, y2 = make_dataset(seed=11, n=5000)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert not np.array_equal(X, make_dataset(seed=12, n=5000)[0])
    assert X.shape == (5000, len(FEATURE_NAMES)) == (5000, 8) and X.dtype == np.float64
    assert 0.10 <= y.mean() <= 0.20
    cols = dict(zip(FEATURE_NAMES, X.T, strict=True))
    assert (cols["amount"] > 0).all()
    assert set(np.unique(cols["hour_of_day"])) <= set(range(24))
    assert set(np.unique(cols["is_foreign"])) == {0.0, 1.0}
    for name in ("merchant_risk", "device_score"):
        assert ((cols[name] >= 0) & (cols[name] <= 1)).all()
    # shift drifts the population towards riskier transactions
    Xs, ys = make_dataset(seed=11, n=5000, shift=1.0)
    assert Xs[:, 0].mean() > X[:, 0].mean() and ys.mean() > y.mean()


def test_sample_events_match_dataset_rows() -> None:
    events = sample_events(seed=5, n=2000, start_ms=1_700_000_000_000)
    X, _ = make_dataset(seed=5, n=2000)
    assert [e["event_id"] for e in events[:2]] == ["evt-5-0", "evt-5-1"]
    assert all(e["schema_version"] == 1 for e in events)
    times = [e["event_time"] for e in events]
    assert times[0] == 1_700_000_000_000 and times == sorted(times)
    entities = {e["entity_id"] for e in events}
    assert 100 < len(entities) <= 300 and all(k.startswith("acct-") for k in entities)
    rows = np.array([[e["features"][f] for f in FEATURE_NAMES] for e in events])
    assert np.array_equal(rows, X)
    json.dumps(events)  # plain Python types only
    assert sample_events(seed=5, n=50, start_ms=0) == sample_events(seed=5, n=50, start_ms=0)


# --- training and the card ---------------------------------------------------------------------


def test_card_is_complete_and_round_trips(trained: tuple[GradientBoostingClassifier, DemoSplit, Path]) -> None:
    _, split, out = trained
    card = ModelCard.load(out)
    assert (card.name, card.version, card.framework) == ("demo-risk", "1", "onnx")
    assert card.features == list(FEATURE_NAMES) and card.classes == list(CLASS_NAMES)
    assert (card.seed, card.n_train, card.n_test) == (7, 15000, 5000)
    assert card.training_data_sha256 == dataset_sha256(split.X_train, split.y_train)
    assert set(card.metrics) == {"roc_auc", "accuracy", "log_loss"}
    assert {"sklearn", "skl2onnx", "onnxruntime"} <= set(card.library_versions)
    assert ModelCard.load(card.save(out.parent / "copy").parent) == card


def test_a_card_loads_without_checking_its_trained_recipe_against_sklearn_but_a_recipe_is_checked(
        trained, tmp_path: Path) -> None:
    """A worker loads its model's card without importing sklearn (tests/e2e/test_worker_footprint.py): the card's
    recipe was checked when the model was trained. A recipe read as a recipe still fails on an unknown parameter."""
    from pydantic import ValidationError

    from models.recipe import TRAINED, Recipe

    card_json = json.loads((trained[2] / "model_card.json").read_text())
    card_json["recipe"]["params"]["no_such_param"] = 1  # as if trained by a sklearn that had it
    card_json["recipe_hash"] = Recipe.model_validate(card_json["recipe"], context={TRAINED: True}).recipe_hash
    (tmp_path / "model_card.json").write_text(json.dumps(card_json))
    assert ModelCard.load(tmp_path).recipe.params["no_such_param"] == 1
    with pytest.raises(ValidationError, match="unknown gbt hyper-parameters \\['no_such_param'\\]"):
        Recipe.model_validate(card_json["recipe"])


def test_model_beats_the_bar_on_held_out_data(trained, scorer: OnnxScorer) -> None:
    _, split, out = trained
    assert ModelCard.load(out).metrics["roc_auc"] > AUC_BAR
    # and on fresh data it never saw, scored through the production path
    X, y = make_dataset(seed=1234, n=5000)
    assert roc_auc_score(y, scorer.predict_many(X.astype(np.float32)).scores) > AUC_BAR


def test_onnx_scores_equal_sklearn(trained, scorer: OnnxScorer) -> None:
    clf, split, _ = trained
    batch = scorer.predict_many(split.X_test.astype(np.float32))
    expected = clf.predict_proba(split.X_test)
    np.testing.assert_allclose(batch.probabilities, expected, rtol=0, atol=PARITY)
    np.testing.assert_allclose(batch.scores, expected[:, 1], rtol=0, atol=PARITY)
    assert batch.scores.dtype == batch.probabilities.dtype == np.float64
    agree = (batch.labels == np.asarray(CLASS_NAMES)[clf.predict(split.X_test)]).mean()
    assert agree > 0.999  # only rows within float32 noise of 0.5 may differ


# --- scorer ------------------------------------------------------------------------------------


def test_predict_one_equals_predict_many_row(scorer: OnnxScorer) -> None:
    events = sample_events(seed=9, n=32, start_ms=0)
    batch = scorer.predict_many(scorer.to_matrix([e["features"] for e in events]))
    for i in (0, 7, 31):
        one = scorer.predict_one(events[i]["features"])
        assert one["score"] == batch.scores[i]
        assert one["label"] == batch.labels[i]
        assert list(one["probabilities"].values()) == batch.probabilities[i].tolist()
        assert list(one["probabilities"]) == list(CLASS_NAMES)


def test_scorer_metadata(scorer: OnnxScorer, trained) -> None:
    card = ModelCard.load(trained[2])
    assert (scorer.name, scorer.version, scorer.sha256) == (card.name, card.version, card.onnx_sha256)
    assert scorer.feature_names == FEATURE_NAMES and scorer.classes == CLASS_NAMES
    assert scorer.card == card


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 8), np.float64),  # wrong dtype: no silent copy on the hot path
        np.zeros(8, np.float32),  # 1-D
        np.zeros((2, 7), np.float32),  # wrong width
        [[0.0] * 8],  # not an array
    ],
)
def test_predict_many_rejects_bad_input(scorer: OnnxScorer, bad) -> None:
    with pytest.raises(ValueError, match="predict_many expects"):
        scorer.predict_many(bad)


def test_empty_batch_and_missing_feature(scorer: OnnxScorer) -> None:
    empty = scorer.predict_many(np.zeros((0, 8), np.float32))
    assert len(empty) == 0 and empty.probabilities.shape == (0, 2)
    features = dict.fromkeys(FEATURE_NAMES, 1.0)
    del features["device_score"]
    with pytest.raises(ValueError, match="device_score"):
        scorer.predict_one(features)


def test_sha256_mismatch_is_refused(trained, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(trained[2], tampered)
    model = tampered / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxScorer.from_dir(tampered)

    # an intact model under a card that pins another artifact is refused too
    swapped = tmp_path / "swapped"
    shutil.copytree(trained[2], swapped)
    card = ModelCard.load(swapped)
    card.model_copy(update={"onnx_sha256": "0" * 64}).save(swapped)
    with pytest.raises(ModelIntegrityError, match="refusing to load"):
        OnnxScorer.from_dir(swapped)


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = train_demo_model(tmp_path / "a", seed=3, n=3000)
    b = train_demo_model(tmp_path / "b", seed=3, n=3000)
    assert a.training_data_sha256 == b.training_data_sha256
    assert a.onnx_sha256 == b.onnx_sha256  # reproducible build: byte-identical model.onnx
    assert a.metrics == b.metrics
    X = make_dataset(seed=99, n=500)[0].astype(np.float32)
    pa = OnnxScorer.from_dir(tmp_path / "a").predict_many(X)
    pb = OnnxScorer.from_dir(tmp_path / "b").predict_many(X)
    assert np.array_equal(pa.probabilities, pb.probabilities)
    c = train_demo_model(tmp_path / "c", seed=4, n=3000)
    assert c.training_data_sha256 != a.training_data_sha256


def test_cli_writes_artifacts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--seed", "2", "--n", "1500"]) == 0
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model_card.json", "reference_profile.json"}
    text = capsys.readouterr().out
    assert "roc_auc=" in text and ModelCard.load(out).onnx_sha256 in text
