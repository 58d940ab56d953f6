"""Serving leases: a worker marks the model folder it serves, so no trainer overwrites it underneath.

``hold_serving_lease(model_dir)`` writes ``.serving-<pid>`` into the folder for as long as the
``with`` block runs and removes it on exit. ``serving_pids(model_dir)`` lists the pids whose lease is
live. A lease outlives a ``kill -9``, so liveness is checked, not trusted: a lease of a pid that no
longer exists, or that now belongs to a process started after the lease (pid reuse, told apart by
the start time in /proc), is stale and ignored. A lease written on another host (a container
sharing the volume) cannot be checked and counts as live; the trainer's error names its file.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     with hold_serving_lease(d) as lease:
...         held = serving_pids(d) == [os.getpid()], lease.name.startswith(".serving-")
...     held, serving_pids(d)
((True, True), [])
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LEASE_PREFIX = ".serving-"
# One file per (process, folder): a hot swap back to a folder still held must not drop its lease early.
_held: Counter[Path] = Counter()
_held_lock = threading.Lock()


@dataclass(frozen=True)
class Lease:
    path: Path
    pid: int
    host: str
    start_ticks: int | None  # /proc/<pid>/stat field 22; None where /proc is unavailable

    def is_live(self) -> bool:
        if self.host != socket.gethostname():
            return True  # another host's pid means nothing here: be safe
        return _pid_alive(self.pid) and (self.start_ticks is None or _start_ticks(self.pid) == self.start_ticks)


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot; with the pid it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after its last ")" are plain.
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def read_leases(model_dir: str | Path) -> list[Lease]:
    """Every lease file in ``model_dir`` (live or stale); unreadable ones count as live leases of their pid."""
    leases = []
    for path in sorted(Path(model_dir).glob(LEASE_PREFIX + "*")):
        suffix = path.name[len(LEASE_PREFIX):]
        if not suffix.isdigit():
            continue  # e.g. a temporary file of a lease being written
        try:
            info = json.loads(path.read_text())
            leases.append(Lease(path, int(info["pid"]), str(info["host"]), info.get("start_ticks")))
        except FileNotFoundError:
            continue  # released while we listed
        except (OSError, ValueError, KeyError, TypeError):
            leases.append(Lease(path, int(suffix), socket.gethostname(), None))
    return leases


def live_leases(model_dir: str | Path) -> list[Lease]:
    return [lease for lease in read_leases(model_dir) if lease.is_live()]


def serving_pids(model_dir: str | Path) -> list[int]:
    """Pids of the processes serving ``model_dir`` now (stale leases of dead processes ignored)."""
    return sorted({lease.pid for lease in live_leases(model_dir)})


@contextmanager
def hold_serving_lease(model_dir: str | Path) -> Iterator[Path]:
    """Hold a lease on ``model_dir`` for the duration of the block; yields the lease file's path."""
    directory = Path(model_dir).resolve()
    pid = os.getpid()
    path = directory / f"{LEASE_PREFIX}{pid}"
    with _held_lock:
        if _held[path] == 0:
            tmp = directory / f"{LEASE_PREFIX}{pid}.tmp"
            info = {"pid": pid, "host": socket.gethostname(), "start_ticks": _start_ticks(pid)}
            tmp.write_text(json.dumps(info) + "\n")
            os.replace(tmp, path)  # a trainer never reads a half-written lease
        _held[path] += 1
    try:
        yield path
    finally:
        with _held_lock:
            _held[path] -= 1
            if _held[path] == 0:
                del _held[path]
                path.unlink(missing_ok=True)
