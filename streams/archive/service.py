"""The archiver's place in the worker: the Faust services that run the archive lane (streams/archive/lane.py) in a
child process (``archive_mode=process``, the default) or on a thread of the worker (``thread``), and the wiring.

Apart from ``lane.py`` so that the child, ``python -m streams.archive.lane``, never imports Faust, mode or
aiohttp: they are the worker's, and the child's RSS and start-up are what it imports (docs/side-lanes-cost.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys

import faust
from faust.types import AppT
from mode import Service

from datastore.catalog import recover
from datastore.storage import Storage, open_storage
from streams.archive.lane import ArchiveLane, ChildMetrics, archive_topics, housekeeping
from streams.background import NOT_STARTED
from streams.settings import Settings

log = logging.getLogger(__name__)


class ArchiveService(Service):
    """Recovers the store, runs the lane, applies retention now and then; seals and commits on stop."""
    retention_every_s = 300.0

    def __init__(self, settings: Settings, storage: Storage, **kwargs: object) -> None:
        self.settings = settings
        self.storage = storage
        self.lane: ArchiveLane | None = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        report = await self.loop.run_in_executor(None, recover, self.storage)
        self.recovery = report
        self.lane = ArchiveLane(self.settings, self.storage)
        self.lane.start()

    @Service.task
    async def _retention(self) -> None:
        s = self.settings
        if s.data_retention_max_age_s is None and s.data_retention_max_bytes is None \
                and s.archive_compact_below_records is None:
            return
        while not self.should_stop:
            await self.sleep(self.retention_every_s)
            await self.loop.run_in_executor(None, housekeeping, self.storage, s)

    def health(self) -> dict[str, object]:
        lane = self.lane
        if lane is None:
            return {"healthy": False, "reason": "archive lane not started"}
        healthy = lane.alive and lane.error is None
        return {"healthy": healthy, "alive": lane.alive, "last_error": repr(lane.error) if lane.error else None}

    def kill(self) -> str:
        """Fault tests: the in-process lane stops as if it had died."""
        if self.lane is not None:
            self.lane.inject_failures(1)
        return "archive lane will fail once (thread mode: it stays down, /healthz fails)"

    def status(self) -> dict[str, object]:
        lane = self.lane
        if lane is None:
            return {"started": False}
        return {
            "group": lane.group_id,
            "assigned": lane.assigned.is_set(),
            "data_dir": str(self.settings.data_path),
            "open_records": lane.archive.open_records,
            "committed": {f"{t}[{p}]": o for (t, p), o in sorted(lane.committed.items())},
            "error": repr(lane.error) if lane.error else None,
            **lane.archive.stats,
        }

    async def on_stop(self) -> None:
        if self.lane is not None:
            await self.loop.run_in_executor(None, self.lane.stop)



class ArchiverProcess(Service):
    """Runs ``python -m streams.archive.lane`` beside the worker, restarts it if it dies, stops it gracefully."""
    restart_delay_s = 2.0

    def __init__(self, settings: Settings, **kwargs: object) -> None:
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        super().__init__(**kwargs)

    def _spawn(self) -> None:
        env = {**os.environ, **self.settings.as_env()}
        # stdout/stderr are the worker's: the child's log lines land in the worker's log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.archive.lane", "--metrics-port", str(self.metrics.port)], env=env,
            preexec_fn=functools.partial(_child_setup, self.settings.archive_nice, self.settings.archive_sched_idle))
        log.info("archiver process started (pid %d)", self.proc.pid)

    async def on_start(self) -> None:
        self.metrics = ChildMetrics(_free_port())
        self.metrics.install()  # the worker's /metrics shows the child's streamscore_archive_* series, once
        self._spawn()

    @Service.task
    async def _supervise(self) -> None:
        while not self.should_stop:
            await self.sleep(1.0)
            proc = self.proc
            if proc is not None and proc.poll() is not None and not self.should_stop:
                log.error("archiver process %d exited with %s; restarting in %.0f s", proc.pid, proc.returncode,
                          self.restart_delay_s)
                await self.sleep(self.restart_delay_s)
                if not self.should_stop:
                    self.restarts += 1
                    self._spawn()

    def health(self) -> dict[str, object]:
        """Healthy while the child runs; between its death and its restart (2 s) /healthz says so."""
        proc = self.proc
        if proc is None:
            return {"healthy": False, "alive": False, "reason": NOT_STARTED}
        alive = proc.poll() is None
        return {"healthy": alive, "alive": alive, "pid": proc.pid if proc else None, "restarts": self.restarts,
                **({} if alive else {"reason": f"archiver process exited with {proc.returncode if proc else None}"})}

    def kill(self) -> str:
        """Fault tests: SIGKILL the child (the supervisor restarts it)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return "archiver process not running"
        proc.kill()
        return f"archiver process {proc.pid} killed"

    def status(self) -> dict[str, object]:
        proc = self.proc
        return {"mode": "process", "pid": proc.pid if proc else None,
                "alive": proc is not None and proc.poll() is None, "restarts": self.restarts,
                "data_dir": str(self.settings.data_path), "group": f"{self.settings.app_id}-archive"}

    async def on_stop(self) -> None:
        self.metrics.uninstall()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # it seals its open segments and commits them
        try:
            await self.loop.run_in_executor(None, proc.wait, 60)
        except subprocess.TimeoutExpired:
            log.error("archiver process %d did not stop in 60 s; killing it (its open segments are re-read "
                      "after the restart)", proc.pid)
            proc.kill()


def register_archiver(app: AppT, settings: Settings) -> ArchiveService | ArchiverProcess | None:
    """Wire the archiver into the app (either engine); None when ``STREAMSCORE_ARCHIVE=false``."""
    if not settings.archive:
        log.info("archiving off (STREAMSCORE_ARCHIVE=false)")
        return None
    storage = open_storage(settings.data_path, settings.data_store_url)  # an s3:// URL stops the worker here
    service = ArchiveService(settings, storage) if settings.archive_mode == "thread" else ArchiverProcess(settings)

    @app.page("/archive")
    async def archive_status(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json(service.status())

    app.service(service)
    log.info("archiving %s into %s (segments of %d records or %.0f s, codec %s, in a %s)",
             ", ".join(archive_topics(settings)), settings.data_path, settings.archive_segment_records,
             settings.archive_segment_seconds, settings.archive_codec, settings.archive_mode)
    return service




def _child_setup(nice: int, sched_idle: bool = False) -> None:
    """In the child, before exec: a lower CPU priority, and SIGKILL when the worker dies (Linux), as a container's
    processes die together.

    Niced because archiving is not latency-bound (records are acked once sealed, 30 s segments by default) but
    costs ~2x scoring's CPU per event (two fastavro records, docs/side-lanes-cost.md): on a box whose cores are
    all busy it takes CPU from scoring only where scoring leaves some, and catches up when the load falls.
    """
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    if sys.platform != "linux":
        return
    if sched_idle:  # only where no other process wants the CPU: nice 10 alone still took ~a core from scoring
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # (the spawning thread is the event loop's, which lives as long as the worker)
    with contextlib.suppress(OSError):  # no libc: an orphaned archiver still seals and commits on SIGTERM
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
