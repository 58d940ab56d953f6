"""Training data as a dataset version, so a model card can name the exact data a model was trained on.

The rows are archived like consumed records of an internal topic ``_training.<model>.<version>``
(partition 0, offsets 0..n-1, no timestamp): key ``train-<i>``, value the FeatureEvent JSON of the row,
header ``label`` = its class. Internal topics (leading ``_``) are left out of stream snapshots unless
named. The version id is the content hash of those records, so the same training data always gets the
same id, and a different set under the same model version is refused rather than silently mixed in.

>>> import tempfile
>>> import numpy as np
>>> from datastore.storage import LocalStorage
>>> X, y = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0, 1])
>>> with tempfile.TemporaryDirectory() as d:
...     store = LocalStorage(d)
...     v1 = archive_training_data(store, "m", "1", X, y, ["a", "b"], ["no", "yes"])
...     v2 = archive_training_data(store, "m", "1", X, y, ["a", "b"], ["no", "yes"])  # idempotent
...     try:
...         archive_training_data(store, "m", "1", X + 1, y, ["a", "b"], ["no", "yes"])
...     except TrainingDataConflict:
...         refused = True
...     v1.id == v2.id, v1.record_count, v1.selection.topics, refused
(True, 2, ['_training.m.1'], True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from datastore.archive import Archive, TopicSpec
from datastore.canonical import ContentHasher, SourceRecord
from datastore.catalog import list_manifests
from datastore.dataset import DatasetVersion, Selection, load_version, snapshot
from datastore.storage import Storage


class TrainingDataConflict(RuntimeError):
    """Other training data is already archived under this model name and version."""


def training_topic(name: str, version: str) -> str:
    return f"_training.{name}.{version}"


def training_records(topic: str, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str],
                     classes: Sequence[str]) -> list[SourceRecord]:
    """One FeatureEvent record per row (float64 values as JSON: the exact training inputs)."""
    records = []
    for i, (row, label) in enumerate(zip(np.asarray(X, dtype=np.float64).tolist(), np.asarray(y).tolist(),
                                         strict=True)):
        event_id = f"train-{i}"
        value = orjson.dumps({"event_id": event_id, "entity_id": "training", "event_time": 0, "schema_version": 1,
                              "features": dict(zip(feature_names, row, strict=True))})
        records.append(SourceRecord(topic, 0, i, None, event_id.encode(), value,
                                    [("label", str(classes[int(label)]).encode())]))
    return records


def archive_training_data(storage: Storage, name: str, version: str, X: np.ndarray, y: np.ndarray,
                          feature_names: Sequence[str], classes: Sequence[str],
                          segment_records: int = 50_000) -> DatasetVersion:
    """Archive (X, y) as the training data of ``name@version``; returns its dataset version (existing or new)."""
    topic = training_topic(name, version)
    records = training_records(topic, X, y, feature_names, classes)
    expected = ContentHasher()
    for rec in records:
        expected.add(rec)
    try:
        return load_version(storage, expected.hexdigest())
    except KeyError:
        pass
    if list_manifests(storage, [topic]):
        raise TrainingDataConflict(f"{topic}: other training data is already archived for {name}@{version}; "
                                   "train under a new version")
    archive: Archive[int] = Archive(storage, {topic: TopicSpec("event", "json")}, segment_records=segment_records,
                                    segment_seconds=float("inf"), writer=f"train:{name}@{version}")
    try:
        archive.add([(rec, rec.offset) for rec in records])
        archive.seal_all("flush")
    finally:
        archive.close()
    made, _created = snapshot(storage, Selection(topics=[topic]), description=f"training data of {name}@{version}")
    if made.id != expected.hexdigest():  # the archive must hold exactly the rows given
        raise RuntimeError(f"{topic}: archived content {made.id} differs from the training rows {expected.hexdigest()}")
    return made
