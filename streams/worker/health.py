"""What /healthz and /readyz answer: every part of the worker reports, and the answer is the truth.

A part is a name and a probe returning a dict with ``healthy`` (and whatever explains it). Two probes are
built here because no single thread can tell them: the scoring engine is *stalled* when it has lag on the
partitions it owns but consumed nothing for ``stall_after_s`` while the broker answers (a crashed Faust agent
or a dead batch thread looks exactly like this: the process lives, nothing moves); and it is *dead* when its
thread has exited. A broker outage is not a worker fault: it makes the worker not ready, not unhealthy, so an
orchestrator does not restart pods that cannot help.

>>> clock = iter(range(0, 100, 5))
>>> watch = ProgressWatch(consumed=lambda: 7, lag=lambda: 3, broker_ok=lambda: True, stall_after_s=10,
...                       now=lambda: float(next(clock)))
>>> watch.probe()["healthy"], watch.probe()["healthy"], watch.probe()["healthy"]
(True, True, False)
>>> health = Health({"scoring": watch.probe, "drift": lambda: {"healthy": True}})
>>> report = health.report()
>>> report["status"], report["failing"]
('failing', ['scoring'])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from streams.background import NOT_STARTED

__all__ = ["Health", "ProgressWatch", "Probe"]

log = logging.getLogger(__name__)

Probe = Callable[[], Mapping[str, object]]


class ProgressWatch:
    """Healthy unless there is lag and the consumed count has not moved for ``stall_after_s`` (broker up) since
    partitions were assigned (a group join or a rebalance is not a stall)."""

    def __init__(self, consumed: Callable[[], float], lag: Callable[[], int | None], broker_ok: Callable[[], bool],
                 stall_after_s: float = 10.0, now: Callable[[], float] = time.monotonic,
                 assigned: Callable[[], bool] = lambda: True) -> None:
        self.consumed, self.lag, self.broker_ok, self.assigned = consumed, lag, broker_ok, assigned
        self.stall_after_s = stall_after_s
        self.now = now
        self._last_count: float | None = None
        self._moved_at = now()

    def probe(self) -> dict[str, object]:
        now, count, lag = self.now(), self.consumed(), self.lag()
        if count != self._last_count or not lag or not self.assigned():  # the clock runs once partitions are ours
            self._last_count, self._moved_at = count, now
        idle = now - self._moved_at
        stalled = bool(lag) and idle >= self.stall_after_s and self.broker_ok()
        return {"healthy": not stalled, "lag": lag, "consumed": count, "idle_s": round(idle, 1),
                **({"reason": f"lag {lag} but nothing consumed for {idle:.0f} s"} if stalled else {})}


class Health:
    """The worker's parts and their probes; a probe that raises counts as failing (and says why)."""

    def __init__(self, probes: Mapping[str, Probe] | None = None) -> None:
        self.probes: dict[str, Probe] = dict(probes or {})
        self._was_failing: set[str] = set()

    def add(self, name: str, probe: Probe) -> None:
        self.probes[name] = probe

    def report(self) -> dict[str, object]:
        parts: dict[str, Mapping[str, object]] = {}
        for name, probe in self.probes.items():
            try:
                parts[name] = dict(probe())
            except Exception as exc:  # a broken probe is a failing part, never a 500 from the health page
                parts[name] = {"healthy": False, "reason": f"probe failed: {type(exc).__name__}: {exc}"}
        failing = sorted(name for name, part in parts.items() if not part.get("healthy", False))
        for name in set(failing) - self._was_failing:  # log transitions, not every probe
            if parts[name].get("reason") == NOT_STARTED:
                continue  # the worker is starting: not a fault (and not remembered as failing)
            log.error("health: %s is failing: %s", name, parts[name].get("reason") or parts[name].get("last_error"))
        for name in self._was_failing - set(failing):
            log.warning("health: %s recovered", name)
        self._was_failing = {name for name in failing if parts[name].get("reason") != NOT_STARTED}
        return {"status": "failing" if failing else "ok", "failing": failing, "parts": parts}
