"""Model artifacts: reproducible across processes, never written over a foreign or served model, recipes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import models.artifacts as artifacts
from models.artifacts import ModelDirError, write_artifacts
from models.card import ModelCard
from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset
from models.onnx_scorer import OnnxScorer
from models.recipe import Recipe
from models.serving import LEASE_PREFIX, hold_serving_lease, serving_pids
from models.train_demo import DEFAULT_OUT, demo_recipe, ensure_demo_model, main, train_demo_model
from models.training import train

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = {"model.onnx", "model_card.json", "reference_profile.json"}
SMALL = {"seed": 3, "n": 1500}


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def state(directory: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file: an untouched folder keeps both."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in directory.iterdir()}


def run_train_demo(out: Path, hash_seed: str | None, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env["PYTHONPATH"] = str(REPO)
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed
    return subprocess.run([sys.executable, "-m", "models.train_demo", "--out", str(out), "--seed", "3", "--n", "3000",
                           *extra], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


# --- reproducibility -----------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_artifacts_in_any_process(tmp_path: Path) -> None:
    # Unfixed, skl2onnx's opset_import order flips between hash seeds 1 and 6 (1 and 2 happen to
    # agree); "random" lets Python pick one, as an unset variable does.
    runs = {seed: tmp_path / f"hash-{seed}" for seed in ("1", "2", "6", "random")}
    for seed, out in runs.items():
        proc = run_train_demo(out, seed)
        assert proc.returncode == 0, proc.stderr
    first = digests(runs["1"])
    assert set(first) == ARTIFACTS
    for out in runs.values():
        assert digests(out) == first
    # and the parent process (its own hash seed) agrees too
    train_demo_model(tmp_path / "here", seed=3, n=3000)
    assert digests(tmp_path / "here") == first


def test_onnx_opsets_are_in_canonical_order(tmp_path: Path) -> None:
    import onnx

    train_demo_model(tmp_path, **SMALL)
    model = onnx.load(tmp_path / "model.onnx")
    domains = [o.domain for o in model.opset_import]
    assert domains == sorted(domains) == ["", "ai.onnx.ml"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["recipe_hash"] == demo_recipe(3).recipe_hash and model.graph.name == "demo-risk-1"


def test_card_time_comes_from_the_recipe_not_the_clock(tmp_path: Path) -> None:
    card = train_demo_model(tmp_path, **SMALL)
    assert card.created_at == demo_recipe(3).declared_at
    X, y = make_dataset(seed=3, n=1500)
    when = demo_recipe(3).declared_at.replace(year=2027)
    later = train(demo_recipe(3), X, y, tmp_path / "dated", created_at=when)
    assert later.created_at == when and ModelCard.load(tmp_path / "dated").created_at == when


# --- never overwrite what is not ours --------------------------------------------------------------


def test_identical_retrain_is_a_noop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = train_demo_model(tmp_path, **SMALL)
    before = state(tmp_path)
    assert train_demo_model(tmp_path, **SMALL) == card
    assert main(["--out", str(tmp_path), "--seed", "3", "--n", "1500"]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert state(tmp_path) == before  # not even rewritten with the same bytes


def test_a_different_model_is_replaced_only_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_demo_model(tmp_path, **SMALL)
    before = state(tmp_path)
    with pytest.raises(ModelDirError, match="already holds different .*--force"):
        train_demo_model(tmp_path, seed=4, n=1500)
    assert main(["--out", str(tmp_path), "--seed", "4", "--n", "1500"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert state(tmp_path) == before
    card = train_demo_model(tmp_path, seed=4, n=1500, force=True)
    assert ModelCard.load(tmp_path) == card and card.seed == 4
    OnnxScorer.from_dir(tmp_path)  # a consistent folder: the card pins the new model
    assert main(["--out", str(tmp_path), "--seed", "5", "--n", "1500", "--force"]) == 0
    assert ModelCard.load(tmp_path).seed == 5


def test_a_model_without_card_is_never_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.onnx").write_bytes(b"the user's own model")
    before = state(tmp_path)
    for force in (False, True):
        with pytest.raises(ModelDirError, match="without a model_card.json.*even with --force"):
            train_demo_model(tmp_path, force=force, **SMALL)
    assert main(["--out", str(tmp_path), "--force", "--n", "1500"]) == 2
    assert "refusing to touch it" in capsys.readouterr().err
    assert state(tmp_path) == before  # the only file, unchanged


def test_a_served_folder_is_not_replaced(tmp_path: Path) -> None:
    card = train_demo_model(tmp_path, **SMALL)
    with hold_serving_lease(tmp_path) as lease:
        assert serving_pids(tmp_path) == [os.getpid()] and lease.exists()
        before = {k: v for k, v in state(tmp_path).items() if not k.startswith(LEASE_PREFIX)}
        with pytest.raises(ModelDirError, match=f"being served by pid {os.getpid()}"):
            train_demo_model(tmp_path, seed=4, n=1500, force=True)
        assert train_demo_model(tmp_path, **SMALL) == card  # identical: a no-op is allowed
        assert {k: v for k, v in state(tmp_path).items() if not k.startswith(LEASE_PREFIX)} == before
    assert not lease.exists() and serving_pids(tmp_path) == []
    assert train_demo_model(tmp_path, seed=4, n=1500, force=True).seed == 4


def test_leases_of_other_processes_and_stale_leases(tmp_path: Path) -> None:
    code = ("import sys, time; from models.serving import hold_serving_lease\n"
            "with hold_serving_lease(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert serving_pids(tmp_path) == [proc.pid]
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up: the lease file stays behind
        proc.wait(timeout=10)
    assert (tmp_path / f"{LEASE_PREFIX}{proc.pid}").exists()
    assert serving_pids(tmp_path) == []  # a dead pid's lease is stale
    train_demo_model(tmp_path, **SMALL)

    # pid reuse: a lease naming a live pid but an older start time belongs to a process long gone
    reused = tmp_path / f"{LEASE_PREFIX}{os.getpid()}"
    info = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": 1}
    reused.write_text(json.dumps(info))
    assert serving_pids(tmp_path) == []
    # a lease from another host cannot be checked, so it counts
    reused.write_text(json.dumps({**info, "host": "some-other-host"}))
    assert serving_pids(tmp_path) == [os.getpid()]


def test_nested_leases_keep_the_file_until_the_outer_exits(tmp_path: Path) -> None:
    with hold_serving_lease(tmp_path) as outer:
        with hold_serving_lease(tmp_path):
            pass
        assert outer.exists() and serving_pids(tmp_path) == [os.getpid()]
    assert not outer.exists()


def test_a_crash_between_renames_leaves_no_half_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = artifacts._write_durable

    def crash_on_card(path: Path, data: bytes) -> None:
        if path.name == "model_card.json":
            raise KeyboardInterrupt("simulated crash")
        real(path, data)

    monkeypatch.setattr(artifacts, "_write_durable", crash_on_card)
    with pytest.raises(KeyboardInterrupt):
        train_demo_model(tmp_path, **SMALL)
    # model.onnx without its card, but our marker vouches for it; no temporary files are left
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", "reference_profile.json", artifacts.WRITING_MARKER}
    monkeypatch.setattr(artifacts, "_write_durable", real)
    card = train_demo_model(tmp_path, **SMALL)  # recognised as our interrupted write, so completed
    assert {p.name for p in tmp_path.iterdir()} == ARTIFACTS
    assert OnnxScorer.from_dir(tmp_path).sha256 == card.onnx_sha256


def test_write_artifacts_unit(tmp_path: Path) -> None:
    files = {"model.onnx": b"a", "model_card.json": b"{}"}
    assert write_artifacts(tmp_path / "new", files) is True
    assert write_artifacts(tmp_path / "new", files) is False
    assert write_artifacts(tmp_path / "new", {**files, "model.onnx": b"b"}, force=True) is True
    assert (tmp_path / "new" / "model.onnx").read_bytes() == b"b"
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ModelDirError, match="cannot use .* as a model folder"):
        write_artifacts(tmp_path / "file", files)


# --- the worker's start-up policy ----------------------------------------------------------------


def test_ensure_demo_model_trains_only_into_the_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ensure_demo_model(DEFAULT_OUT, DEFAULT_OUT) == DEFAULT_OUT
    trained = state(DEFAULT_OUT)
    assert set(trained) == ARTIFACTS and ModelCard.load(DEFAULT_OUT).recipe == demo_recipe()
    # the same folder spelled absolutely: served as is, not retrained
    assert ensure_demo_model(tmp_path / DEFAULT_OUT, DEFAULT_OUT) == tmp_path / DEFAULT_OUT
    assert state(DEFAULT_OUT) == trained

    other = tmp_path / "typo"
    with pytest.raises(ModelDirError) as info:
        ensure_demo_model(other, DEFAULT_OUT)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"STREAMSCORE_MODEL_DIR={other} does not exist")
    assert "unset it to use the demo model" in message and not other.exists()

    other.mkdir()
    with pytest.raises(ModelDirError, match="has no model.onnx \\+ model_card.json; point it at a model folder"):
        ensure_demo_model(other, DEFAULT_OUT)
    assert list(other.iterdir()) == []


def test_ensure_demo_model_never_overwrites_a_user_model(tmp_path: Path) -> None:
    default = tmp_path / "default"
    for folder in (tmp_path / "user", default):  # not even in the demo's own folder
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"user model")
        before = state(folder)
        with pytest.raises(ModelDirError, match="model.onnx") as info:
            ensure_demo_model(folder, default, setting="MODEL")
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"MODEL={folder} has a model.onnx but no model_card.json")
        assert state(folder) == before  # model.onnx alone, same bytes, same mtime


def test_ensure_demo_model_reports_a_broken_card(tmp_path: Path) -> None:
    train_demo_model(tmp_path, **SMALL)
    card = json.loads((tmp_path / "model_card.json").read_text())
    (tmp_path / "model_card.json").write_text(json.dumps({**card, "onnx_sha256": "nope"}))
    with pytest.raises(ModelDirError, match="not a valid model card \\(onnx_sha256: ") as info:
        ensure_demo_model(tmp_path, tmp_path)  # even the default folder: a broken card is not retrained over
    assert "\n" not in str(info.value)


# --- recipes and the training entry point ---------------------------------------------------------


def test_recipe_hash_is_canonical_and_validated() -> None:
    base = demo_recipe()
    assert Recipe.model_validate_json(base.canonical_json()).recipe_hash == base.recipe_hash
    assert base.model_copy(update={"params": {"n_estimators": 100, "max_depth": 4}}).recipe_hash != base.recipe_hash
    fields = base.model_dump()
    with pytest.raises(ValidationError, match="n_estimatorz"):
        Recipe(**{**fields, "params": {"n_estimatorz": 10}})
    with pytest.raises(ValidationError, match="random_state is the recipe's seed"):
        Recipe(**{**fields, "params": {"random_state": 1}})
    with pytest.raises(ValidationError, match="held_out_fraction"):
        Recipe(**{**fields, "held_out_fraction": 1.0})


def test_card_refuses_a_recipe_hash_that_does_not_match(tmp_path: Path) -> None:
    train_demo_model(tmp_path, **SMALL)
    card = json.loads((tmp_path / "model_card.json").read_text())
    with pytest.raises(ValidationError, match="recipe_hash"):
        ModelCard.model_validate({**card, "recipe_hash": "0" * 64})
    # cards from before recipes existed still load
    old = {k: v for k, v in card.items() if k not in {"recipe", "recipe_hash", "parent_version"}}
    assert ModelCard.model_validate(old).recipe is None


def test_train_a_retrain_recipe_end_to_end(tmp_path: Path) -> None:
    recipe = Recipe(name="risk-lr", version="2", features=FEATURE_NAMES, classes=CLASS_NAMES, estimator="logreg",
                    params={"C": 0.5, "max_iter": 500}, seed=11, held_out_fraction=0.3)
    X, y = make_dataset(seed=11, n=4000)
    card = train(recipe, X, y, tmp_path / "2", version="2", training_data_version="ds-abc", parent_version="1")
    assert (card.name, card.version, card.parent_version, card.training_data_version) == ("risk-lr", "2", "1", "ds-abc")
    assert card.recipe == recipe and card.recipe_hash == recipe.recipe_hash
    assert (card.n_train, card.n_test) == (2800, 1200)
    assert set(card.metrics) == {"roc_auc", "accuracy", "log_loss"} and card.metrics["roc_auc"] > 0.8
    scorer = OnnxScorer.from_dir(tmp_path / "2")
    assert scorer.card == card == ModelCard.load(tmp_path / "2")
    # the held-out metrics are reproducible: training again elsewhere gives the same bytes
    train(recipe, X, y, tmp_path / "again", version="2", training_data_version="ds-abc", parent_version="1")
    assert digests(tmp_path / "again") == digests(tmp_path / "2")
    with pytest.raises(ValueError, match="takes 8 features"):
        train(recipe, X[:, :3], y, tmp_path / "bad")
    with pytest.raises(ValueError, match="every class index"):
        train(recipe, X, np.zeros_like(y), tmp_path / "bad")
