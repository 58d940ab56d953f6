"""Typical command-line mistakes around model folders and the web port: each is exactly one line, exit code 2.

Every case runs the real `python -m streams.cli.main` in a fresh folder (so the demo's default folder,
artifacts/models/demo-risk/1, is the test's own) and needs no broker: the checks come first.
"""

from __future__ import annotations

import functools
import hashlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import cli_process

run_cli = functools.partial(cli_process.run_cli, columns=200)  # wide: the cases match whole one-line errors
USER_MODEL = b"a user's model.onnx, not ours: must never be touched\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo model written by `train-demo` (small n: the cases only need *a* model of ours)."""
    out = tmp_path_factory.mktemp("trained") / "model"
    result = run_cli(out.parent, "train-demo", "--out", str(out), "--n", "2000")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process listens on (loopback only: binding 0.0.0.0 still collides on Linux)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@dataclass
class Case:
    args: tuple[str, ...]
    expect: str  # a fragment of the one line
    env: dict[str, str]


def _user_model(tmp: Path) -> Path:
    folder = tmp / "theirs"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(USER_MODEL)
    return folder


def _bad_card(tmp: Path) -> Path:
    folder = tmp / "bad-card"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(USER_MODEL)
    (folder / "model_card.json").write_text('{"name": "x"}')
    return folder


def _a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("not a folder\n")
    return tmp / "notes.txt"


# Each case: (id, builds the case from the test's folder, the trained model and the busy port)
CASES: list[tuple[str, Callable[[Path, Path, int], Case]]] = [
    ("train-demo --out under a file",
     lambda tmp, model, port: Case(("train-demo", "--out", str(_a_file(tmp) / "m")), "is a file, not a folder", {})),
    ("train-demo --out is a file",
     lambda tmp, model, port: Case(("train-demo", "--out", str(_a_file(tmp))), "is a file, not a folder", {})),
    ("train-demo over a different model without --force",
     lambda tmp, model, port: Case(("train-demo", "--out", str(model), "--n", "2100"), "pass --force", {})),
    ("train-demo --force over a user's model.onnx without a card",
     lambda tmp, model, port: Case(("train-demo", "--out", str(_user_model(tmp)), "--force"),
                                   "refusing to touch it (even with --force)", {})),
    ("worker, STREAMSCORE_MODEL_DIR does not exist",
     lambda tmp, model, port: Case(("worker",), "does not exist",
                                   {"STREAMSCORE_MODEL_DIR": str(tmp / "artifacts/models/demo-risk/2")})),
    ("worker, STREAMSCORE_MODEL_DIR is a file",
     lambda tmp, model, port: Case(("worker",), "is not a folder", {"STREAMSCORE_MODEL_DIR": str(_a_file(tmp))})),
    ("worker, STREAMSCORE_MODEL_DIR is an empty folder",
     lambda tmp, model, port: Case(("worker",), "has no model.onnx + model_card.json",
                                   {"STREAMSCORE_MODEL_DIR": str(tmp)})),
    ("worker, a user's model.onnx without a card",
     lambda tmp, model, port: Case(("worker",), "has a model.onnx but no model_card.json",
                                   {"STREAMSCORE_MODEL_DIR": str(_user_model(tmp))})),
    ("worker, a card that is not a model card",
     lambda tmp, model, port: Case(("worker",), "is not a valid model card",
                                   {"STREAMSCORE_MODEL_DIR": str(_bad_card(tmp))})),
    ("worker, web port in use",
     lambda tmp, model, port: Case(("worker",), f"port {port} is in use (another worker?); set STREAMSCORE_WEB_PORT",
                                   {"STREAMSCORE_MODEL_DIR": str(model), "STREAMSCORE_WEB_PORT": str(port)})),
    ("worker --web-port in use",
     lambda tmp, model, port: Case(("worker", "--web-port", str(port)), f"port {port} is in use",
                                   {"STREAMSCORE_MODEL_DIR": str(model)})),
    ("demo, web port in use",
     lambda tmp, model, port: Case(("demo",), f"port {port} is in use",
                                   {"STREAMSCORE_MODEL_DIR": str(model), "STREAMSCORE_WEB_PORT": str(port)})),
    ("demo, STREAMSCORE_MODEL_DIR does not exist",
     lambda tmp, model, port: Case(("demo",), "does not exist", {"STREAMSCORE_MODEL_DIR": str(tmp / "nope")})),
    ("bench, STREAMSCORE_MODEL_DIR without a model",
     lambda tmp, model, port: Case(("bench", "--quick"), "has no model.onnx + model_card.json",
                                   {"STREAMSCORE_MODEL_DIR": str(tmp)})),
]


@pytest.mark.parametrize("build", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_mistake_is_one_line_and_exit_code_2(build, tmp_path: Path, trained: Path, busy_port: int) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    case = build(work, trained, busy_port)
    files_before = {p: sha256(p) for p in sorted(work.rglob("*")) if p.is_file()}
    model_before = {p.name: sha256(p) for p in trained.iterdir()}

    result = run_cli(work, *case.args, **case.env)

    output = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert output == [output[0]] and output[0].startswith("error: "), output
    assert case.expect in output[0], output[0]
    assert "Traceback" not in result.stdout + result.stderr
    # nothing was written: no demo model trained anywhere, every file there before is byte-identical
    assert {p: sha256(p) for p in sorted(work.rglob("*")) if p.is_file()} == files_before
    assert not (work / "artifacts").exists()
    assert {p.name: sha256(p) for p in trained.iterdir()} == model_before


def test_worker_refusing_a_users_model_leaves_its_bytes_and_folder_as_they_were(tmp_path: Path) -> None:
    folder = _user_model(tmp_path)
    digest = sha256(folder / "model.onnx")

    result = run_cli(tmp_path, "worker", STREAMSCORE_MODEL_DIR=str(folder))

    assert result.returncode == 2
    assert sha256(folder / "model.onnx") == digest == hashlib.sha256(USER_MODEL).hexdigest()
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]  # no card, no lease, no temp file


def test_train_demo_into_its_folder_again_is_unchanged(trained: Path) -> None:
    before = {p.name: (sha256(p), p.stat().st_mtime_ns) for p in trained.iterdir()}

    result = run_cli(trained.parent, "train-demo", "--out", str(trained), "--n", "2000")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "unchanged" in result.stdout
    assert {p.name: (sha256(p), p.stat().st_mtime_ns) for p in trained.iterdir()} == before
