"""Waiting in end-to-end tests: poll a condition until it holds, or fail with the processes' logs.

>>> class Quiet:
...     def log(self) -> str:
...         return "worker log tail"
>>> wait_until("a number", lambda: 42, Quiet(), timeout=1)
42
>>> try:
...     wait_until("never", lambda: None, Quiet(), timeout=0.3)
... except AssertionError as exc:
...     print(str(exc))
timed out waiting for never (0.3 s)
worker log tail
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")
POLL_S = 0.2  # a broker read per poll costs ~0.1 s: polling faster only loads the machine the processes share


class HasLog(Protocol):
    def log(self) -> str: ...


def wait_until(what: str, predicate: Callable[[], T | None], flow: HasLog, timeout: float = 60) -> T:
    """The first truthy value of ``predicate()`` within ``timeout`` s; else AssertionError naming ``what`` with
    ``flow.log()`` (the tails of the flow's process logs), so a timeout says what the processes were doing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what} ({timeout:g} s)\n{flow.log()}")
