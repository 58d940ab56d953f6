"""Every name that becomes a path (learner, model, version) stays inside its store: '../', absolute paths, symlinks."""

from __future__ import annotations

import doctest
import os

import pytest

import models.store_paths
from models.registry import ModelRegistry, ModelVersion, RegistryError, load_version
from models.store_paths import UnsafePath, confined
from online_learning.snapshots import SnapshotStore, dumps_state

BAD_NAMES = [
    ("../..", "'/' is not allowed"),
    ("..", "'..' leaves the store"),
    (".", "'.' leaves the store"),
    ("/etc", "an absolute path"),
    ("a/../../b", "'/' is not allowed"),
    ("a\\..\\b", "'/' is not allowed"),
    ("", "empty"),
    ("  ", "empty"),
    (".signing-key", "hidden names are reserved"),
    ("x\0y", "NUL"),
]


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_confined_refuses_with_one_line_saying_what_is_accepted(tmp_path, name, problem):
    with pytest.raises(UnsafePath, match=problem) as info:
        confined(tmp_path, "models", name, what="version")
    message = str(info.value)
    assert "\n" not in message and "use a plain name" in message and isinstance(info.value, ValueError)


def test_confined_accepts_plain_names_and_symlinks_that_stay_inside(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert confined(tmp_path, "alias", "v000001") == tmp_path / "alias" / "v000001"
    assert confined(tmp_path, "demo-risk", "river-1.2_b") == tmp_path / "demo-risk" / "river-1.2_b"
    with pytest.raises(UnsafePath, match="no name given"):
        confined(tmp_path)


def test_confined_refuses_symlinks_leading_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "store"
    root.mkdir()
    (root / "learner").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    for parts in [("learner",), ("learner", "v000001"), ("dangling",)]:
        with pytest.raises(UnsafePath, match="a symlink leads it to"):
            confined(root, *parts)


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_learner_names_are_confined_for_list_show_rollback(tmp_path, name, problem):
    """`learners list|show|rollback --learner NAME` all build SnapshotStore(snapshot_dir, NAME) first."""
    root = tmp_path / "snapshots"
    with pytest.raises(UnsafePath, match=problem):
        SnapshotStore(root, name)
    assert not any(p for p in tmp_path.rglob("*") if p.name.startswith("v0"))


def _snapshot(store: SnapshotStore, version: int) -> None:
    store.write(dumps_state({"n": version}), version=version, parent=None, kind="learned", worker="w",
                feature_names=["x"], classes=["0", "1"])


def test_a_learner_directory_symlinked_out_of_the_store_is_refused(tmp_path):
    root, outside = tmp_path / "snapshots", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "logreg").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath, match="symlink"):
        SnapshotStore(root, "logreg")


def test_a_version_directory_symlinked_out_of_the_store_is_refused(tmp_path):
    store = SnapshotStore(tmp_path / "snapshots", "logreg")
    _snapshot(store, 1)
    planted = tmp_path / "planted"
    os.rename(store.dir / "v000001", planted)  # a valid, signed snapshot, now outside the store
    (store.dir / "v000002").symlink_to(planted, target_is_directory=True)
    assert store.versions() == [2]
    for action in (store.meta, store.load, lambda v: store.rollback(v, worker="cli")):
        with pytest.raises(UnsafePath, match="symlink"):
            action(2)
    with pytest.raises(KeyError, match="integers >= 1"):
        store.load(-1)


def test_an_artifact_name_in_snapshot_json_cannot_point_elsewhere(tmp_path):
    from online_learning.snapshots import SnapshotIntegrityError

    store = SnapshotStore(tmp_path, "logreg")
    _snapshot(store, 1)
    meta_path = store.dir / "v000001" / "snapshot.json"
    meta_path.write_text(store.meta(1).model_copy(update={"artifact": "../../../etc/passwd"}).model_dump_json())
    with pytest.raises(SnapshotIntegrityError, match="names artifact"):
        store.load(1)


@pytest.mark.parametrize(("name", "version"), [("../x", "1"), ("/abs", "1"), ("m", "../../1"), ("m", "/etc"),
                                               ("m", ".."), ("", "1"), ("m", "")])
def test_registry_names_are_refused_for_every_registering_command(tmp_path, name, version):
    reg = ModelRegistry(tmp_path / "registry", ["a"])
    snapshot = tmp_path / "snapshots" / "logreg" / "v000001"
    for register in (lambda: reg.register_river(snapshot, name, version),
                     lambda: reg.register_composite(name, version, None)):  # type: ignore[arg-type]
        with pytest.raises(RegistryError, match="invalid"):
            register()
    for alias_cmd in (lambda: reg.promote("m", "1", alias="../x"),):
        with pytest.raises(RegistryError):
            alias_cmd()
    assert not (tmp_path / "registry" / "models").exists()


@pytest.mark.parametrize("path", ["../outside", "/etc", "models/m/../../..", "models/m/1/../../other/1"])
def test_load_version_follows_only_the_canonical_confined_path(tmp_path, path):
    from datetime import datetime, timezone

    mv = ModelVersion(name="m", version="1", sha256="0" * 64, features=["a"], classes=["0", "1"],
                      created_at=datetime.now(timezone.utc), registered_at_ms=0, path=path)
    with pytest.raises(RegistryError, match="artifact path"):
        load_version(tmp_path, mv)
    evil = mv.model_copy(update={"name": "..", "path": "models/../1"})
    with pytest.raises(RegistryError, match="leaves the store"):
        load_version(tmp_path, evil)


def test_docstring_examples() -> None:
    result = doctest.testmod(models.store_paths, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
