"""The shape every lane beside scoring shares: a supervised daemon thread looping until ``stop``.

Subclasses implement ``run`` and check ``stopping``; ``stop`` sets it and waits for the thread, so a
lane can seal, commit or close its consumer on the way out. An unexpected error in ``run`` never kills the
lane silently: it is logged once with its cause (repeats are counted), the lane is reported unhealthy
while it waits, and ``run`` starts again after a backoff (1 s, 2 s, 4 s … at most 30 s). Lanes call
``beat`` in their loop: it marks progress (``health()`` shows its age), a restarted lane is healthy again
only from its first beat (not from the moment ``run`` is entered, when it may fail again at once), and it
is where an injected fault surfaces (``inject_failures``, for fault tests through the worker's debug
endpoint).

>>> import time
>>> class Ticker(BackgroundThread):
...     thread_name = "ticker"
...     backoff_s = (0.01,)
...     def __init__(self):
...         super().__init__()
...         self.ticks = 0
...     def run(self):
...         while not self.stopping.is_set():
...             self.beat()
...             self.ticks += 1
...             time.sleep(0.001)
>>> t = Ticker()
>>> t.start(); time.sleep(0.05)
>>> t.inject_failures(2); time.sleep(0.1)
>>> t.stop()
>>> t.ticks > 0, t.alive, t.restarts, t.health()["last_error"]
(True, False, 2, 'InjectedFault: injected by a fault test')
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["NOT_STARTED", "BackgroundThread", "InjectedFault"]

NOT_STARTED = "not started yet"  # a part reports this while the worker is still starting

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised inside a lane by ``beat`` when a fault test asked for it."""


class BackgroundThread:
    """Runs ``run`` on a daemon thread named ``thread_name`` from ``start`` until ``stop``, restarting it on errors."""

    thread_name = "background"
    stop_timeout_s = 10.0
    backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.failing = False  # True from an error until the restarted run() beats
        self.last_beat = time.monotonic()
        self._inject = 0
        self._logged: set[str] = set()

    def run(self) -> None:
        raise NotImplementedError

    def beat(self) -> None:
        """Progress marker, called once per loop iteration of ``run``."""
        self.last_beat = time.monotonic()
        if self._inject:
            self._inject -= 1
            raise InjectedFault("injected by a fault test")
        self.failing = False

    def inject_failures(self, times: int = 1) -> None:
        """Make the next ``times`` beats raise (each one a crash the supervisor must recover from)."""
        self._inject = times

    def _target(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            try:
                self.run()
                return  # run() returns only when stopping
            except Exception as exc:  # supervised: logged once per kind of error, then restarted with backoff
                self.failing = True
                self.last_error = f"{type(exc).__name__}: {exc}"
                kind = f"{type(exc).__name__}:{exc}"
                delay = self.backoff_s[min(attempt, len(self.backoff_s) - 1)]
                if kind in self._logged:
                    log.error("%s failed again (%s); restart %d in %.0f s", self.thread_name, self.last_error,
                              self.restarts + 1, delay)
                else:
                    self._logged.add(kind)
                    log.exception("%s failed; restarting in %.0f s", self.thread_name, delay)
                attempt += 1
                if self.stopping.wait(delay):
                    return
                self.restarts += 1

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self._target, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout_s if timeout is None else timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, object]:
        """For /healthz: healthy while the thread runs and has beaten since its last error."""
        if self._thread is None:
            return {"healthy": False, "alive": False, "reason": NOT_STARTED}
        return {
            "healthy": self.alive and not self.failing,
            "alive": self.alive,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_progress_s_ago": round(time.monotonic() - self.last_beat, 1),
        }
