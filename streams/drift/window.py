"""The sliding window of the drift monitor: the last N input messages, as numpy ring buffers.

The drift lane's consumer thread appends (a few array writes per message); the app's timer takes a
``snapshot`` (a copy) and the statistics are computed on that copy on the drift thread. The window itself
is not thread-safe: ``DriftMonitor`` holds its lock only while a batch is appended or copied.

Undecodable messages take a slot too (a row of NaN flagged invalid), so the window is "the last N
messages" and its offset ranges are contiguous per partition.

>>> w = SlidingWindow(size=3, n_features=2)
>>> for offset in range(5):
...     w.append("features", 0, offset, 1000 + offset, [float(offset), 1.0])
>>> w.append("features", 1, 7, None, None)  # a message that did not decode
>>> snap = w.snapshot()
>>> snap.X.tolist(), snap.n_events, snap.n_invalid, (snap.start_ms, snap.end_ms)
([[3.0, 1.0], [4.0, 1.0]], 3, 1, (1003, 1004))
>>> [(r.partition, r.first_offset, r.last_offset) for r in snap.offsets]
[(0, 3, 4), (1, 7, 7)]
>>> w.appended
6

``extend`` appends a batch in one go (what the scoring pipeline's listener feeds, streams/drift/lane.py):

>>> w.extend([("features", 2)] * 2, [10, 11], [2000, 2001], np.array([[5.0, 1.0], [6.0, 1.0]]),
...          np.array([True, True]))
>>> snap = w.snapshot()
>>> snap.X.tolist(), snap.n_invalid, w.appended
([[5.0, 1.0], [6.0, 1.0]], 1, 8)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.drift import OffsetRange

__all__ = ["SlidingWindow", "WindowSnapshot"]


@dataclass(frozen=True)
class WindowSnapshot:
    """A copy of the window: feature rows of the decodable messages, and where the window lies."""

    X: np.ndarray  # (n_valid, n_features) float64, NaN where a feature was missing
    n_events: int  # messages in the window, undecodable ones included
    n_invalid: int
    start_ms: int  # earliest / latest event_time of the decodable messages
    end_ms: int
    offsets: list[OffsetRange]
    appended: int  # messages appended since the window was created (tells a new snapshot from an old one)
    # Labelled rows since the last snapshot and their 0/1 targets (concept drift; filled by the monitor).
    labelled: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    targets: np.ndarray = field(default_factory=lambda: np.empty(0))


class SlidingWindow:
    """The last ``size`` messages: per-message feature row, event time and (topic, partition, offset)."""

    def __init__(self, size: int, n_features: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.n_features = n_features
        self._rows = np.full((size, n_features), np.nan)
        self._valid = np.zeros(size, bool)
        self._time = np.zeros(size, np.int64)
        self._source = np.zeros(size, np.int32)  # index into self._sources
        self._offset = np.zeros(size, np.int64)
        self._sources: list[tuple[str, int]] = []
        self._source_ids: dict[tuple[str, int], int] = {}
        self.appended = 0

    def __len__(self) -> int:
        return min(self.appended, self.size)

    def append(
        self, topic: str, partition: int, offset: int, event_time: int | None, row: Sequence[float] | None
    ) -> None:
        """Add one message; ``row`` None marks it undecodable (NaN values in ``row`` mark missing features)."""
        i = self.appended % self.size
        key = (topic, partition)
        source = self._source_ids.get(key)
        if source is None:
            source = self._source_ids[key] = len(self._sources)
            self._sources.append(key)
        self._source[i], self._offset[i] = source, offset
        if row is None:
            self._valid[i] = False
            self._rows[i] = np.nan
        else:
            self._valid[i] = True
            self._rows[i] = row
            self._time[i] = event_time or 0
        self.appended += 1

    def extend(self, sources: Sequence[tuple[str, int]], offsets: Sequence[int], event_times: Sequence[int],
               rows: np.ndarray, valid: np.ndarray) -> None:
        """Add a batch of messages in order: ``rows`` (n, n_features), ``valid`` False marks undecodable ones.

        Array writes for the whole batch (the per-message Python of ``append`` is what made the lane cost a
        third of the batch engine's throughput); only the (topic, partition) ids are looked up per message.
        """
        n = len(offsets)
        if n == 0:
            return
        if n > self.size:  # only the last ``size`` can stay; the count still says how many came
            skip = n - self.size
            self.appended += skip
            sources, offsets, event_times = sources[skip:], offsets[skip:], event_times[skip:]
            rows, valid, n = rows[skip:], valid[skip:], self.size
        ids = self._source_ids
        source = [ids.get(key) for key in sources]
        if None in source:
            for k, key in enumerate(sources):
                if source[k] is None:
                    if key not in ids:
                        ids[key] = len(self._sources)
                        self._sources.append(key)
                    source[k] = ids[key]
        at = (self.appended + np.arange(n)) % self.size
        self._source[at] = source
        self._offset[at] = offsets
        self._valid[at] = valid
        self._rows[at] = np.where(valid[:, None], rows, np.nan)
        self._time[at] = np.where(valid, np.asarray(event_times, dtype=np.int64), 0)
        self.appended += n

    def snapshot(self) -> WindowSnapshot:
        n = len(self)
        valid = self._valid[:n]
        times = self._time[:n][valid]
        offsets = []
        sources, where = self._source[:n], self._offset[:n]
        for source in np.unique(sources):
            held = where[sources == source]
            topic, partition = self._sources[source]
            offsets.append(OffsetRange(topic=topic, partition=partition, first_offset=int(held.min()),
                                       last_offset=int(held.max())))
        offsets.sort(key=lambda r: (r.topic, r.partition))
        return WindowSnapshot(
            X=self._rows[:n][valid].copy(),
            n_events=n,
            n_invalid=int(n - valid.sum()),
            start_ms=int(times.min()) if times.size else 0,
            end_ms=int(times.max()) if times.size else 0,
            offsets=offsets,
            appended=self.appended,
        )
