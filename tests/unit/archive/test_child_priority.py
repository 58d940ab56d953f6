"""The archiver child's CPU priority (streams/archive/service.py ``_child_setup``): niced, and on Linux under
SCHED_IDLE by default, so it takes CPU only where scoring leaves some."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

from streams.archive.service import _child_setup
from streams.settings import Settings

PROBE = "import os; print(os.nice(0), os.sched_getscheduler(0))"


def _child_priority(nice: int, sched_idle: bool) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         preexec_fn=functools.partial(_child_setup, nice, sched_idle)).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(sys.platform != "linux", reason="SCHED_IDLE is Linux's")
def test_the_child_runs_niced_and_under_sched_idle_by_default() -> None:
    settings = Settings()
    base = os.nice(0)
    assert (settings.archive_nice, settings.archive_sched_idle) == (10, True)
    assert _child_priority(settings.archive_nice, settings.archive_sched_idle) == (min(19, base + 10), os.SCHED_IDLE)


@pytest.mark.skipif(sys.platform != "linux", reason="SCHED_IDLE is Linux's")
def test_sched_idle_off_leaves_the_normal_policy() -> None:
    assert _child_priority(0, False) == (os.nice(0), os.sched_getscheduler(0))
