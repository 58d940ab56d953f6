"""Registry records are authenticated and validated before use: forged paths, planted pickles, seq jumps, missing
artifacts, tampered promotes, and the compacted-topic replay that must keep working."""

from __future__ import annotations

import doctest
import hashlib
import pickle
import shutil
from pathlib import Path

import pytest

import models.registry
from models.demo import FEATURE_NAMES
from models.registry import (
    ModelRegistry,
    RegistryError,
    RegistryFollower,
    RegistryRecord,
    RejectedRecord,
    load_version,
    read_log,
    sign_record,
)
from models.train_demo import train_demo_model


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("versions")
    for version, seed in [("1", 7), ("2", 8)]:
        train_demo_model(root / version, seed=seed, n=1500, version=version)
    return {v: root / v for v in ("1", "2")}


@pytest.fixture
def registry(tmp_path: Path, versions) -> ModelRegistry:
    published: list[RegistryRecord] = []
    reg = ModelRegistry(tmp_path / "registry", FEATURE_NAMES, publish=published.append)
    reg.published = published  # type: ignore[attr-defined]
    reg.register(versions["1"])
    reg.register(versions["2"], aliases=["challenger"])
    return reg


def wire(record: RegistryRecord) -> bytes:
    """What the control topic carries (streams.registry_watch.encode_record)."""
    return record.model_dump_json().encode()


def worker(registry: ModelRegistry) -> RegistryFollower:
    """A worker's follower, caught up with what the registry published so far."""
    follower = RegistryFollower(registry.root, registry.key)
    for offset, record in enumerate(registry.published):
        follower.apply_record(wire(record), offset=offset)
    return follower


def champion(follower: RegistryFollower) -> str:
    return follower.state.model("demo-risk").aliases["champion"]


def forged(registry: ModelRegistry, seq: int | None = None, sign: bool = False, **model_updates) -> RegistryRecord:
    """The latest demo-risk record with its champion's version entry altered, re-sequenced, maybe signed."""
    last = registry.published[-1]
    state = last.model.model_copy(deep=True)
    mv = state.versions["2"].model_copy(update=model_updates)
    state.versions["2"] = mv
    state.aliases["champion"] = "2"
    record = last.model_copy(update={"seq": seq or last.seq + 1, "model": state, "sig": None,
                                     "change": last.change.model_copy(update={"kind": "promote", "alias": "champion",
                                                                              "version": "2"})})
    return sign_record(record, registry.key) if sign else record


def test_published_records_are_signed_and_a_worker_applies_them(registry):
    follower = worker(registry)
    assert all(r.sig for r in registry.published) and all(r.sig for r in read_log(registry.log_path))
    assert champion(follower) == "1" and follower.seq == 2 and not follower.rejected
    registry.promote("demo-risk", "2")
    applied = follower.apply_record(wire(registry.published[-1]))
    assert applied.changed and champion(follower) == "2"
    again = follower.apply_record(wire(registry.published[-1]))  # `models sync`, a replay: a no-op
    assert not again.changed and follower.seq == 3


@pytest.mark.parametrize("path", ["../../outside/demo-risk/2", "/etc", "models/other/2", "models/demo-risk/../1"])
def test_an_artifact_path_outside_models_name_version_is_refused_even_when_signed(registry, path, tmp_path):
    outside = tmp_path / "outside" / "demo-risk" / "2"
    shutil.copytree(registry.root / "models" / "demo-risk" / "2", outside)
    follower = worker(registry)
    for signed in (False, True):
        with pytest.raises(RejectedRecord) as info:
            follower.apply_record(wire(forged(registry, sign=signed, path=path)))
        reason = info.value.reason
        assert ("is not 'models/demo-risk/2'" in reason) if signed else ("unsigned" in reason)
    assert champion(follower) == "1"
    mv = registry.state.model("demo-risk").versions["2"].model_copy(update={"path": path})
    with pytest.raises(RegistryError, match="artifact path"):
        load_version(registry.root, mv)


def test_a_symlink_out_of_the_store_is_refused(registry, tmp_path):
    real = registry.root / "models" / "demo-risk" / "2"
    elsewhere = tmp_path / "elsewhere"
    shutil.move(real, elsewhere)
    real.symlink_to(elsewhere, target_is_directory=True)
    mv = registry.state.model("demo-risk").versions["2"]
    with pytest.raises(RegistryError, match="symlink leads it"):
        load_version(registry.root, mv)
    with pytest.raises(RegistryError, match="symlink"):
        registry.promote("demo-risk", "2")


