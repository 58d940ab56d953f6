"""Importing River without scikit-learn, which River loads for one optional helper a worker never calls.

``river.drift``, ``river.forest``, ``river.preprocessing`` and ``river.tree`` import ``river.stream``, which
imports scikit-learn (and through it pandas and pyarrow) for ``iter_sklearn_dataset`` only. scikit-learn is an
optional dependency of River, so River guards that import (``try ... except ImportError``). Inside
``river_without_sklearn`` an ``import sklearn`` fails as if it were not installed, so River skips the helper:
in a worker, River's concept-drift detectors cost 7.5 MB of RSS instead of 75 MB and the learners 89 MB instead
of 160 MB (measured, imports on top of numpy). scikit-learn stays importable afterwards (training imports it
in its own commands) and is not hidden when something already loaded it. While River is being imported, another
thread's first ``import sklearn`` would fail too; no lane of a worker imports it (it trains in ``streamscore
retrain`` and ``train-demo``, other processes).

>>> with river_without_sklearn():
...     from river import drift
>>> detector = drift.ADWIN()
>>> _ = detector.update(0.5)
>>> detector.drift_detected
False
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["river_without_sklearn"]

_lock = threading.Lock()  # two lanes importing River at once must not each restore the other's entry


@contextmanager
def river_without_sklearn() -> Iterator[None]:
    """Imports inside see scikit-learn as not installed, unless it is already loaded."""
    with _lock:
        hide = "sklearn" not in sys.modules
        if hide:
            sys.modules["sklearn"] = None  # type: ignore[assignment]  # the import system's "not importable"
        try:
            yield
        finally:
            if hide and "sklearn" in sys.modules and sys.modules["sklearn"] is None:
                del sys.modules["sklearn"]
