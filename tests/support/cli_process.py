"""The command line as a user runs it: a real `python -m streams.cli.main` process with a clean environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def unused_port() -> int:
    """A port nothing listens on (bound, then released): a refused connection, e.g. the broker-down case."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(cwd: Path, *args: str, columns: int = 100, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``streamscore ARGS`` in ``cwd`` with no inherited STREAMSCORE_* setting, its state under ``cwd/state``,
    a web port and an embedded-broker port that are free (the defaults may be taken on a shared machine), and
    ``env`` on top."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    full_env.update({"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                     "STREAMSCORE_STATE_DIR": str(cwd / "state"), "STREAMSCORE_EMBEDDED_PORT": str(unused_port()),
                     "STREAMSCORE_WEB_PORT": str(unused_port()), "COLUMNS": str(columns), **env})
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
