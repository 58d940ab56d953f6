"""`streamscore demo --closed-loop` as a user runs it: one subprocess, its own state dir, broker port and web port.

The demo itself starts the embedded broker, a registry-mode worker and the retrain service as its children; this
test checks that it exits 0 within 3 minutes and prints every step of the loop in order, with exact counts: every
event produced scored once (0 lost, 0 double-scored), the last ones by demo-risk@2.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e

STEPS = ["retrain request received demo-risk", "training dataset built demo-risk", "candidate trained demo-risk@2",
         "challenger in shadow demo-risk@2", "gate demo-risk@2: passed", "PROMOTED demo-risk@2",
         "predictions now by demo-risk@2"]


def cell(out: str, row: str) -> str:
    found = re.search(rf"│ {re.escape(row)}\s*│ (.*?)\s*│", out)
    assert found, f"no row {row!r} in\n{out}"
    return found.group(1)


def demo_env(state: Path, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    return env | {"STREAMSCORE_STATE_DIR": str(state), "STREAMSCORE_EMBEDDED_PORT": str(free_port()),
                  "STREAMSCORE_WEB_PORT": str(free_port()), "STREAMSCORE_MODEL_DIR": str(model_dir),
                  "COLUMNS": "250"}  # one step per line: rich wraps at the terminal width (80 without a terminal)


def broker_down(env: dict[str, str]) -> None:
    """The demo leaves its broker running, as it says; its pid file is in the state dir given."""
    down = subprocess.run([sys.executable, "-m", "streams.cli.main", "broker", "down"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert "not running" not in down.stdout + down.stderr, down


def test_closed_loop_demo_shows_every_step_and_counts_every_event_once(tmp_path: Path, model_dir: Path) -> None:
    state = tmp_path / "state"
    env = demo_env(state, model_dir)
    started = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-m", "streams.cli.main", "demo", "--closed-loop"], env=env,
                             capture_output=True, text=True, timeout=180)
    finally:
        broker_down(env)
    took = time.monotonic() - started
    out = run.stdout
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in state.glob("closed-loop/*/*.log"))
    assert run.returncode == 0, f"exit {run.returncode}\n{out}\n{run.stderr}\n{logs}"
    assert took < 180

    lines = out.splitlines()
    assert any("alert firing demo-risk@1: concept drift" in line for line in lines), out
    assert any("retrain request published for demo-risk@1: the window's 2000 inputs" in line for line in lines), out
    at = [next((i for i, line in enumerate(lines) if step in line), -1) for step in STEPS]
    assert -1 not in at and at == sorted(at), list(zip(STEPS, at, strict=True))
    assert "2000 labelled rows of 2000 inputs" in lines[at[1]]

    produced = int(cell(out, "events produced"))
    assert int(cell(out, "events scored")) == produced
    assert cell(out, "lost") == "0" and cell(out, "double-scored") == "0"
    versions = dict(v.split(": ") for v in cell(out, "predictions by version").split(", "))
    assert set(versions) == {"v1", "v2"} and int(versions["v1"]) + int(versions["v2"]) == produced
    assert int(versions["v2"]) >= 300  # at least the 300 events produced after the promotion
    assert re.search(r"✓ worker stopped \(exit 0\)", out) and re.search(r"✓ retrain stopped \(exit 0\)", out), out
    for child in ("worker", "retrain"):  # the children's logs under the state dir
        assert len(list(state.glob(f"closed-loop/*/{child}.log"))) == 1, child
    print(f"closed-loop demo: {took:.1f} s, {produced} events, {versions}")


def test_a_child_that_dies_stops_the_demo_at_once_with_its_exit_code(tmp_path: Path, model_dir: Path) -> None:
    """The retrain service killed (SIGKILL) once the worker is ready: the demo says so and exits 1 well before a
    step's 90 s wait, and still stops the worker cleanly."""
    state = tmp_path / "state"
    env = demo_env(state, model_dir)
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli.main", "demo", "--closed-loop"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if m := re.search(r"retrain service \(pid (\d+)\)", line):
                service = int(m.group(1))
            if "worker ready" in line:
                break
        os.kill(service, signal.SIGKILL)
        killed = time.monotonic()
        lines += proc.stdout.readlines()
        code = proc.wait(60)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        broker_down(env)
    out = "".join(lines)
    assert code == 1, out
    assert "stopped: the retrain process exited with code -9" in out, out
    assert took < 45, took  # the first step's wait alone would be 90 s
    assert "✓ worker stopped (exit 0)" in out and "PROMOTED" not in out, out
    print(f"retrain service killed: demo exited 1 after {took:.1f} s")
