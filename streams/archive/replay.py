"""Replay: re-score an archived dataset version with a model and check it against the recorded predictions.

For every archived input event of the version, the model scores the decoded features exactly as the
worker does (``FeatureValidator.row`` -> float32 -> ``OnnxScorer.predict_many``), and the result is
compared with every recorded prediction of that model for the same source record (matched on
``source_topic/partition/offset`` and the event id, which each prediction carries: offsets alone are
ambiguous once a topic had two incarnations, datastore.epochs): score, probabilities and label, and
the sha256 of the float32 model input (``input_hash``).

The verdict is about the predictions compared, and only those: ``ok`` when at least one was compared, none
differs, and all were made by this artifact (sha256). Events without a recorded prediction (``unrecorded``)
and recorded predictions whose input is not in the version (``orphaned``) are counted apart and do not fail
it: with recorded predictions taken from the whole archive, the orphans' other artifacts once failed a replay
that printed "0 of 10500 predictions differ".

* ``tolerance=0`` (default) means bit for bit: the float64 bit patterns must be equal. onnxruntime is
  deterministic for a given graph, input and *intra-op thread count* (tree sums are reordered across
  threads); the worker scores with one thread, and so does ``OnnxScorer`` by default, which replay uses.
* ``tolerance>0`` accepts ``|replayed - recorded| <= tolerance`` for score and probabilities (for models
  whose runtime is not bit-reproducible, e.g. a River learner restored from a snapshot).

Recorded predictions come from the version itself when it holds prediction segments, otherwise from every
sealed prediction segment of the archive (a version of input topics only).

>>> import tempfile
>>> from pathlib import Path
>>> from models.train_demo import train_demo_model
>>> root = Path(tempfile.mkdtemp())
>>> _ = train_demo_model(root / "demo-risk" / "1", n=2000)
>>> s = Settings(model_dir=root / "demo-risk" / "1", state_dir=root / "state")
>>> resolve_model_dir(s, "demo-risk@1") == root / "demo-risk" / "1"
True
>>> resolve_model_dir(s, "models:/demo-risk/1") == root / "demo-risk" / "1"
True
>>> resolve_model_dir(s, "demo-risk")
Traceback (most recent call last):
...
FileNotFoundError: model demo-risk: aliases need a model registry (none at ...); name a version or a model directory
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datastore.catalog import list_manifests
from datastore.dataset import DatasetVersion, merged_rows, version_rows
from datastore.records import row_event_ids
from datastore.storage import Storage
from models.card import CARD_FILENAME
from models.onnx_scorer import OnnxScorer
from schemas.codecs import InvalidEvent
from schemas.model_refs import parse_model_ref
from schemas.records import FeatureEvent
from schemas.validation import FeatureValidator, input_hash
from streams.settings import Settings

Position = tuple[str, int, int]
Source = tuple[str, int, int, str]  # source position and event id: what a prediction names of its input


def resolve_model_dir(settings: Settings, ref: str) -> Path:
    """The directory of model ``NAME@VERSION`` (or ``ref`` itself when it is a model directory).

    The model registry (models/registry.py) is asked first when its directory has a log; otherwise
    models live at ``<model root>/<name>/<version>``, the model root being two levels above ``model_dir``
    (``artifacts/models`` by default).
    """
    path = Path(ref)
    if (path / CARD_FILENAME).is_file():
        return path
    try:
        parsed = parse_model_ref(ref)  # NAME@VERSION, models:/NAME/VERSION, models:/NAME@ALIAS
    except ValueError as exc:
        raise ValueError(f"{exc} (or a model directory)") from None
    name, version = parsed.name, parsed.target
    registered = _from_registry(settings, name, version)
    if registered is not None:
        return registered
    if parsed.alias is not None or not parsed.pinned:  # an alias or a champion means something only in a registry
        raise FileNotFoundError(f"model {ref}: aliases need a model registry (none at "
                                f"{settings.state_dir / 'registry'}); name a version or a model directory")
    candidate = settings.model_dir.parent.parent / name / version
    if not (candidate / CARD_FILENAME).is_file():
        raise FileNotFoundError(f"model {ref}: no {CARD_FILENAME} in {candidate} (and not in a model registry)")
    return candidate


def _from_registry(settings: Settings, name: str, version: str) -> Path | None:
    try:
        from models.registry import LOG_FILENAME, ModelRegistry, RegistryError  # heavy: river + pandas, ~0.7 s
    except ImportError:  # the registry is optional
        return None
    root = Path(getattr(settings, "registry_dir", None) or settings.state_dir / "registry")
    if not (root / LOG_FILENAME).is_file():
        return None
    registry = ModelRegistry(root, features=[], key=settings.signing_key_bytes())
    try:
        return registry.artifact_dir(registry.state.model(name).resolve(version))
    except RegistryError:
        return None


@dataclass(frozen=True)
class Mismatch:
    event_id: str
    position: Position
    fields: tuple[str, ...]
    recorded_score: float | None
    replayed_score: float | None


@dataclass
class ReplayReport:
    data_version: str
    model: str
    model_sha256: str
    tolerance: float
    recorded_source: str = "version"
    events: int = 0
    unscorable: int = 0
    scored: int = 0
    compared: int = 0
    matched: int = 0
    mismatched: int = 0
    unrecorded: int = 0  # scored by replay, no recorded prediction of this model
    orphaned: int = 0  # recorded predictions whose input is not in the version
    recorded_sha256: set[str] = field(default_factory=set)  # of the predictions compared
    max_abs_diff: float = 0.0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def same_artifact(self) -> bool:
        return self.recorded_sha256 <= {self.model_sha256}

    @property
    def ok(self) -> bool:
        return self.compared > 0 and self.mismatched == 0 and self.same_artifact


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def recorded_predictions(storage: Storage, version: DatasetVersion, name: str, model_version: str,
                         ) -> tuple[dict[Source, list[dict[str, Any]]], str]:
    """Recorded predictions of ``name@model_version`` by source record and event id; and where they came from."""
    segments: list[Any] = [s for s in version.segments if s.kind == "prediction"]
    source = "version"
    if not segments:
        segments = [m for m in list_manifests(storage) if m.kind == "prediction"]
        source = "archive"
    found: dict[Source, list[dict[str, Any]]] = {}
    rows = merged_rows(storage, segments, version.selection if source == "version" else None)
    for _seg, row in rows:
        p = row["prediction"]
        if p is not None and p["model_name"] == name and p["model_version"] == model_version:
            found.setdefault((p["source_topic"], p["source_partition"], p["source_offset"], p["event_id"]), []
                             ).append(p)
    return found, source


def replay(storage: Storage, version: DatasetVersion, scorer: OnnxScorer, tolerance: float = 0.0,
           batch_size: int = 2048, on_progress: Callable[[int], None] | None = None,
           keep_mismatches: int = 20) -> ReplayReport:
    """Re-score the version's input events with ``scorer`` and compare (see the module docstring)."""
    recorded, source = recorded_predictions(storage, version, scorer.name, scorer.version)
    report = ReplayReport(version.id, f"{scorer.name}@{scorer.version}", scorer.sha256, tolerance,
                          recorded_source=source)
    validator = FeatureValidator(scorer.feature_names)
    seen: set[Source] = set()
    batch: list[tuple[Position, str]] = []
    rows: list[list[float]] = []

    def flush() -> None:
        if not rows:
            return
        X = np.asarray(rows, dtype=np.float32)
        out = scorer.predict_many(X)
        for i, (pos, event_id) in enumerate(batch):
            _compare(report, pos, event_id, recorded.get((*pos, event_id), []), float(out.scores[i]),
                     str(out.labels[i]),
                     dict(zip(scorer.classes, out.probabilities[i].tolist(), strict=True)),
                     input_hash(X[i].tobytes()), keep_mismatches)
        if on_progress is not None:
            on_progress(len(rows))
        batch.clear()
        rows.clear()

    for _seg, row in version_rows(storage, version):
        if "event" not in row:  # a prediction row
            continue
        report.events += 1
        pos = (row["topic"], row["partition"], row["offset"])
        ids = row_event_ids(row)  # the decoded event id, else the record key (what the worker's dead letter names)
        for event_id in ids:
            seen.add((*pos, event_id))
        try:
            if row["event"] is None:
                raise InvalidEvent("schema_violation", row["invalid_reason"] or "does not decode")
            event = FeatureEvent.model_construct(**row["event"])
            rows.append(validator.row(event))
        except InvalidEvent:
            report.unscorable += 1
            for p in (p for event_id in ids for p in recorded.get((*pos, event_id), [])):
                # the worker scored what replay cannot: a mismatch by definition
                report.compared += 1
                report.mismatched += 1
                report.recorded_sha256.add(p["model_sha256"])
                _keep(report, Mismatch(p["event_id"], pos, ("unscorable",), p["score"], None), keep_mismatches)
            if on_progress is not None:
                on_progress(1)
            continue
        batch.append((pos, event.event_id))
        if len(rows) >= batch_size:
            flush()
    flush()
    report.orphaned = sum(len(v) for k, v in recorded.items() if k not in seen)
    return report


