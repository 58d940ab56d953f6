"""The model-lifecycle topic: every step of the closed loop as one JSON event, keyed by model name.

    request_received ─▶ dataset_built ─▶ candidate_trained ─▶ shadow_started ─▶ gate_result ─▶ promoted | rejected
    (request_skipped: stale, in flight, cooldown, already handled; awaiting_approval / approved: manual mode)

Each event carries the ids that link it: ``request_id`` → ``alert_id`` → ``data_version`` (the offsets the alert
named) → ``dataset_version`` (the archive's content id of those inputs) → ``training_dataset`` (inputs joined with
labels, content-addressed) → ``model_version``. The topic has ONE partition, so its order is the loop's order;
the retrain service folds it on start (``LoopState``) to know what is in flight, what was handled and when the
model was last retrained. ``streamscore models approve`` (= ``streamscore retrain approve``) writes its
``approved`` event here too.

>>> e = LifecycleEvent(stage="request_received", model_name="m", request_id="r1", alert_id="a1", at_ms=5, by="me")
>>> decode(encode(e)) == e
True
>>> st = LoopState()
>>> st.apply(e); st.apply(e.model_copy(update={"stage": "shadow_started", "model_version": "2"}))
>>> st.in_flight["m"].model_version, "r1" in st.handled
('2', True)
"""

from __future__ import annotations

import time
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FINAL_STAGES", "LifecycleEvent", "LoopState", "Stage", "decode", "encode"]

Stage = Literal["request_received", "request_skipped", "dataset_built", "candidate_trained", "shadow_started",
                "gate_result", "awaiting_approval", "approved", "promoted", "rejected"]
FINAL_STAGES = ("promoted", "rejected")
Value = str | int | float | bool | None


class LifecycleEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: Stage
    model_name: str
    model_version: str | None = Field(None, description="The candidate (challenger) version.")
    champion_version: str | None = None
    request_id: str | None = None
    alert_id: str | None = None
    data_version: str | None = Field(None, description="kafka:topic[p]@a-b,... as the retrain request named it.")
    dataset_version: str | None = Field(None, description="Archive dataset version id of those inputs.")
    training_dataset: str | None = Field(None, description="Content id of the inputs joined with their labels.")
    reason: str = ""
    detail: dict[str, Value] = Field(default_factory=dict)
    at_ms: int
    by: str


def encode(event: LifecycleEvent) -> bytes:
    return orjson.dumps(event.model_dump(mode="json"))


def decode(raw: bytes) -> LifecycleEvent:
    return LifecycleEvent.model_validate_json(raw)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class LoopState:
    """What the lifecycle topic says so far: candidates in flight, approvals, handled requests, last retrain."""
    def __init__(self) -> None:
        self.in_flight: dict[str, LifecycleEvent] = {}  # model -> its candidate's latest event
        self.approved: set[tuple[str, str]] = set()
        # Requests with an outcome: skipped, rejected, or a candidate in shadow. One that only got as far as
        # request_received (a crash) is taken again when it is redelivered.
        self.handled: set[str] = set()
        self.last_attempt: dict[str, tuple[str, int]] = {}  # model -> (request id, when its dataset was built)

    def apply(self, e: LifecycleEvent) -> None:
        if e.request_id is not None and e.stage in ("request_skipped", "shadow_started", *FINAL_STAGES):
            self.handled.add(e.request_id)
        if e.stage == "dataset_built" and e.request_id is not None:
            self.last_attempt[e.model_name] = (e.request_id, e.at_ms)
        if e.stage == "approved" and e.model_version is not None:
            self.approved.add((e.model_name, e.model_version))
        elif e.stage in ("candidate_trained", "shadow_started", "gate_result", "awaiting_approval"):
            self.in_flight[e.model_name] = e
        elif e.stage in FINAL_STAGES:
            current = self.in_flight.get(e.model_name)
            if current is not None and current.model_version == e.model_version:
                del self.in_flight[e.model_name]
