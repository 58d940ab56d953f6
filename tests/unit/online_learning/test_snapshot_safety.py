"""Loading a snapshot never runs code: exact allowlist (re-enumerated here), signatures by default, crafted pickles."""

from __future__ import annotations

import copyreg
import doctest
import hashlib
import io
import os
import pickle
import stat
import subprocess
import threading
import types
from pathlib import Path

import pandas as pd
import pytest

import models.signing
import online_learning.snapshots
from models.demo import CLASS_NAMES, FEATURE_NAMES, make_dataset
from models.signing import SigningKeyError, load_or_create_key, resolve_key, sign, verify
from online_learning.learner import Learner
from online_learning.prequential import PrequentialMetrics
from online_learning.snapshots import (
    ALLOWED_GLOBALS,
    SnapshotError,
    SnapshotIntegrityError,
    SnapshotStore,
    dumps_state,
    loads_state,
)
from online_learning.specs import REGISTRY, get_spec


# --- the allowlist is exactly what the specs pickle -------------------------------------------------
def _trained_state(name: str) -> bytes:
    """A snapshot of ``name`` after 3000 labels with a concept flip halfway (splits, drift detectors, metrics)."""
    spec = get_spec(name)
    learner = Learner(spec, FEATURE_NAMES, classes=CLASS_NAMES if spec.task == "binary" else None)
    metrics = PrequentialMetrics(spec.task)
    for part in range(2):
        X, y = make_dataset(40 + part, 1500)
        y = 1 - y if part else y
        labels = ([CLASS_NAMES[int(v)] for v in y] if spec.task == "binary"
                  else (3.0 * y + X[:, 0]).astype(float).tolist())
        learner.learn_many(pd.DataFrame(X, columns=FEATURE_NAMES), labels)
        learner.flush()
        for i in range(10):
            metrics.update(str(i), labels[i] == CLASS_NAMES[1] if spec.task == "binary" else labels[i], 0.3)
    data = dumps_state({"model": learner.state(), "metrics": metrics})
    learner.close()
    return data


@pytest.fixture(scope="module")
def spec_snapshots() -> dict[str, bytes]:
    return {name: _trained_state(name) for name in sorted(REGISTRY)}


