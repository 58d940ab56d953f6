"""The join window: features and online predictions held by event id until the event's label arrives.

A bounded in-memory store, insertion-ordered so the oldest entry is evicted first, with a TTL on the
event's Kafka timestamp and a maximum size; both bounds keep memory flat whatever the label delay.
Each entry is filled from two sides (features, then the online prediction, in either order) and taken
by the label. Ids that left the store are remembered (ids only, same size bound) to tell why a label
found nothing:

* ``late``: the event left the window (TTL or size) before its label came;
* ``duplicate``: the event was already learned (a second label, or a redelivered one);
* ``unknown``: never seen in the window.

Nothing here is fatal; the caller counts the outcome and moves on.

>>> store = JoinStore(ttl_s=60, max_size=2, clock=lambda: 1000.0)
>>> store.add_features("e1", [1.0, 2.0], ts_ms=999_000)
>>> store.add_prediction("e1", "3", 0.9, "risky", ts_ms=999_000)
>>> entry = store.take("e1")
>>> entry.row, entry.prediction
([1.0, 2.0], ('3', 0.9, 'risky'))
>>> store.take("e1") is None, store.miss_reason("e1"), store.miss_reason("e9")
(True, 'duplicate', 'unknown')
>>> for i in range(3):
...     store.add_features(f"n{i}", [0.0], ts_ms=999_500)
>>> len(store), store.miss_reason("n0")  # size bound: the oldest went first
(2, 'late')
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

MissReason = Literal["late", "duplicate", "unknown"]
Served = tuple[str, float, str]  # (model_version, score, label) of the online prediction


@dataclass(slots=True)
class Entry:
    ts_ms: int
    row: list[float] | None = None
    prediction: Served | None = None


class JoinStore:
    """Bounded by ``max_size`` entries and ``ttl_s`` seconds of Kafka timestamp age."""

    def __init__(self, ttl_s: float, max_size: int, clock: Callable[[], float] = time.time) -> None:
        if max_size < 1 or ttl_s <= 0:
            raise ValueError("max_size must be >= 1 and ttl_s > 0")
        self.ttl_ms = int(ttl_s * 1000)
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._gone: OrderedDict[str, MissReason] = OrderedDict()  # ids only: why they left

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, event_id: str, ts_ms: int | None, now_ms: int) -> Entry | None:
        """The entry of ``event_id``, new if need be (None: it must not be held); the caller has expired."""
        entry = self._entries.get(event_id)
        if entry is not None:
            return entry
        if self._gone.get(event_id) == "duplicate":  # already learned: a redelivery must not be learned again
            return None
        entry = Entry(ts_ms if ts_ms is not None else now_ms)
        if now_ms - entry.ts_ms > self.ttl_ms:  # arrived already too old (e.g. replaying a topic)
            self._forget(event_id, "late")
            return None
        self._entries[event_id] = entry
        while len(self._entries) > self.max_size:
            self._forget(next(iter(self._entries)), "late")
        return entry

    def _now_expired(self) -> int:
        now_ms = int(self._clock() * 1000)
        self.expire(now_ms)
        return now_ms

    def add_features(self, event_id: str, row: list[float], ts_ms: int | None = None) -> None:
        entry = self._entry(event_id, ts_ms, self._now_expired())
        if entry is not None and entry.row is None:  # the first delivery wins; redeliveries are identical
            entry.row = row

    def add_many_features(self, event_ids: Sequence[str], rows: Sequence[list[float]],
                          ts_ms: Sequence[int | None]) -> None:
        """``add_features`` for a batch, with one clock read and one expiry pass (per input, those two were 40 % of
        the drift lane's join on the scoring thread: 4.3 -> 2.4 us per sampled input, measured)."""
        now_ms = self._now_expired()
        for event_id, row, ts in zip(event_ids, rows, ts_ms, strict=True):
            entry = self._entry(event_id, ts, now_ms)
            if entry is not None and entry.row is None:
                entry.row = row

    def add_prediction(self, event_id: str, version: str, score: float, label: str, ts_ms: int | None = None) -> None:
        entry = self._entry(event_id, ts_ms, self._now_expired())
        if entry is not None and entry.prediction is None:  # the first served prediction is the one evaluated
            entry.prediction = (version, score, label)

    def peek(self, event_id: str) -> Entry | None:
        return self._entries.get(event_id)

    def take(self, event_id: str) -> Entry | None:
        """Remove and return the entry if its features are here (and remember the id as learned)."""
        entry = self._entries.get(event_id)
        if entry is None or entry.row is None:
            return None
        if int(self._clock() * 1000) - entry.ts_ms > self.ttl_ms:  # expired, though not yet at the front
            self._forget(event_id, "late")
            return None
        del self._entries[event_id]
        self._remember(event_id, "duplicate")
        return entry

    def miss_reason(self, event_id: str) -> MissReason:
        return self._gone.get(event_id, "unknown")

    def expire(self, now_ms: int | None = None) -> int:
        """Drop entries older than the TTL from the front (entries arrive roughly in timestamp order)."""
        now_ms = int(self._clock() * 1000) if now_ms is None else now_ms
        dropped = 0
        while self._entries:
            event_id, entry = next(iter(self._entries.items()))
            if now_ms - entry.ts_ms <= self.ttl_ms:
                break
            self._forget(event_id, "late")
            dropped += 1
        return dropped

    def clear(self) -> None:
        self._entries.clear()
        self._gone.clear()

    def _forget(self, event_id: str, reason: MissReason) -> None:
        self._entries.pop(event_id, None)
        self._remember(event_id, reason)

    def _remember(self, event_id: str, reason: MissReason) -> None:
        self._gone[event_id] = reason
        self._gone.move_to_end(event_id)
        while len(self._gone) > self.max_size:
            self._gone.popitem(last=False)
