"""Training data for a retrain request: the archived inputs it names, joined with their labels, content-addressed.

    request.data_version "kafka:features[0]@10-99,..." ──▶ archive dataset version (datastore.dataset.snapshot:
    content id of exactly those input records) ──▶ rows with a label (labels topic, by event id) ──▶ training
    dataset ``<sha256>`` = sha256 of {inputs version id, classes, [(event id, class index), ...] in canonical order}

The training dataset is saved as ``training/<id>.json`` in the data store next to the archive's versions: the
inputs version id, the labelled event ids with their class index, and the ids that produced it (request, alert,
offsets). So the exact X, y can be rebuilt from the archive at any time (``load_xy``), and ``streamscore lineage``
follows a model card's ``training_data_version`` to the request and the alert.

Below ``min_rows`` labelled rows (or without both classes) ``build`` raises ``TooFewLabels``: a retrain on a
handful of rows would be noise promoted by luck.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from datastore.catalog import coverage_of
from datastore.dataset import DatasetVersion, OffsetRange, Selection, load_version, snapshot, version_rows
from datastore.storage import Storage
from schemas.drift import RetrainRequest

__all__ = ["DataNotArchived", "TooFewLabels", "TrainingDataset", "build", "load_training", "load_xy",
           "training_key"]

TRAINING_PREFIX = "training/"


class TooFewLabels(ValueError):
    """Fewer labelled rows than the configured minimum (or one class only)."""


class DataNotArchived(RuntimeError):
    """The inputs the request names are not all in sealed segments yet."""


class TrainingDataset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = "streamscore.training/1"
    id: str
    inputs_version: str
    data_version: str
    request_id: str
    alert_id: str
    model_name: str
    features: list[str]
    classes: list[str]
    labels_topic: str
    rows: list[tuple[str, int]]  # (event id, class index), in the inputs version's canonical order
    inputs: int  # input records in the version (labelled or not)
    max_timestamp_ms: int | None

    @property
    def short_id(self) -> str:
        return self.id[:12]


def training_key(training_id: str) -> str:
    return f"{TRAINING_PREFIX}{training_id}.json"


def load_training(storage: Storage, training_id: str) -> TrainingDataset | None:
    """The training dataset of that id, or None when the id is not one (e.g. an archive version id)."""
    key = training_key(training_id)
    if not storage.exists(key):
        return None
    return TrainingDataset.model_validate_json(storage.get_bytes(key))


def _ranges(request: RetrainRequest) -> list[OffsetRange]:
    return [OffsetRange(topic=r.topic, partition=r.partition, first_offset=r.first_offset,
                        last_offset=r.last_offset) for r in request.offsets]


def inputs_version(storage: Storage, request: RetrainRequest) -> DatasetVersion:
    """The archive dataset version of the request's input offsets (``DataNotArchived`` until they are sealed)."""
    ranges = _ranges(request)
    missing = [r for r in ranges if not coverage_of(storage, r.topic, r.partition).contains_range(
        r.first_offset, r.last_offset)]
    if missing:
        raise DataNotArchived("not yet archived: " + ", ".join(
            f"{r.topic}[{r.partition}]@{r.first_offset}-{r.last_offset}" for r in missing))
    selection = Selection(topics=sorted({r.topic for r in ranges}), offsets=ranges)
    version, _ = snapshot(storage, selection, description=f"retrain request {request.request_id}")
    return version


def _features_by_id(storage: Storage, version: DatasetVersion, features: Sequence[str]
                    ) -> tuple[list[str], dict[str, list[float]]]:
    order: list[str] = []
    rows: dict[str, list[float]] = {}
    for _seg, row in version_rows(storage, version):
        event = row.get("event")
        if event is None or event["event_id"] in rows:  # invalid input (dead-lettered), or a re-sent id
            continue
        try:
            rows[event["event_id"]] = [float(event["features"][f]) for f in features]
        except KeyError:
            continue  # an event without every feature was dead-lettered by the worker, not scored
        order.append(event["event_id"])
    return order, rows


def build(storage: Storage, request: RetrainRequest, labels: Mapping[str, int], *, features: Sequence[str],
          classes: Sequence[str], labels_topic: str, min_rows: int) -> TrainingDataset:
    """Join the request's archived inputs with ``labels`` (event id -> class index), save and return the dataset."""
    version = inputs_version(storage, request)
    order, _rows = _features_by_id(storage, version, features)
    labelled = [(eid, int(labels[eid])) for eid in order if eid in labels]
    present = {y for _e, y in labelled}
    if len(labelled) < min_rows or len(present) < len(classes):
        raise TooFewLabels(f"{len(labelled)} labelled rows of {len(order)} inputs in {request.data_version} "
                           f"(classes present {sorted(present)}); at least {min_rows} with every class are needed "
                           "(STREAMSCORE_RETRAIN_MIN_ROWS)")
    digest = hashlib.sha256(json.dumps({"inputs": version.id, "features": list(features), "classes": list(classes),
                                        "rows": labelled}, separators=(",", ":")).encode()).hexdigest()
    ds = TrainingDataset(id=digest, inputs_version=version.id, data_version=request.data_version,
                         request_id=request.request_id, alert_id=request.alert_id, model_name=request.model_name,
                         features=list(features), classes=list(classes), labels_topic=labels_topic, rows=labelled,
                         inputs=len(order), max_timestamp_ms=version.max_timestamp_ms)
    key = training_key(ds.id)
    if not storage.exists(key):  # content-addressed: the same id is the same bytes
        storage.put_bytes(key, (ds.model_dump_json(indent=1) + "\n").encode())
    return ds


def load_xy(storage: Storage, ds: TrainingDataset) -> tuple[np.ndarray, np.ndarray]:
    """X (float64, features in order) and y (class indices) of a training dataset, read back from the archive."""
    _order, rows = _features_by_id(storage, load_version(storage, ds.inputs_version), ds.features)
    X = np.array([rows[eid] for eid, _y in ds.rows], dtype=np.float64)
    y = np.array([y for _eid, y in ds.rows], dtype=np.int64)
    return X, y
