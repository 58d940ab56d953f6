"""One line when the broker stops answering, one when it answers again, and what was left out in between.

During an outage every client retries on its own (aiokafka for Faust, librdkafka for the lanes, our publisher),
and each used to log every attempt: 3,798-4,203 lines (0.75-0.82 MB) per worker in a 50 s outage. The lines
are now summarised (``streams.logs.Summariser``); this watch says when the outage began and ended, and how many
lines it left out, by source, so an operator reads three lines instead of four thousand.

>>> now = [0.0]
>>> reachable = [True]
>>> watch = OutageWatch(lambda: reachable[0], "127.0.0.1:9092", clock=lambda: now[0])
>>> watch.check(), watch.health()["reachable"]
(None, True)
>>> reachable[0], now[0] = False, 5.0
>>> watch.check()
'broker 127.0.0.1:9092 not answering since 0 s: the worker keeps retrying (lines alike are logged once per 60 s)'
>>> watch.health()["unreachable_for_s"], watch.health()["healthy"]  # an outage is not the worker's fault
(0.0, True)
>>> reachable[0], now[0] = True, 50.0
>>> watch.check()
'broker 127.0.0.1:9092 answers again after 45 s'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mode import Service

from streams.logs import SUMMARY, Summariser

__all__ = ["OutageWatch", "OutageWatchService"]

log = logging.getLogger(__name__)


class OutageWatch:
    """Turns a ``reachable()`` flag (the lag monitor's: the broker answered within a few intervals) into the
    outage's first and last line, and the /healthz ``broker`` part."""

    def __init__(self, reachable: Callable[[], bool], address: str, summary: Summariser = SUMMARY,
                 clock: Callable[[], float] = time.monotonic,
                 answer_age_s: Callable[[], float | None] = lambda: None) -> None:
        self.reachable, self.address, self.summary, self.clock = reachable, address, summary, clock
        self.answer_age_s = answer_age_s  # the outage began at the last answer, not when it was noticed (15 s later)
        self.seen_up = False  # before the first answer (start-up) nothing is an outage
        self.down_since: float | None = None

    def check(self) -> str | None:
        """The line to log if reachability changed since the last check (also logged here), else None."""
        up = self.reachable()
        line = None
        if not up and self.seen_up and self.down_since is None:
            self.down_since = self.clock() - (self.answer_age_s() or 0.0)
            self.summary.take_suppressed()  # count from here: what the outage's own lines add
            line = (f"broker {self.address} not answering since {self.clock() - self.down_since:.0f} s: the worker "
                    f"keeps retrying (lines alike are logged once per {self.summary.interval_s:.0f} s)")
            log.warning(line)
        elif up and self.down_since is not None:
            line = f"broker {self.address} answers again after {self.clock() - self.down_since:.0f} s"
            left_out = self.summary.take_suppressed()
            if left_out:
                by_source = ", ".join(f"{source} {n:,}" for source, n in left_out.most_common())
                line += f"; {sum(left_out.values()):,} lines alike left out meanwhile ({by_source})"
            self.down_since = None
            log.warning(line)
        self.seen_up = self.seen_up or up
        return line

    def health(self) -> dict[str, object]:
        """/healthz's ``broker`` part: always healthy (restarting the worker cannot bring a broker back), but it
        says whether the broker answers and for how long it has not."""
        down = self.down_since
        return {"healthy": True, "reachable": down is None and self.reachable(), "address": self.address,
                **({"unreachable_for_s": round(self.clock() - down, 1)} if down is not None else {})}


class OutageWatchService(Service):
    """Checks the watch every second on the worker's event loop (a flag read: no I/O)."""

    def __init__(self, watch: OutageWatch, **kwargs: object) -> None:
        self.watch = watch
        super().__init__(**kwargs)

    @Service.timer(1.0)
    async def _check(self) -> None:
        self.watch.check()
