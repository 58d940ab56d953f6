"""The shape every consumer lane beside scoring shares: a daemon thread looping until ``stop``.

Subclasses implement ``run`` and check ``stopping``; ``stop`` sets it and waits for the thread, so a
lane can seal, commit or close its consumer on the way out.

>>> import time
>>> class Ticker(BackgroundThread):
...     thread_name = "ticker"
...     def __init__(self):
...         super().__init__()
...         self.ticks = 0
...     def run(self):
...         while not self.stopping.is_set():
...             self.ticks += 1
...             time.sleep(0.001)
>>> t = Ticker()
>>> t.start(); time.sleep(0.05); t.stop()
>>> t.ticks > 0, t.alive
(True, False)
"""

from __future__ import annotations

import threading

__all__ = ["BackgroundThread"]


class BackgroundThread:
    """Runs ``run`` on a daemon thread named ``thread_name`` from ``start`` until ``stop``."""

    thread_name = "background"
    stop_timeout_s = 10.0

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        raise NotImplementedError

    def _target(self) -> None:
        self.run()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._target, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout_s if timeout is None else timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