def _keep(report: ReplayReport, mismatch: Mismatch, limit: int) -> None:
    if len(report.mismatches) < limit:
        report.mismatches.append(mismatch)


def _compare(report: ReplayReport, pos: Position, event_id: str, recorded: list[dict[str, Any]], score: float,
             label: str, probabilities: dict[str, float], hashed: str, limit: int) -> None:
    report.scored += 1
    if not recorded:
        report.unrecorded += 1
        return
    tol = report.tolerance
    for p in recorded:  # duplicates (at-least-once) must each match
        report.compared += 1
        report.recorded_sha256.add(p["model_sha256"])
        bad = []
        diffs = [abs(score - p["score"])] + [abs(probabilities[c] - p["probabilities"].get(c, np.nan))
                                              for c in probabilities]
        report.max_abs_diff = max(report.max_abs_diff, *diffs)
        if tol == 0:
            if _bits(score) != _bits(p["score"]):
                bad.append("score")
            if any(_bits(v) != _bits(p["probabilities"].get(c, np.nan)) for c, v in probabilities.items()):
                bad.append("probabilities")
        else:
            if not diffs[0] <= tol:
                bad.append("score")
            if not all(d <= tol for d in diffs[1:]):
                bad.append("probabilities")
        if label != p["label"]:
            bad.append("label")
        if hashed != p["input_hash"]:
            bad.append("input_hash")
        if bad:
            report.mismatched += 1
            _keep(report, Mismatch(event_id, pos, tuple(bad), p["score"], score), limit)
        else:
            report.matched += 1
