"""Debounced drift alerts: turn a stream of drift records into few, meaningful notices.

Per model (one ``AlertDebouncer`` per monitored model and worker):

* the first record with status ``alert`` **fires** a new alert (``notice`` 1) and, if enabled, a
  retrain request naming the window's data;
* while records keep alerting, the alert is **repeated** (same ``alert_id``, ``notice`` 2, 3, ...) at
  most once per ``cooldown_s`` — never once per evaluation;
* after ``resolve_after`` consecutive records without alert-level drift (ok or warn), it is
  **resolved** (one notice, ``state="resolved"``). Needing several in a row keeps a window that
  hovers at the threshold from flapping between firing and resolved.

Time comes from the records (``computed_at``), so the policy is deterministic and testable.

>>> from schemas.drift import DriftRecord
>>> def record(t, status):
...     return DriftRecord(model_name="m", model_version="1", model_sha256="0" * 64, profile_sha256="1" * 64,
...                        worker="w", computed_at=t, window_start_ms=0, window_end_ms=t, window_events=10,
...                        window_invalid=0, window_scored=10, offsets=[], statistics=[], status=status)
>>> d = AlertDebouncer(cooldown_s=60, resolve_after=2, retrain=True)
>>> [type(o).__name__ for o in d.observe(record(1_000, "alert"))]
['DriftAlert', 'RetrainRequest']
>>> d.observe(record(5_000, "alert")), len(d.observe(record(61_000, "alert")))  # within, then after cooldown
([], 1)
>>> d.observe(record(62_000, "ok")), [a.state for a in d.observe(record(63_000, "warn"))]
([], ['resolved'])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.drift import DriftAlert, DriftRecord, DriftStatistic, OffsetRange, RetrainRequest

__all__ = ["AlertDebouncer", "data_version", "parse_data_version", "reasons"]


@dataclass
class _Firing:
    alert_id: str
    started_at: int
    last_notice_at: int
    notices: int
    clear_streak: int = 0


class AlertDebouncer:
    """The alert state of one model: what to publish for each new drift record."""

    def __init__(self, cooldown_s: float = 300.0, resolve_after: int = 3, retrain: bool = True) -> None:
        if resolve_after < 1:
            raise ValueError(f"resolve_after must be >= 1, got {resolve_after}")
        self.cooldown_ms = int(cooldown_s * 1000)
        self.resolve_after = resolve_after
        self.retrain = retrain
        self.firing: _Firing | None = None

    def observe(self, record: DriftRecord) -> list[DriftAlert | RetrainRequest]:
        """Alerts and retrain requests to publish for ``record`` (usually none)."""
        now, current = record.computed_at, self.firing
        if record.status == "alert":
            if current is None:
                alert_id = f"{record.model_name}-{record.model_version}-{record.worker}-{now}"
                self.firing = _Firing(alert_id, started_at=now, last_notice_at=now, notices=1)
                return self._fire(record)
            current.clear_streak = 0
            if now - current.last_notice_at >= self.cooldown_ms:
                current.notices += 1
                current.last_notice_at = now
                return [self._alert(record, "firing")]
            return []
        if current is not None:
            current.clear_streak += 1
            if current.clear_streak >= self.resolve_after:
                current.notices += 1
                notice = self._alert(record, "resolved")
                self.firing = None
                return [notice]
        return []

    def _fire(self, record: DriftRecord) -> list[DriftAlert | RetrainRequest]:
        assert self.firing is not None
        if not self.retrain:
            return [self._alert(record, "firing")]
        request = RetrainRequest(
            request_id=f"retrain-{self.firing.alert_id}",
            model_name=record.model_name,
            model_version=record.model_version,
            model_sha256=record.model_sha256,
            requested_at=record.computed_at,
            alert_id=self.firing.alert_id,
            reason="; ".join(reasons(record.statistics)),
            data_version=data_version(record.offsets),
            offsets=record.offsets,
            window_start_ms=record.window_start_ms,
            window_end_ms=record.window_end_ms,
            worker=record.worker,
        )
        return [self._alert(record, "firing", request.request_id), request]

    def _alert(self, record: DriftRecord, state: str, retrain_request_id: str | None = None) -> DriftAlert:
        assert self.firing is not None
        return DriftAlert(
            alert_id=self.firing.alert_id,
            model_name=record.model_name,
            model_version=record.model_version,
            state=state,  # type: ignore[arg-type]
            status=record.status,
            notice=self.firing.notices,
            started_at=self.firing.started_at,
            emitted_at=record.computed_at,
            reasons=reasons(record.statistics) if state == "firing" else [],
            window_start_ms=record.window_start_ms,
            window_end_ms=record.window_end_ms,
            offsets=record.offsets,
            worker=record.worker,
            retrain_request_id=retrain_request_id,
        )


def reasons(statistics: list[DriftStatistic]) -> list[str]:
    """One phrase per alert-level statistic, e.g. ``"amount psi 0.312 >= 0.25"``.

    >>> reasons([DriftStatistic(kind="feature", feature="amount", statistic="ks", value=0.2, p_value=1e-9,
    ...          warn_threshold=0.08, alert_threshold=0.1, p_threshold=0.01, status="alert")])
    ['amount ks 0.2 >= 0.1 (p 1e-09)']
    """
    out = []
    for s in statistics:
        if s.status != "alert":
            continue
        x = s.effect if s.effect is not None else s.value
        if s.kind == "concept":  # a detector fired on the error stream; ADWIN has no threshold on its value
            out.append(f"concept drift: {s.statistic} detected a change in the error rate ({s.feature} {x:.3g})")
            continue
        subject = s.feature if s.kind == "feature" else f"prediction {s.feature}"
        phrase = f"{subject} {s.statistic} {x:.3g} >= {s.alert_threshold:g}"
        out.append(phrase if s.p_value is None else f"{phrase} (p {s.p_value:.2g})")
    return out


def data_version(offsets: list[OffsetRange]) -> str:
    """The window's data as ``kafka:<topic>[<partition>]@<first>-<last>,...``.

    It names exactly the input messages of the window (readable for the topic's retention); the archive
    turns it into a content-addressed dataset version: ``streamscore data snapshot --offsets '<it>'``. (At
    alert time the newest of those messages are usually not in sealed segments yet, so the drift lane
    does not snapshot by itself.)

    >>> data_version([OffsetRange(topic="features", partition=0, first_offset=10, last_offset=99)])
    'kafka:features[0]@10-99'
    """
    return "kafka:" + ",".join(f"{r.topic}[{r.partition}]@{r.first_offset}-{r.last_offset}" for r in offsets)


def parse_data_version(text: str) -> list[OffsetRange]:
    """The offset ranges a ``data_version`` string names (its inverse).

    >>> [(r.topic, r.partition, r.first_offset, r.last_offset)
    ...  for r in parse_data_version("kafka:features[0]@10-99,features-avro[3]@0-4")]
    [('features', 0, 10, 99), ('features-avro', 3, 0, 4)]
    """
    if not text.startswith("kafka:"):
        raise ValueError(f"{text!r} is not a drift data version (kafka:<topic>[<partition>]@<first>-<last>,...)")
    ranges = []
    for part in text.removeprefix("kafka:").split(","):
        match = _RANGE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{part!r} is not <topic>[<partition>]@<first>-<last>")
        topic, partition, first, last = match.groups()
        ranges.append(OffsetRange(topic=topic, partition=int(partition), first_offset=int(first),
                                  last_offset=int(last)))
    return ranges


_RANGE = re.compile(r"(.+)\[(\d+)\]@(\d+)-(\d+)")
