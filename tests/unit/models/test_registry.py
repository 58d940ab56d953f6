"""Model registry: register with signature checks, aliases, rollback, the change log and its replay, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from models.card import CARD_FILENAME, ModelCard
from models.demo import FEATURE_NAMES, sample_events
from models.onnx_scorer import ModelIntegrityError
from models.registry import (
    ModelRegistry,
    RegistryError,
    RegistryState,
    SignatureMismatch,
    load_version,
    read_log,
)
from models.registry_diff import diff_scores
from models.train_demo import train_demo_model


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("versions")
    for version, seed in [("1", 7), ("2", 8), ("3", 9)]:
        train_demo_model(root / version, seed=seed, n=1500, version=version)
    return {v: root / v for v in ("1", "2", "3")}


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    published = []
    reg = ModelRegistry(tmp_path / "registry", FEATURE_NAMES, publish=published.append)
    reg.published = published  # type: ignore[attr-defined]
    return reg


def test_register_records_metadata_and_first_version_is_champion(registry, versions):
    registry.register(versions["1"])
    record = registry.register(versions["2"], aliases=["challenger"])
    state = registry.state.model("demo-risk")
    card = ModelCard.load(versions["2"])
    mv = state.versions["2"]
    assert (mv.sha256, mv.features, mv.classes) == (card.onnx_sha256, card.features, card.classes)
    assert mv.metrics == card.metrics and mv.training_data_version == card.training_data_version
    assert mv.created_at == card.created_at and mv.registered_at_ms > 0
    assert state.aliases == {"champion": "1", "challenger": "2"}
    assert record.seq == 2 and [r.seq for r in registry.published] == [1, 2]
    # the copied artifact loads and is the registered one
    assert load_version(registry.root, mv).sha256 == card.onnx_sha256
    assert (registry.root / mv.path / CARD_FILENAME).exists()


def test_refuses_inputs_that_do_not_match_the_feature_schema(tmp_path, versions):
    reg = ModelRegistry(tmp_path / "r", ["amount", "hour"])  # 'hour' is not an input
    expected = r"inputs do not match the feature schema: missing \['hour'\], unexpected \['hour_of_day'"
    with pytest.raises(SignatureMismatch, match=expected):
        reg.register(versions["1"])
    reordered = ModelRegistry(tmp_path / "r2", list(reversed(FEATURE_NAMES)))
    with pytest.raises(SignatureMismatch, match="order"):
        reordered.register(versions["1"])
    assert not list(read_log(reg.log_path)) and not (tmp_path / "r" / "models").exists()


def test_refuses_other_classes_duplicates_and_tampered_artifacts(registry, versions, tmp_path):
    registry.register(versions["1"])
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(versions["1"])
    other = tmp_path / "other"
    shutil.copytree(versions["2"], other)
    card = json.loads((other / CARD_FILENAME).read_text())
    card["classes"] = ["no", "yes"]
    (other / CARD_FILENAME).write_text(json.dumps(card))
    with pytest.raises(SignatureMismatch, match="classes"):
        registry.register(other)
    tampered = tmp_path / "tampered"
    shutil.copytree(versions["3"], tampered)
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        registry.register(tampered)
    assert sorted(registry.state.model("demo-risk").versions) == ["1"]


def test_promote_rollback_and_rollback_to_any_version(registry, versions):
    for v in ("1", "2", "3"):
        registry.register(versions[v])
    registry.promote("demo-risk", "2")
    registry.promote("demo-risk", "3")
    assert registry.state.model("demo-risk").alias_history["champion"] == ["1", "2", "3"]
    registry.rollback("demo-risk")
    assert registry.state.model("demo-risk").aliases["champion"] == "2"
    registry.rollback("demo-risk")
    assert registry.state.model("demo-risk").aliases["champion"] == "1"
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("demo-risk")
    registry.rollback("demo-risk", to="3")  # forward "rollback" to any registered version
    assert registry.state.model("demo-risk").aliases["champion"] == "3"
    with pytest.raises(RegistryError, match="already is 3"):
        registry.promote("demo-risk", "3")
    with pytest.raises(RegistryError, match="no version or alias '9'"):
        registry.promote("demo-risk", "9")
    registry.promote("demo-risk", "champion", alias="stable")  # an alias may name another alias
    assert registry.state.model("demo-risk").aliases["stable"] == "3"
    registry.unalias("demo-risk", "stable")
    with pytest.raises(RegistryError, match="champion cannot be removed"):
        registry.unalias("demo-risk", "champion")


def test_last_record_per_key_is_the_state_so_compaction_and_replay_agree(registry, versions):
    """A compacted topic keeps only the last record per key; replaying everything must give the same state."""
    registry.register(versions["1"])
    registry.register(versions["2"], aliases=["challenger"])
    registry.promote("demo-risk", "2")
    registry.set_route("features", {"policy": "shadow"})
    registry.rollback("demo-risk")
    full = list(read_log(registry.log_path))
    compacted = list({r.key: r for r in full}.values())
    replayed, after_compaction = RegistryState(full), RegistryState(compacted)
    assert replayed.records == after_compaction.records
    assert RegistryState(reversed(full)).records == replayed.records  # order-independent: seq decides
    assert replayed.model("demo-risk").aliases["champion"] == "1"
    assert replayed.routes() == {"features": {"policy": "shadow"}}
    # a second registry on the same directory sees the same state
    assert ModelRegistry(registry.root, FEATURE_NAMES).state.records == replayed.records


def test_set_route_unless_is_checked_under_the_lock(registry):
    registry.set_route("*", {"policy": "canary"})
    assert registry.set_route("*", {"policy": "canary", "rolled_back": "x"},
                              unless=lambda cur: bool(cur and cur.get("rolled_back"))) is not None
    assert registry.set_route("*", {"policy": "canary", "rolled_back": "y"},
                              unless=lambda cur: bool(cur and cur.get("rolled_back"))) is None
    assert registry.state.routes()["*"]["rolled_back"] == "x"


def test_diff_scores_of_two_versions(versions):
    from models.onnx_scorer import OnnxScorer

    a, b = OnnxScorer.from_dir(versions["1"]), OnnxScorer.from_dir(versions["2"])
    events = sample_events(3, 500) + [{"event_id": "broken", "features": {"amount": "x"}}]
    report = diff_scores(a, b, events, top=5)
    sa = a.predict_many(a.to_matrix([e["features"] for e in events[:500]]))
    sb = b.predict_many(b.to_matrix([e["features"] for e in events[:500]]))
    assert (report.n, report.skipped) == (500, 1)
    assert report.max_abs_diff == pytest.approx(float(abs(sb.scores - sa.scores).max()))
    assert report.agreement == pytest.approx(float((sa.labels == sb.labels).mean()))
    assert 0 < report.mean_abs_diff <= report.max_abs_diff
    assert abs(report.top[0].diff) == pytest.approx(report.max_abs_diff)
    assert [abs(r.diff) for r in report.top] == sorted((abs(r.diff) for r in report.top), reverse=True)


def test_cli_register_promote_rollback_publishes_to_the_control_topic(base_settings, versions, tmp_path, monkeypatch):
    from streams.cli.main import app
    from streams.cli.produce import encode_events, produce
    from streams.kafka.reader import read_all
    from streams.kafka.topics import ensure_topics

    topic = f"_registry-{tmp_path.name}"
    env = {**base_settings.as_env(), "STREAMSCORE_REGISTRY_DIR": str(tmp_path / "reg"),
           "STREAMSCORE_REGISTRY_TOPIC": topic, "STREAMSCORE_MODEL_DIR": str(versions["1"]),
           "STREAMSCORE_REGISTRY_MODEL": "demo-risk"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from streams.cli import models as models_cli

    monkeypatch.setattr(models_cli.console, "width", 200)  # tables unwrapped, as on a wide terminal
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["models", *args])
        assert result.exit_code == code, result.output
        return result.output

    run("register", str(versions["1"]))
    run("register", str(versions["2"]), "--alias", "challenger")
    run("promote", "demo-risk", "2")
    run("rollback", "demo-risk")
    assert "not set" in run("alias", "demo-risk", "nope", "--remove", code=2)  # refused: exit 2
    out = run("list")
    assert "demo-risk" in out and "champion" in out and "challenger" in out
    assert '"version": "1"' in run("show", "demo-risk")
    run("route", "*", '{"policy": "ab", "variants": {"champion": 50, "challenger": 50}}')
    assert "no version or alias 'ghost'" in run("route", "x", '{"policy": "shadow", "candidate": "ghost"}', code=2)
    assert "rollback" in run("log")
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(e) for e in sample_events(4, 50)))
    report = orjson.loads(run("diff", "demo-risk", "1", "2", "--data", str(events), "--json"))
    assert report["n"] == 50 and report["a"] == "demo-risk@1" and report["b"] == "demo-risk@2"
    input_topic = f"features-{tmp_path.name}"
    ensure_topics(base_settings, [input_topic])
    produce(base_settings, input_topic, encode_events(sample_events(5, 80)))
    newest = orjson.loads(run("diff", "demo-risk", "champion", "challenger", "--topic", input_topic,
                              "--last", "30", "--json"))
    assert newest["n"] == 30  # the newest 30 of each partition, then the 30 newest overall

    records = [orjson.loads(m.value()) for m in read_all(base_settings, topic)]
    assert [r["change"]["kind"] for r in records] == ["register", "register", "promote", "rollback", "route"]
    assert records[-2]["model"]["aliases"]["champion"] == "1"
    assert run("sync") and len(read_all(base_settings, topic)) == 7  # the 2 latest keys published again


# --- composites ------------------------------------------------------------------------------------
def test_composite_kinds_combine_the_parts_as_declared(versions):
    import numpy as np

    from models.composite import CompositeScorer, CompositeSpec, Part, fit_stacking
    from models.demo import make_dataset
    from models.onnx_scorer import OnnxScorer

    a, b = OnnxScorer.from_dir(versions["1"]), OnnxScorer.from_dir(versions["2"])
    X, y = make_dataset(21, 2000)
    X = X.astype(np.float32)
    pa, pb = a.predict_many(X), b.predict_many(X)
    parts = [Part(model="demo-risk", version="1", weight=1), Part(model="demo-risk", version="2", weight=3)]

    avg = CompositeScorer("demo-risk", "avg", CompositeSpec(kind="weighted_average", parts=parts), [a, b])
    out = avg.predict_many(X)
    np.testing.assert_allclose(out.probabilities, (pa.probabilities + 3 * pb.probabilities) / 4, rtol=0, atol=1e-12)
    assert list(out.labels) == [avg.classes[i] for i in out.probabilities.argmax(axis=1)]

    worst = CompositeScorer("demo-risk", "max", CompositeSpec(kind="rule", rule="max", parts=parts), [a, b])
    np.testing.assert_array_equal(worst.predict_many(X).scores, np.maximum(pa.scores, pb.scores))

    coefficients, intercept = fit_stacking([a, b], X[:1000], y[:1000])
    stack = CompositeScorer("demo-risk", "stack", CompositeSpec(kind="stacking", parts=parts,
                                                                coefficients=coefficients, intercept=intercept), [a, b])
    clip = lambda p: np.clip(p, 1e-7, 1 - 1e-7)  # noqa: E731
    logit = lambda p: np.log(clip(p) / (1 - clip(p)))  # noqa: E731
    z = intercept + coefficients[0] * logit(pa.scores) + coefficients[1] * logit(pb.scores)
    np.testing.assert_allclose(stack.predict_many(X).scores, 1 / (1 + np.exp(-z)), rtol=1e-12)
    from sklearn.metrics import roc_auc_score

    held_out = roc_auc_score(y[1000:], stack.predict_many(X[1000:]).scores)
    assert held_out >= min(roc_auc_score(y[1000:], pa.scores[1000:]), roc_auc_score(y[1000:], pb.scores[1000:]))
    with pytest.raises(ValueError, match="one coefficient per part"):
        CompositeSpec(kind="stacking", parts=parts, coefficients=[1.0])


def test_register_composite_pins_parts_and_loads_as_one_version(registry, versions):
    from models.composite import CompositeScorer, CompositeSpec, Part

    registry.register(versions["1"])
    registry.register(versions["2"], aliases=["challenger"])
    spec = CompositeSpec(kind="weighted_average", parts=[Part(model="demo-risk", version="champion"),
                                                         Part(model="demo-risk", version="challenger")])
    registry.register_composite("demo-risk", "blend-1", spec, aliases=["blend"])
    mv = registry.state.model("demo-risk").resolve("blend")
    assert mv.kind == "composite" and [p["version"] for p in mv.composite["parts"]] == ["1", "2"]  # pinned
    assert [p["sha256"] for p in mv.composite["parts"]] == [registry.state.model("demo-risk").versions[v].sha256
                                                            for v in ("1", "2")]
    scorer = registry.load_scorer("demo-risk", "blend")
    assert isinstance(scorer, CompositeScorer) and (scorer.version, scorer.sha256) == ("blend-1", mv.sha256)
    registry.register(versions["3"], aliases=["challenger"])  # moving an alias later does not change the composite
    assert registry.load_scorer("demo-risk", "blend-1").sha256 == mv.sha256
    with pytest.raises(RegistryError, match="parts must be ONNX"):
        registry.register_composite("demo-risk", "nested", CompositeSpec(
            kind="rule", parts=[Part(model="demo-risk", version="blend-1"), Part(model="demo-risk", version="1")]))
    with pytest.raises(RegistryError, match="already registered"):
        registry.register_composite("demo-risk", "blend-1", spec)
    tampered = mv.model_copy(update={"composite": {**mv.composite, "kind": "rule"}})
    with pytest.raises(RegistryError, match="does not match its sha256"):
        load_version(registry.root, tampered)


def test_cli_diff_on_an_archived_dataset_version(registry, versions, tmp_path, monkeypatch):
    """`models diff --data <version id>` reads the input rows of a dataset version (datastore.dataset)."""
    from datastore.archive import Archive, TopicSpec
    from datastore.canonical import SourceRecord
    from datastore.dataset import Selection, snapshot
    from datastore.storage import LocalStorage
    from streams.cli import models as models_cli
    from streams.cli.main import app

    registry.register(versions["1"])
    registry.register(versions["2"], aliases=["challenger"])
    store = LocalStorage(tmp_path / "data")
    events = sample_events(6, 120)
    archive = Archive(store, {"features": TopicSpec("event", "json")}, 50, 60.0)
    archive.add([(SourceRecord("features", 0, i, 1_700_000_000_000 + i, e["event_id"].encode(), orjson.dumps(e), []),
                  i) for i, e in enumerate(events)])
    archive.seal_all()
    archive.close()
    version, _ = snapshot(store, Selection(topics=["features"]))
    for k, v in {"STREAMSCORE_REGISTRY_DIR": str(registry.root), "STREAMSCORE_DATA_DIR": str(tmp_path / "data"),
                 "STREAMSCORE_MODEL_DIR": str(versions["1"]),
                 "STREAMSCORE_SIGNING_KEY_FILE": str(registry.root / ".signing-key")}.items():  # the key that signed
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(models_cli.console, "width", 200)
    result = CliRunner().invoke(app, ["models", "diff", "demo-risk", "champion", "challenger", "--data",
                                      version.id[:12], "--json"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    from models.onnx_scorer import OnnxScorer

    direct = diff_scores(OnnxScorer.from_dir(versions["1"]), OnnxScorer.from_dir(versions["2"]), events)
    assert report["n"] == 120 and report["max_abs_diff"] == direct.max_abs_diff
    assert report["agreement"] == direct.agreement


# --- River snapshots -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def river_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logreg learner that learned 2000 demo rows, written by the online-learning snapshot store."""
    import pandas as pd

    from models.demo import CLASS_NAMES, make_dataset
    from online_learning.learner import Learner
    from online_learning.snapshots import SnapshotStore, dumps_state
    from online_learning.specs import get_spec

    X, y = make_dataset(31, 2000)
    learner = Learner(get_spec("logreg"), FEATURE_NAMES, classes=CLASS_NAMES)
    learner.learn_many(pd.DataFrame(X, columns=FEATURE_NAMES), [CLASS_NAMES[int(v)] for v in y])
    learner.flush()
    store = SnapshotStore(tmp_path_factory.mktemp("snapshots"), "logreg")
    store.write(dumps_state({"model": learner.state()}), version=1, parent=None, kind="learned", worker="w",
                feature_names=list(FEATURE_NAMES), classes=list(CLASS_NAMES), learned_total=2000)
    learner.close()
    return store.dir / "v000001"