def test_the_allowlist_is_exactly_the_globals_the_learner_specs_pickle(spec_snapshots):
    recorded: set[tuple[str, str]] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            recorded.add((module, name))
            return super().find_class(module, name)

    for data in spec_snapshots.values():
        Recorder(io.BytesIO(data)).load()
        loads_state(data)  # and the real loader takes every one of them
    numpy1_alias = {("numpy.core.multiarray", "scalar")}  # the numpy 1.x name of the same function
    assert recorded == ALLOWED_GLOBALS - numpy1_alias, "update ALLOWED_GLOBALS from this diff"
    dangerous = {("copyreg", "_reconstructor"), ("builtins", "getattr"), ("builtins", "eval"),
                 ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
    assert not dangerous & ALLOWED_GLOBALS
    assert all(not module.endswith(".") and module != "river" for module, _ in ALLOWED_GLOBALS)


# --- crafted pickles ---------------------------------------------------------------------------------
def _u(text: str) -> bytes:  # SHORT_BINUNICODE
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _stack_global(module: str, name: str) -> bytes:
    return _u(module) + _u(name) + b"\x93"


def _call1(callable_ops: bytes, arg_ops: bytes) -> bytes:  # callable(arg) via TUPLE1 + REDUCE
    return callable_ops + arg_ops + b"\x85R"


def _payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    p4 = b"\x80\x04"
    with_memo = (p4 + _u("river.datasets.base") + b"\x94" + _u("os.system") + b"\x9400"  # pushed, memoized, popped
                 + b"h\x00h\x01\x93" + _u(cmd) + b"\x85R.")  # later: BINGET 0, BINGET 1, STACK_GLOBAL
    return {
        "os.system via river.datasets.base": p4 + _call1(_stack_global("river.datasets.base", "os.system"), _u(cmd))
        + b".",
        "eval via a module's builtins": p4 + _call1(_stack_global("river.datasets.base", "inspect.builtins.eval"),
                                                    _u(f"__import__('os').system({cmd!r})")) + b".",
        "a module's __builtins__": p4 + _stack_global("river.datasets.base", "__builtins__") + b".",
        "module attribute (river.datasets.base.os)": p4 + _stack_global("river.datasets.base", "os") + b".",
        "dotted module path river.datasets.base.os": p4 + _call1(_stack_global("river.datasets.base.os", "system"),
                                                                 _u(cmd)) + b".",
        "dotted name through an allowed class": p4 + _stack_global(
            "river.compose.pipeline", "Pipeline.__init__.__globals__") + b".",
        "GLOBAL opcode (protocol 0)": b"criver.datasets.base\nos.system\n(V" + cmd.encode() + b"\ntR.",
        "INST opcode": b"(V" + cmd.encode() + b"\nios\nsystem\n.",
        "getattr(os, 'system')": p4 + _call1(
            _stack_global("builtins", "getattr") + _stack_global("river.datasets.base", "os") + _u("system")
            + b"\x86R", _u(cmd)) + b".",
        "__reduce__ returning os.system": pickle.dumps(_Reduce(cmd), protocol=5),
        "copyreg._reconstructor with Popen": p4 + _stack_global("copyreg", "_reconstructor")
        + _stack_global("subprocess", "Popen") + _stack_global("subprocess", "Popen")
        + b"](" + _u("touch") + _u(str(marker)) + b"e\x87R.",  # _reconstructor(Popen, Popen, [argv])
        "STACK_GLOBAL with names from the memo": with_memo,
        "STACK_GLOBAL with a non-str name": p4 + _u("os") + b"C\x06system\x93.",
    }


class _Reduce:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def test_the_crafted_pickles_do_run_code_without_the_allowlist(marker):
    """The payloads are real: plain pickle.loads runs the command for every one that can resolve its names."""
    runs = ["os.system via river.datasets.base", "eval via a module's builtins", "getattr(os, 'system')",
            "__reduce__ returning os.system", "STACK_GLOBAL with names from the memo", "INST opcode"]
    payloads = _payloads(marker)
    for name in runs:
        marker.unlink(missing_ok=True)
        pickle.loads(payloads[name])
        assert marker.exists(), name
    marker.unlink()
    # _reconstructor(Popen, Popen, [argv]) calls Popen.__init__: a process runs
    proc = pickle.loads(payloads["copyreg._reconstructor with Popen"])
    assert isinstance(proc, subprocess.Popen) and proc.wait(10) == 0 and marker.exists()
    assert pickle.loads(payloads["module attribute (river.datasets.base.os)"]) is os
    assert isinstance(pickle.loads(payloads["a module's __builtins__"]), dict)
    assert isinstance(pickle.loads(payloads["dotted name through an allowed class"]), dict)


@pytest.mark.parametrize("name", sorted(_payloads(Path("/nonexistent/marker"))))
def test_every_crafted_pickle_is_refused_and_runs_nothing(name, marker):
    with pytest.raises(SnapshotIntegrityError) as info:
        loads_state(_payloads(marker)[name])
    assert not marker.exists()
    assert "\n" not in str(info.value)


def test_a_signed_artifact_with_a_crafted_pickle_is_still_refused(tmp_path, marker):
    """Even a key holder (or a bug) cannot make the loader call os.system: the allowlist is the second wall."""
    store = SnapshotStore(tmp_path, "logreg")
    store.write(_payloads(marker)["os.system via river.datasets.base"], version=1, parent=None, kind="learned",
                worker="w", feature_names=["x"], classes=["0", "1"])
    with pytest.raises(SnapshotIntegrityError, match="river.datasets.base.os.system"):
        store.load(1)
    assert not marker.exists()


def test_an_extension_code_goes_through_the_allowlist_too(marker):
    copyreg.add_extension("os", "system", 0xF1)
    try:
        with pytest.raises(SnapshotIntegrityError, match="os.system"):
            loads_state(b"\x80\x02\x82\xf1" + b"X" + len(b"x").to_bytes(4, "little") + b"x\x85R.")
    finally:
        copyreg.remove_extension("os", "system", 0xF1)


def test_persistent_ids_are_refused():
    with pytest.raises(SnapshotIntegrityError, match="persistent"):
        loads_state(b"\x80\x04" + _u("x") + b"Q.")


def test_garbage_is_an_integrity_error_not_a_crash():
    with pytest.raises(SnapshotIntegrityError, match="does not unpickle"):
        loads_state(b"\x80\x05not a pickle")


# --- signatures by default -----------------------------------------------------------------------
def _write(store: SnapshotStore, version: int, data: bytes) -> None:
    store.write(data, version=version, parent=None, kind="learned", worker="w", feature_names=["x"], classes=["0", "1"])


def test_a_store_without_a_configured_key_still_signs_and_refuses_a_replaced_artifact(tmp_path, marker, monkeypatch):
    store = SnapshotStore(tmp_path, "logreg")
    _write(store, 1, dumps_state({"n": 1}))
    key_file = tmp_path / ".signing-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and store.meta(1).hmac_sha256
    # an attacker who can write the directory replaces the artifact and fixes its sha256 beside it
    evil = _payloads(marker)["os.system via river.datasets.base"]
    version_dir = tmp_path / "logreg" / "v000001"
    (version_dir / "model.pkl").write_bytes(evil)
    meta = store.meta(1).model_copy(update={"sha256": hashlib.sha256(evil).hexdigest(), "size": len(evil)})
    (version_dir / "snapshot.json").write_text(meta.model_dump_json())
    unpickled = []
    monkeypatch.setattr(online_learning.snapshots, "loads_state", lambda data: unpickled.append(data))
    with pytest.raises(SnapshotIntegrityError, match="HMAC signature does not verify"):
        SnapshotStore(tmp_path, "logreg").load(1)
    (version_dir / "snapshot.json").write_text(meta.model_copy(update={"hmac_sha256": None}).model_dump_json())
    with pytest.raises(SnapshotIntegrityError, match="unsigned"):
        SnapshotStore(tmp_path, "logreg").load(1)
    assert not unpickled and not marker.exists()  # refused before unpickling


def test_without_a_key_and_without_create_nothing_is_written_or_loaded(tmp_path):
    SnapshotStore(tmp_path, "logreg").write(dumps_state({"n": 1}), version=1, parent=None, kind="learned",
                                            worker="w", feature_names=["x"], classes=["0", "1"])
    other = tmp_path / "other"
    strict = SnapshotStore(other, "logreg", create_key=False)
    with pytest.raises(SnapshotError, match="no signing key.*STREAMSCORE_SIGNING_KEY"):
        _write(strict, 1, dumps_state({"n": 1}))
    assert not (other / ".signing-key").exists() and strict.versions() == []
    (tmp_path / ".signing-key").rename(tmp_path / "moved-key")
    with pytest.raises(SnapshotError, match="no signing key"):
        SnapshotStore(tmp_path, "logreg", create_key=False).load(1)
    assert SnapshotStore(tmp_path, "logreg", key_file=tmp_path / "moved-key", create_key=False).load(1)[1] == {"n": 1}


def test_an_explicit_key_wins_and_another_key_is_refused(tmp_path):
    key = "k" * 32
    _write(SnapshotStore(tmp_path, "logreg", key), 1, dumps_state({"n": 1}))
    assert SnapshotStore(tmp_path, "logreg", key.encode()).load(1)[1] == {"n": 1}
    with pytest.raises(SnapshotIntegrityError, match="does not verify"):
        SnapshotStore(tmp_path, "logreg").load(1)  # the generated default key is another key


# --- models.signing -----------------------------------------------------------------------------------
def test_key_file_created_once_0600_and_shared_by_concurrent_first_uses(tmp_path):
    path = tmp_path / "state" / "signing-key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path, create=True))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 8 and len(keys[0]) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing-key"]  # no temporary files left


