"""Lineage of one event: its archived record, its predictions, the model of each, and that model's data.

    event id ──▶ archived input record (segment, topic[partition]@offset, decoded features)
             ──▶ dataset versions holding it
             ──▶ archived predictions (segment, score, model name@version, sha256)
                     └──▶ model card (models/<name>/<version> or the registry)
                              └──▶ training data version ──▶ its parent chain

Segments are found through the Bloom filter of event ids in each manifest (datastore.bloom), so only
segments that may hold the id are opened; a filter hit is then confirmed row by row. An event archived in
several incarnations of its topic (epochs, datastore.epochs) is listed once per epoch, newest first, and a
dataset version holds it only if it holds that epoch's record.

>>> import tempfile
>>> from datastore.storage import LocalStorage
>>> trace(Settings(state_dir=Path(tempfile.mkdtemp())), LocalStorage(tempfile.mkdtemp()), "evt-1").found
False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from datastore import catalog
from datastore.catalog import coverage_of
from datastore.dataset import (
    DatasetVersion,
    OffsetRange,
    Selection,
    list_versions,
    load_version,
    parent_chain,
    snapshot,
)
from datastore.manifest import SegmentManifest
from datastore.storage import Storage
from models.card import ModelCard
from online_learning.snapshots import SnapshotStore
from streams.archive.replay import resolve_model_dir
from streams.retrain.dataset import TrainingDataset, load_training
from streams.settings import Settings


@dataclass
class ArchivedRow:
    manifest: SegmentManifest
    row: dict[str, Any]

    @property
    def position(self) -> str:
        where = f"{self.row['topic']}[{self.row['partition']}]@{self.row['offset']}"
        return where if self.manifest.epoch == 0 else f"{where} (epoch {self.manifest.epoch})"


@dataclass
class ModelLineage:
    ref: str
    sha256: str
    model_dir: Path | None = None
    card: ModelCard | None = None
    training_version: DatasetVersion | None = None
    chain: list[DatasetVersion] = field(default_factory=list)
    retrain: TrainingDataset | None = None  # when the model was retrained by the closed loop (streams.retrain)
    problems: list[str] = field(default_factory=list)


@dataclass
class LearnedBy:
    """A River snapshot that learned an archived label, and the dataset version of its labels if made."""
    learner: str
    version: int
    data_version: str | None


@dataclass
class Lineage:
    event_id: str
    events: list[ArchivedRow] = field(default_factory=list)
    predictions: list[ArchivedRow] = field(default_factory=list)
    labels: list[ArchivedRow] = field(default_factory=list)
    learned_by: list[LearnedBy] = field(default_factory=list)
    versions: list[DatasetVersion] = field(default_factory=list)
    models: list[ModelLineage] = field(default_factory=list)
    segments_opened: int = 0

    @property
    def found(self) -> bool:
        return bool(self.events or self.predictions or self.labels)


def find_rows(storage: Storage, event_id: str, lineage: Lineage | None = None) -> list[ArchivedRow]:
    """Every archived row whose event id (decoded, or key) is ``event_id``, of every epoch, newest epoch first."""
    opened: list[str] = []
    found = [ArchivedRow(m, row) for m, row in catalog.find_rows(storage, event_id, opened)]
    if lineage is not None:
        lineage.segments_opened += len(opened)
    return found


def model_lineage(settings: Settings, storage: Storage, name: str, version: str, sha256: str) -> ModelLineage:
    """The model card of name@version and the dataset version (and parents) it was trained on."""
    out = ModelLineage(f"{name}@{version}", sha256)
    try:
        out.model_dir = resolve_model_dir(settings, out.ref)
        out.card = ModelCard.load(out.model_dir)
    except (FileNotFoundError, ValueError, ValidationError) as exc:
        out.problems.append(f"model card not found: {exc}")
        return out
    if out.card.onnx_sha256 != sha256:
        out.problems.append(f"{out.model_dir} holds sha256 {out.card.onnx_sha256[:12]}…, the prediction was made by "
                            f"{sha256[:12]}…: not the same artifact")
    ref = out.card.training_data_version
    if ref is None:
        out.problems.append("the model card names no training data version")
        return out
    out.retrain = load_training(storage, ref)
    if out.retrain is not None:  # inputs joined with labels: the inputs are an archive dataset version
        ref = out.retrain.inputs_version
    try:
        out.training_version = load_version(storage, ref)
        out.chain = parent_chain(storage, out.training_version)
    except KeyError:
        out.problems.append(f"training data {ref!r} is not an archived dataset version (no content id)")
    return out


def trace(settings: Settings, storage: Storage, event_id: str) -> Lineage:
    lineage = Lineage(event_id)
    for hit in find_rows(storage, event_id, lineage):
        {"event": lineage.events, "prediction": lineage.predictions, "label": lineage.labels}[hit.manifest.kind].append(
            hit)
    positions = [(r.row["topic"], r.row["partition"], r.row["offset"], r.row["timestamp_ms"], r.manifest.epoch)
                 for r in lineage.events]
    lineage.versions = [v for v in list_versions(storage) if any(v.holds(*p[:4], epoch=p[4]) for p in positions)]
    models: dict[tuple[str, str, str], ModelLineage] = {}
    for hit in lineage.predictions:
        p = hit.row["prediction"]
        if p is not None:
            key = (p["model_name"], p["model_version"], p["model_sha256"])
            if key not in models:
                models[key] = model_lineage(settings, storage, *key)
    lineage.models = list(models.values())
    if lineage.labels and settings.learner is not None:
        lineage.learned_by = learned_by(storage, SnapshotStore(settings.snapshot_path, settings.learner,
                                                                    settings.signing_key_bytes()),
                                        [(r.row["topic"], r.row["partition"], r.row["offset"]) for r in lineage.labels])
    return lineage


def learned_by(storage: Storage, store: SnapshotStore, positions: list[tuple[str, int, int]]) -> list[LearnedBy]:
    """The snapshots whose learned offset ranges hold one of the label ``positions`` (read-only: no version made)."""
    versions = list_versions(storage)
    found = []
    for v in store.versions():
        meta = store.meta(v)
        if not any(r.topic == t and r.partition == p and r.first_offset <= o <= r.last_offset
                   for r in meta.offsets for t, p, o in positions):
            continue
        ranges = [OffsetRange(topic=r.topic, partition=r.partition, first_offset=r.first_offset,
                              last_offset=r.last_offset) for r in meta.offsets]
        data = next((d.id for d in versions if d.selection.offsets == ranges), None)
        found.append(LearnedBy(store.learner, v, data))
    return found


class LabelsNotArchived(RuntimeError):
    """Some labels a River snapshot learned are not in sealed segments (yet, or the archiver was off)."""


def learner_data_version(storage: Storage, store: SnapshotStore, version: int) -> tuple[DatasetVersion, bool]:
    """The dataset version of the labels a River snapshot learned since its parent; (version, created).

    A snapshot pins the labels offsets it learned (``SnapshotMeta.offsets``), so its data is a content-addressed
    selection of the archived labels topic: the same snapshot always maps to the same version id, and versions
    made in snapshot order chain like the snapshots (``parent``). A rollback snapshot serves its target's model,
    hence its target's data. The features the labels were joined with are the archived input events of the
    same event ids (``streamscore lineage EVENT_ID``).
    """
    meta = store.meta(version)
    while meta.kind == "rollback" and meta.parent is not None:
        meta = store.meta(meta.parent)
    if not meta.offsets:
        raise LabelsNotArchived(f"{store.learner} v{meta.version} learned no labels since its parent")
    ranges = [OffsetRange(topic=r.topic, partition=r.partition, first_offset=r.first_offset,
                          last_offset=r.last_offset) for r in meta.offsets]
    missing = [r for r in ranges if not coverage_of(storage, r.topic, r.partition).contains_range(
        r.first_offset, r.last_offset)]
    if missing:
        spans = ", ".join(f"{r.topic}[{r.partition}]@{r.first_offset}..{r.last_offset}" for r in missing)
        raise LabelsNotArchived(f"{store.learner} v{meta.version}: labels {spans} are not all in sealed segments (the "
                                "archiver seals within archive_segment_seconds; it archives labels when "
                                "STREAMSCORE_LEARNER is set)")
    selection = Selection(topics=sorted({r.topic for r in ranges}), offsets=ranges)
    since = f" (since v{meta.parent})" if meta.parent is not None else ""
    return snapshot(storage, selection, description=f"labels learned by {store.learner} v{meta.version}{since}")