def test_a_river_record_pointing_at_a_planted_pickle_never_loads_it(registry, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    planted = registry.root / "models" / "demo-risk" / "evil"
    planted.mkdir(parents=True)
    data = pickle.dumps({"model": Evil()})
    (planted / "model.pkl").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    (planted / "snapshot.json").write_text(f'{{"sha256": "{sha}"}}')
    last = registry.published[-1]
    state = last.model.model_copy(deep=True)
    state.versions["evil"] = state.versions["2"].model_copy(update={"kind": "river", "version": "evil", "sha256": sha,
                                                                    "path": "models/demo-risk/evil"})
    state.aliases["champion"] = "evil"
    record = last.model_copy(update={"seq": 3, "model": state, "sig": None, "change": last.change.model_copy(
        update={"kind": "promote", "alias": "champion", "version": "evil"})})
    follower = worker(registry)
    with pytest.raises(RejectedRecord, match="unsigned"):
        follower.apply_record(wire(record))
    with pytest.raises(RejectedRecord, match="which no register record introduced"):
        follower.apply_record(wire(sign_record(record, registry.key)))  # even signed: never registered
    assert champion(follower) == "1" and not marker.exists()
    mv = state.versions["evil"]
    with pytest.raises(ValueError, match="snapshot.json|SnapshotMeta|validation"):
        load_version(registry.root, mv)  # its snapshot.json is no snapshot
    from online_learning.snapshots import SnapshotIntegrityError, SnapshotMeta

    meta = SnapshotMeta(version=1, parent=None, kind="learned", learner="logreg", created_at=0, worker="w", sha256=sha,
                        size=len(data), feature_names=list(FEATURE_NAMES), classes=["legit", "risky"])
    (planted / "snapshot.json").write_text(meta.model_dump_json())
    with pytest.raises(SnapshotIntegrityError, match="posix.system|os.system"):
        load_version(registry.root, mv)  # a valid-looking snapshot: the allowlist still refuses the pickle
    assert not marker.exists()


def test_a_seq_jump_is_reported_never_adopted_and_later_changes_still_apply(registry):
    follower = worker(registry)
    for signed in (False, True):
        with pytest.raises(RejectedRecord) as info:
            follower.apply_record(wire(forged(registry, seq=10**12, sign=signed)))
        expected = "jumps from 2 to 1000000000000" if signed else "unsigned"
        assert expected in info.value.reason
    assert follower.seq == 2 and champion(follower) == "1"
    registry.promote("demo-risk", "2")  # the next real change: seq 3, applied (the registry did not freeze)
    assert follower.apply_record(wire(registry.published[-1])).changed and champion(follower) == "2"
    assert [r.seq for r in follower.rejected] == [10**12, 10**12]
    assert all("\n" not in r.reason for r in follower.rejected)
    assert follower.status()["rejected_total"] == 2


def test_a_compacted_topic_closes_its_gaps_from_the_signed_log(registry):
    registry.promote("demo-risk", "2")
    registry.set_route("features", {"policy": "shadow", "candidate": "challenger"})
    registry.rollback("demo-risk")
    compacted = sorted({r.key: r for r in registry.published}.values(), key=lambda r: r.seq)  # what compaction keeps
    assert [r.seq for r in compacted] == [4, 5]
    follower = RegistryFollower(registry.root, registry.key)
    first = follower.apply_record(wire(compacted[0]))
    assert first.filled == (1, 2, 3) and follower.apply_record(wire(compacted[1])).filled == ()
    assert follower.state.records == registry.state.records and not follower.rejected
    # a fresh broker after `models sync`: the same
    synced = RegistryFollower(registry.root, registry.key)
    for record in sorted(registry.reload().records.values(), key=lambda r: r.seq):
        synced.apply_record(wire(record))
    assert synced.state.records == registry.state.records


def test_a_gap_the_log_does_not_hold_is_refused(registry, tmp_path):
    registry.promote("demo-risk", "2")
    elsewhere = RegistryFollower(tmp_path / "no-log-here", registry.key)  # a worker without the shared log
    with pytest.raises(RejectedRecord, match=r"records 1..2 are not .* in the registry log"):
        elsewhere.apply_record(wire(registry.published[-1]))
    assert elsewhere.seq == 0 and elsewhere.state.records == {}


def test_a_missing_artifact_is_refused_visibly_the_worker_keeps_serving_and_recovers(registry, versions):
    follower = worker(registry)
    registry.promote("demo-risk", "2")
    artifact = registry.root / "models" / "demo-risk" / "2"
    shutil.move(artifact, artifact.with_name("2.away"))
    with pytest.raises(RejectedRecord, match="artifact missing"):
        follower.apply_record(wire(registry.published[-1]))
    assert champion(follower) == "1" and follower.status()["pending"] == ["model:demo-risk@3"]
    assert follower.retry_rejected() == []  # still missing
    shutil.move(artifact.with_name("2.away"), artifact)  # e.g. the shared volume caught up
    assert [a.record.seq for a in follower.retry_rejected()] == [3] and champion(follower) == "2"
    # a worker starting now applies the whole history, nothing stops it
    assert champion(worker(registry)) == "2"


def test_a_tampered_artifact_is_refused_by_the_worker_and_by_promote(registry):
    follower = worker(registry)
    onnx = registry.root / "models" / "demo-risk" / "2" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    published = len(registry.published)
    with pytest.raises(RegistryError, match="is not the registered"):
        registry.promote("demo-risk", "2")
    assert len(registry.published) == published and len(list(read_log(registry.log_path))) == 2
    with pytest.raises(RejectedRecord, match="is not the registered"):
        follower.apply_record(wire(forged(registry, sign=True)))
    assert champion(follower) == "1"


@pytest.mark.parametrize(("update", "reason"), [
    ({"sha256": "0" * 64}, "registered versions are immutable"),
    ({"kind": "river"}, "registered versions are immutable"),
    ({"name": "other"}, "describes other@2"),
])
def test_signed_records_that_change_a_registered_version_are_refused(registry, update, reason):
    follower = worker(registry)
    with pytest.raises(RejectedRecord, match=reason):
        follower.apply_record(wire(forged(registry, sign=True, **update)))
    assert champion(follower) == "1"


def test_signed_records_that_drop_versions_or_reuse_a_seq_are_refused(registry):
    follower = worker(registry)
    last = registry.published[-1]
    state = last.model.model_copy(deep=True)
    del state.versions["2"], state.aliases["challenger"], state.alias_history["challenger"]
    with pytest.raises(RejectedRecord, match=r"drops registered versions \['2'\]"):
        follower.apply_record(wire(sign_record(last.model_copy(update={"seq": 3, "model": state}), registry.key)))
    other = sign_record(last.model_copy(update={"by": "someone else"}), registry.key)
    with pytest.raises(RejectedRecord, match="seq 2 is already taken"):
        follower.apply_record(wire(other))


def test_the_log_file_is_verified_too(registry):
    """A line appended to log.jsonl by someone without the key is ignored (and listed); changes carry on."""
    forged_line = forged(registry, seq=3).model_dump_json()
    with registry.log_path.open("a") as f:
        f.write(forged_line + "\n")
    registry.reload()
    assert registry.state.model("demo-risk").aliases["champion"] == "1"
    assert [(r.seq, r.reason) for r in registry.rejected] == [(3, registry.rejected[0].reason)]
    assert "unsigned" in registry.rejected[0].reason
    record = registry.promote("demo-risk", "2")
    assert record.seq == 3 and champion(worker(registry)) == "2"


def test_a_line_cut_short_by_a_crash_does_not_swallow_the_next_record(registry):
    with registry.log_path.open("ab") as f:
        f.write(b'{"seq": 3, "key": "model:demo-ri')
    registry.reload()
    record = registry.promote("demo-risk", "2")
    assert record.seq == 3 and ModelRegistry(registry.root, FEATURE_NAMES).state.model("demo-risk").aliases[
        "champion"] == "2"


def test_a_registry_without_a_key_refuses_with_one_line(tmp_path, versions):
    reg = ModelRegistry(tmp_path / "r", FEATURE_NAMES, create_key=False)
    with pytest.raises(RegistryError, match="no signing key") as info:
        reg.register(versions["1"])
    assert "\n" not in str(info.value)
    ModelRegistry(tmp_path / "r2", FEATURE_NAMES).register(versions["1"])
    with pytest.raises(RegistryError, match="no signing key"):
        ModelRegistry(tmp_path / "r2", FEATURE_NAMES, key_file=tmp_path / "nope")
    other_key = ModelRegistry(tmp_path / "r2", FEATURE_NAMES, key="x" * 32)
    assert other_key.state.model_names() == [] and len(other_key.rejected) == 1  # another key: nothing trusted


def test_bad_model_and_version_names_are_refused_before_any_path(registry, tmp_path):
    for name, version in [("../x", "1"), ("demo-risk", "../../1"), ("demo-risk", "/abs"), ("", "1")]:
        with pytest.raises(RegistryError, match="invalid"):
            registry.register_composite(name, version, None)  # type: ignore[arg-type]
    assert sorted(p.name for p in (registry.root / "models").iterdir()) == ["demo-risk"]


def test_docstring_examples() -> None:
    result = doctest.testmod(models.registry, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
