"""Shared fixtures: one embedded broker and one trained demo model per test session.

End-to-end tests get their own topics and consumer group each, so they never see each other's data.
Set STREAMSCORE_TEST_BROKER=kafka://host:port to run them against a real Kafka cluster instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streams.cli.demo import start_worker, stop_worker, wait_ready
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import ensure_topics
from streams.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    state = tmp_path_factory.mktemp("state")
    external = os.environ.get("STREAMSCORE_TEST_BROKER")
    settings = Settings(broker=external or "embedded", embedded_port=free_port(), state_dir=state)
    if not external:
        # Tansu completes a group join after about half the session timeout: 3 s instead of the embedded
        # default 6 s saves ~1.5 s per worker start (about a minute over the suite). Kafka refuses session
        # timeouts below its group.min.session.timeout.ms (6 s by default), so only on the embedded broker.
        settings = settings.model_copy(update={"session_timeout_ms": 3000, "heartbeat_interval_ms": 300})
    broker = None if external else EmbeddedBroker(settings)
    if broker:
        broker.up()
    yield settings
    if broker:
        broker.down()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.train_demo import train_demo_model

    out = tmp_path_factory.mktemp("model") / "demo-risk" / "1"
    train_demo_model(out, seed=7, n=5000)
    return out


@dataclass
class Flow:
    """One isolated scoring flow: unique topics, group and web port; workers run as real processes."""

    settings: Settings
    log_dir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def json_topic(self) -> str:
        return next(t for t, f in self.settings.input_topics.items() if f == "json")

    @property
    def avro_topic(self) -> str:
        return next(t for t, f in self.settings.input_topics.items() if f == "avro")

    def start_worker(self, wait: bool = True, loglevel: str = "warn", **overrides: object) -> subprocess.Popen:
        settings = self.settings.model_copy(update={"web_port": free_port(), **overrides})
        proc = start_worker(settings, self.log_dir / f"worker-{len(self.workers)}.log", loglevel=loglevel)
        proc.settings = settings  # type: ignore[attr-defined]  # its web port, for health checks
        self.workers.append(proc)
        if wait and not wait_ready(settings.web_port, timeout=120, proc=proc):
            raise AssertionError(f"worker not ready:\n{self.log()}")
        return proc

    def start_workers(self, *names: str, **overrides: object) -> dict[str, subprocess.Popen]:
        """Workers started together (so they join the group in one rebalance, not one each), once all are ready;
        ``proc.settings.web_port`` is each one's port."""
        procs = {name: self.start_worker(wait=False, worker_id=name, **overrides) for name in names}
        for name, proc in procs.items():
            if not wait_ready(proc.settings.web_port, timeout=60, proc=proc):  # type: ignore[attr-defined]
                raise AssertionError(f"{name} not ready:\n{self.log()}")
        return procs

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                stop_worker(proc)


@pytest.fixture(params=["faust", "batch"])
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def flow(base_settings: Settings, model_dir: Path, tmp_path: Path, engine: str) -> Iterator[Flow]:
    run = uuid.uuid4().hex[:8]
    settings = base_settings.model_copy(update={
        "app_id": f"test-{run}",
        "input_topics": {f"features-{run}": "json", f"features-avro-{run}": "avro"},
        "prediction_topic": f"predictions-{run}",
        "dead_letter_topic": f"dead-letter-{run}",
        "model_dir": model_dir,
        "engine": engine,
        "state_dir": tmp_path,
        # Scoring tests run scoring only: the drift lane and the archiver (each a consumer of every input,
        # the archiver a child process) are switched on by their own tests.
        "archive": False,
        "drift_window": 0,
    })
    ensure_topics(settings)
    flow = Flow(settings, tmp_path)
    yield flow
    flow.stop_all()


class FakeMessage:
    """The confluent-kafka Message methods the lanes read, for tests without a broker."""

    def __init__(self, offset: int, value: bytes, topic: str = "labels", timestamp_ms: int | None = None) -> None:
        self._offset, self._value, self._topic = offset, value, topic
        self._timestamp_ms = timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)  # (TIMESTAMP_CREATE_TIME, ms)