def test_register_a_river_snapshot_and_score_it_like_any_version(registry, versions, river_snapshot, tmp_path):
    import numpy as np
    import pandas as pd

    from models.demo import make_dataset
    from models.registry_river import RiverScorer
    from online_learning.snapshots import SnapshotStore

    registry.register(versions["1"])
    registry.register_river(river_snapshot, "demo-risk", "river-1", aliases=["challenger"])
    mv = registry.state.model("demo-risk").resolve("challenger")
    assert (mv.kind, mv.version, mv.features) == ("river", "river-1", list(FEATURE_NAMES))
    assert "2000 labels" in mv.training_data_version
    scorer = registry.load_scorer("demo-risk", "challenger")
    assert isinstance(scorer, RiverScorer) and scorer.sha256 == mv.sha256
    X, y = make_dataset(32, 500)
    out = scorer.predict_many(X.astype(np.float32))
    _meta, model = SnapshotStore(river_snapshot.parent.parent, "logreg").load(1)
    frame = pd.DataFrame(X.astype(np.float32).astype(np.float64), columns=FEATURE_NAMES)
    expected = model["model"].predict_proba_many(frame)[True].to_numpy()  # River targets are booleans
    np.testing.assert_allclose(out.scores, expected, rtol=1e-12)
    assert float(np.mean((out.scores > 0.5) == (y == 1))) > 0.8  # it learned something
    report = diff_scores(registry.load_scorer("demo-risk", "1"), scorer, [
        {"event_id": str(i), "features": dict(zip(FEATURE_NAMES, row, strict=True))} for i, row in enumerate(X)])
    assert report.n == 500 and report.agreement > 0.8  # ONNX vs River, by `models diff`

    # a River arm in a running pipeline: an A/B split between the ONNX champion and the snapshot
    from streams.routing.router import Router
    from streams.routing.watcher import TableBuilder
    from streams.scoring.pipeline import InboundMessage, ScoringPipeline
    from streams.settings import Settings

    settings = Settings(registry_model="demo-risk", registry_dir=registry.root, worker_id="w",
                        routes={"*": {"policy": "ab", "variants": {"champion": 50, "challenger": 50}}})
    pipeline = ScoringPipeline(settings.scoring, registry.load_scorer("demo-risk", "1"))
    pipeline.router = Router(TableBuilder(settings, tuple(FEATURE_NAMES)).build(registry.state, None))
    events = sample_events(33, 300, n_entities=300)
    result = pipeline.process([InboundMessage("features", 0, i, None, orjson.dumps(e)) for i, e in enumerate(events)])
    preds = [orjson.loads(o.value) for o in result.outputs]
    assert result.scored == 300 and {p["model_version"] for p in preds} == {"1", "river-1"}
    river_preds = {p["event_id"]: p for p in preds if p["model_version"] == "river-1"}
    rows = np.array([[e["features"][f] for f in FEATURE_NAMES] for e in events if e["event_id"] in river_preds],
                    dtype=np.float32)
    np.testing.assert_array_equal([p["score"] for p in river_preds.values()], scorer.predict_many(rows).scores)

    (registry.root / mv.path / "model.pkl").write_bytes(b"\x80\x04tampered")
    with pytest.raises(ValueError, match="is not the registered"):
        registry.load_scorer("demo-risk", "challenger")
    narrow = ModelRegistry(tmp_path / "narrow", FEATURE_NAMES[:-1])
    with pytest.raises(SignatureMismatch, match="River logreg v1"):
        narrow.register_river(river_snapshot, "demo-risk", "river-1")