def test_key_file_problems_are_one_line_errors(tmp_path):
    with pytest.raises(SigningKeyError, match="does not exist. Set STREAMSCORE_SIGNING_KEY"):
        load_or_create_key(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    short = tmp_path / "short"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(SigningKeyError, match="3 characters; at least 16"):
        load_or_create_key(short, create=False)
    loose = tmp_path / "loose"
    loose.write_text("x" * 64)
    loose.chmod(0o666)
    with pytest.raises(SigningKeyError, match="writable by group or others"):
        load_or_create_key(loose, create=False)
    with pytest.raises(SigningKeyError, match="not a regular file"):
        load_or_create_key(tmp_path, create=False)


def test_resolve_key_order_value_then_file_then_default(tmp_path):
    file = tmp_path / "file-key"
    file.write_text("f" * 40 + "\n")
    file.chmod(0o600)
    default = tmp_path / "default-key"
    assert resolve_key("v" * 20, file, default_file=default, create=True) == b"v" * 20
    assert resolve_key(None, file, default_file=default, create=True) == b"f" * 40
    with pytest.raises(SigningKeyError):
        resolve_key(None, tmp_path / "nope", default_file=default, create=True)  # a named file is never generated
    assert resolve_key(None, None, default_file=default, create=True) == default.read_bytes().strip()


def test_sign_and_verify():
    key = b"k" * 32
    assert verify(key, b"data", sign(key, b"data"))
    assert not verify(key, b"data", sign(b"j" * 32, b"data"))
    assert not verify(key, b"data", "é" * 64) and not verify(key, b"data", None)


@pytest.mark.parametrize("module", [models.signing, online_learning.snapshots], ids=lambda m: m.__name__)
def test_docstring_examples(module: types.ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
