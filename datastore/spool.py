"""Per-process temp directories for segments being written, and discarding those of dead processes.

Every archiving process writes its unsealed segments into ``<data_dir>/tmp/<name>/`` and holds an exclusive
``flock`` on ``<data_dir>/tmp/<name>.lock`` for as long as it lives. The kernel drops the lock when the
process dies, even on ``kill -9``, so at start (and on ``data gc``) any spool whose lock can be taken
belongs to a dead process: its files are unsealed segments whose records were never acked, and they are
deleted. Several workers may share one data_dir (same host or a shared POSIX volume) without ever
deleting each other's live files.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     live = WriterSpool(Path(d), "w1")
...     _ = (live.dir / "x.avro.part").write_bytes(b"...")
...     alive_kept = sweep_dead_spools(Path(d)) == []
...     live.release()  # as if the process had died: its lock is gone
...     alive_kept, [p.name for p in sweep_dead_spools(Path(d))]
(True, ['x.avro.part'])
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from pathlib import Path


class WriterSpool:
    """A temp directory owned by this process (see the module docstring)."""

    def __init__(self, root: Path, writer: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.name = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', writer)[:60]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lock_path = root / f"{self.name}.lock"
        # The lock exists (and is held) before the directory does, so a sweeper never sees an unlocked live spool.
        self._lock = open(self.lock_path, "a+")  # noqa: SIM115 - held for the process lifetime
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.dir = root / self.name
        self.dir.mkdir()

    def release(self) -> None:
        """Give up ownership without deleting anything (what a crash does)."""
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def close(self) -> None:
        """Remove the (normally empty) directory, then the lock."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.lock_path.unlink(missing_ok=True)
        self.release()


def sweep_dead_spools(root: Path) -> list[Path]:
    """Delete the spools of dead processes; returns the unsealed files that were discarded."""
    if not root.is_dir():
        return []
    discarded: list[Path] = []
    for spool in sorted(p for p in root.iterdir() if p.is_dir()):
        lock = root / f"{spool.name}.lock"
        if lock.exists():
            with open(lock, "a+") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                discarded += sorted(p for p in spool.rglob("*") if p.is_file())
                shutil.rmtree(spool, ignore_errors=True)
                lock.unlink(missing_ok=True)
        else:  # an owner removes its lock only after its directory; this is what a crash in between leaves
            discarded += sorted(p for p in spool.rglob("*") if p.is_file())
            shutil.rmtree(spool, ignore_errors=True)
    return discarded
