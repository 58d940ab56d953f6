"""Model folders and the demo's own worker, over the real embedded broker and real worker processes.

* a web port held by another listening socket: `worker` and `demo` fail with one line, exit code 2,
  also when the bind is lost to a race after the start-up check;
* a launcher never mistakes another worker on its port for its own child (the pid in /readyz);
* a worker refuses a user's model.onnx without a card, leaving its bytes as they were;
* a served folder is never overwritten by `train-demo`, not even with --force;
* `train-demo` writes byte-identical files whatever the hash seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.serving import serving_pids
from streams.cli.demo import start_worker, stop_worker, wait_ready, worker_failure
from streams.kafka.topics import ensure_topics
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RACE = "import streams.worker.app as a; a.check_web_port = lambda s: None; from streams.cli.main import main; main()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(settings: Settings, *args: str, python: tuple[str, ...] = ("-m", "streams.cli.main"),
            **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    full_env.update({**settings.as_env(), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                     "COLUMNS": "200", **env})
    return subprocess.run([sys.executable, *python, *args], cwd=settings.state_dir, env=full_env,
                          capture_output=True, text=True, timeout=300)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def settings(base_settings: Settings, model_dir: Path, tmp_path: Path) -> Settings:
    """An isolated batch-engine flow serving a private copy of the session's model (a lease goes into it)."""
    run = uuid.uuid4().hex[:8]
    own_model = tmp_path / "model"
    shutil.copytree(model_dir, own_model)
    s = base_settings.model_copy(update={
        "app_id": f"test-{run}", "input_topics": {f"features-{run}": "json"},
        "prediction_topic": f"predictions-{run}", "dead_letter_topic": f"dead-letter-{run}",
        "model_dir": own_model, "engine": "batch", "state_dir": tmp_path, "archive": False, "drift_window": 0,
        "web_port": free_port(),
    })
    ensure_topics(s)
    return s


@pytest.fixture
def listener() -> Iterator[int]:
    """Another process's listening socket (loopback only: a bind on 0.0.0.0 still collides)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def running(settings: Settings) -> Iterator[subprocess.Popen]:
    proc = start_worker(settings, settings.state_dir / "worker.log")
    try:
        assert wait_ready(settings.web_port, 90, proc=proc), (settings.state_dir / "worker.log").read_text()
        yield proc
    finally:
        stop_worker(proc)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_worker_and_demo_on_a_port_in_use_fail_with_one_line(settings: Settings, listener: int) -> None:
    expected = (f"error: port {listener} is in use (another worker?); set STREAMSCORE_WEB_PORT or --web-port")
    assert one_error_line(run_cli(settings, "worker", "--web-port", str(listener))) == expected
    assert one_error_line(run_cli(settings, "worker", STREAMSCORE_WEB_PORT=str(listener))) == expected
    assert one_error_line(run_cli(settings, "demo", "--events", "10", STREAMSCORE_WEB_PORT=str(listener))) == expected
    assert serving_pids(settings.model_dir) == []


def test_a_bind_lost_to_a_race_after_the_check_is_still_one_line(settings: Settings, listener: int) -> None:
    """With the start-up check skipped, Faust's own bind fails: same line, exit 2, no traceback (60 lines before)."""
    result = run_cli(settings, "worker", "--loglevel", "warn", "--web-port", str(listener), python=("-c", RACE))
    assert one_error_line(result) == (f"error: port {listener} is in use (another worker?); "
                                      "set STREAMSCORE_WEB_PORT or --web-port")
    assert serving_pids(settings.model_dir) == []  # the lease was released on the way out
    # (leases of workers other tests killed with -9 may lie beside it: dead pids, ignored by design)
    assert sorted(p.name for p in settings.model_dir.iterdir() if not p.name.startswith(".serving-")) == [
        "model.onnx", "model_card.json", "reference_profile.json"]


def test_a_launcher_tells_its_own_worker_from_another_on_the_port(settings: Settings,
                                                                 running: subprocess.Popen) -> None:
    port = settings.web_port
    ready, health = get_json(port, "/readyz"), get_json(port, "/healthz")
    assert (ready["pid"], health["pid"]) == (running.pid, running.pid)
    assert ready["worker"] == health["worker"] and ready["ready"] is True

    # A second worker on the same port: before, wait_ready saw the first one's 200 and called it ready.
    log = settings.state_dir / "second.log"
    second = start_worker(settings.model_copy(update={"app_id": settings.app_id + "-2"}), log)
    try:
        assert wait_ready(port, 90, proc=second) is False
        assert second.wait(30) == 2
        assert worker_failure(second, log, 90) == (f"worker exited with code 2: port {port} is in use (another "
                                                   f"worker?); set STREAMSCORE_WEB_PORT or --web-port (log {log})")
    finally:
        stop_worker(second)
    assert wait_ready(port, 10, proc=running) is True  # the first is still the one answering
    assert serving_pids(settings.model_dir) == [running.pid]


def test_worker_refuses_a_users_model_without_a_card_and_leaves_it_untouched(settings: Settings,
                                                                             tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    shutil.copy(settings.model_dir / "model.onnx", theirs / "model.onnx")  # a real ONNX model, just no card
    before = digests(theirs)

    line = one_error_line(run_cli(settings, "worker", STREAMSCORE_MODEL_DIR=str(theirs)))

    assert line.startswith(f"error: STREAMSCORE_MODEL_DIR={theirs} has a model.onnx but no model_card.json")
    assert digests(theirs) == before and list(before) == ["model.onnx"]  # same bytes, nothing added
    forced = one_error_line(run_cli(settings, "train-demo", "--out", str(theirs), "--force", "--n", "2000"))
    assert "refusing to touch it (even with --force)" in forced
    assert digests(theirs) == before


def test_train_demo_never_overwrites_a_served_folder(settings: Settings, running: subprocess.Popen) -> None:
    served = settings.model_dir
    before = digests(served)
    assert serving_pids(served) == [running.pid]

    # a different model (n=2000 instead of the fixture's 5000), even with --force: refused while served
    line = one_error_line(run_cli(settings, "train-demo", "--out", str(served), "--n", "2000", "--force"))
    assert line.startswith(f"error: {served} is being served by pid {running.pid}; stop that worker")
    assert digests(served) == before
    # the same model again changes nothing, so it is no threat to the worker: success, "unchanged"
    same = run_cli(settings, "train-demo", "--out", str(served), "--seed", "7", "--n", "5000")
    assert same.returncode == 0 and "unchanged" in same.stdout, same.stdout + same.stderr
    assert digests(served) == before
    assert get_json(settings.web_port, "/readyz")["pid"] == running.pid  # still serving

    assert stop_worker(running) == 0
    assert serving_pids(served) == []  # released on a graceful stop
    replaced = run_cli(settings, "train-demo", "--out", str(served), "--n", "2000", "--force")
    assert replaced.returncode == 0 and "trained" in replaced.stdout, replaced.stdout + replaced.stderr
    assert digests(served) != before


def test_train_demo_files_are_byte_identical_across_hash_seeds(settings: Settings, tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    for out, seed in ((a, "1"), (b, "2")):
        result = run_cli(settings, "train-demo", "--out", str(out), PYTHONHASHSEED=seed)
        assert result.returncode == 0, result.stdout + result.stderr
    assert list(digests(a)) == ["model.onnx", "model_card.json", "reference_profile.json"]
    assert digests(a) == digests(b)
