"""Epochs: the incarnations of a topic partition, so offsets reused by the broker never pass as archived.

Kafka offsets identify a record only within one incarnation of a partition. A memory-only broker that
restarts starts again at offset 0, and a topic deleted and re-created does too; to the archive's
"already archived?" check the new records look like the old ones, and were skipped (faults issue #4).
So the archive numbers the incarnations it has seen of each (topic, partition): epoch 0, 1, 2, ...;
segments, coverage and de-duplication are per epoch, and records are keyed by
(topic, partition, epoch, offset). A new epoch is started (``datastore.archive.Archive``) when

* the broker reports another topic id than the one recorded for the current epoch, or
* a consumed record sits at an offset the current epoch already holds and differs from the archived
  copy in key, value or timestamp (a record at an offset inside a sealed range that the archive does
  not hold, a gap, differs too: an incarnation's offsets never gain records afterwards).

Epoch 0 is implicit (no file) until something is recorded about it; every segment archived before epochs
existed is epoch 0. An epoch is stored as ``epochs/<topic>/<partition>/<epoch:06d>.json``, written under
the store lock with a compare-and-set on the current epoch, so two workers that see the same new
incarnation (a partition moving between them) start one epoch, not two.

>>> import tempfile
>>> from datastore.storage import LocalStorage
>>> with tempfile.TemporaryDirectory() as d:
...     store = LocalStorage(d)
...     e0 = current_epoch(store, "t", 0)
...     e1, started = start_epoch(store, "t", 0, after=0, reason="record_differs", first_offset=0)
...     again, started_again = start_epoch(store, "t", 0, after=0, reason="record_differs", first_offset=0)
...     [e.epoch for e in list_epochs(store, "t", 0)], e0.epoch, e1.epoch, started, again.epoch, started_again
([0, 1], 0, 1, True, 1, False)
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from datastore.storage import Storage

EPOCHS_PREFIX = "epochs/"
Reason = Literal["initial", "topic_id_changed", "record_differs", "gap_offset"]


class Epoch(BaseModel):
    """One incarnation of a topic partition as the archive saw it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    partition: int
    epoch: int = Field(ge=0)
    topic_id: str | None = Field(None, description="Kafka topic id of this incarnation, when the broker gave one.")
    reason: Reason = "initial"
    first_offset: int | None = Field(None, description="Offset of the record that started it.")
    evidence: str = Field("", description="What differed (offset, fields), for the operator.")
    started_at: int | None = Field(None, description="Epoch ms; None for the implicit epoch 0.")
    started_by: str = ""


def epoch_key(topic: str, partition: int, epoch: int) -> str:
    return f"{EPOCHS_PREFIX}{topic}/{partition}/{epoch:06d}.json"


def list_epochs(storage: Storage, topic: str, partition: int) -> list[Epoch]:
    """Every recorded epoch of the partition, oldest first; the implicit epoch 0 is included."""
    found = {0: Epoch(topic=topic, partition=partition, epoch=0)}
    for key in storage.list(f"{EPOCHS_PREFIX}{topic}/{partition}/"):
        if key.endswith(".json"):
            e = Epoch.model_validate_json(storage.get_bytes(key))
            found[e.epoch] = e
    return [found[n] for n in sorted(found)]


def current_epoch(storage: Storage, topic: str, partition: int) -> Epoch:
    """The newest epoch of the partition (epoch 0 when none was ever started)."""
    return list_epochs(storage, topic, partition)[-1]


def start_epoch(storage: Storage, topic: str, partition: int, after: int, reason: Reason,
                first_offset: int | None, topic_id: str | None = None, evidence: str = "",
                started_by: str = "") -> tuple[Epoch, bool]:
    """Start epoch ``after + 1`` unless the partition is no longer at ``after``; returns (current epoch, started).

    When another writer already moved the partition past ``after``, its newest epoch is returned unchanged
    (``started`` False): the caller checks its record against that epoch instead.
    """
    with storage.lock():
        now = current_epoch(storage, topic, partition)
        if now.epoch != after:
            return now, False
        epoch = Epoch(topic=topic, partition=partition, epoch=after + 1, topic_id=topic_id, reason=reason,
                      first_offset=first_offset, evidence=evidence, started_at=time.time_ns() // 1_000_000,
                      started_by=started_by)
        storage.put_bytes(epoch_key(topic, partition, epoch.epoch), (epoch.model_dump_json(indent=1) + "\n").encode())
        return epoch, True


def record_topic_id(storage: Storage, epoch: Epoch, topic_id: str) -> Epoch:
    """Remember the topic id of an epoch that had none (its first check with the broker's id)."""
    with storage.lock():
        updated = epoch.model_copy(update={"topic_id": topic_id})
        storage.put_bytes(epoch_key(epoch.topic, epoch.partition, epoch.epoch),
                          (updated.model_dump_json(indent=1) + "\n").encode())
        return updated
