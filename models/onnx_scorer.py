"""Score feature vectors with a verified ONNX classifier: the hot path of the worker.

``OnnxScorer`` follows the River-style uniform interface: ``predict_one`` for a single event (a
dict of features) and ``predict_many`` for a float32 micro-batch. It only ever runs the exact
bytes whose sha256 the model card pins.

>>> import tempfile
>>> from models.demo import make_dataset
>>> from models.train_demo import train_demo_model
>>> with tempfile.TemporaryDirectory() as d:
...     _ = train_demo_model(d, seed=1, n=2000)
...     scorer = OnnxScorer.from_dir(d)
>>> X, _ = make_dataset(seed=2, n=1)
>>> out = scorer.predict_one(dict(zip(scorer.feature_names, X[0])))
>>> sorted(out), out["label"] in scorer.classes, 0.0 <= out["score"] <= 1.0
(['label', 'probabilities', 'score'], True, True)
>>> scorer.predict_many(X.astype("float32")).scores.shape
(1,)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.card import ModelCard, sha256_bytes
from models.scorer import ScoreBatch

MODEL_FILENAME = "model.onnx"
PROBABILITIES_OUTPUT = "probabilities"  # skl2onnx's name with zipmap=False


class ModelIntegrityError(RuntimeError):
    """model.onnx is not the artifact its model card describes (sha256 or signature mismatch)."""


class OnnxScorer:
    """A classifier loaded from ``model.onnx`` + ``model_card.json``; thread-safe for scoring."""

    def __init__(self, card: ModelCard, model_bytes: bytes, *, intra_op_num_threads: int = 1) -> None:
        digest = sha256_bytes(model_bytes)
        if digest != card.onnx_sha256:
            raise ModelIntegrityError(
                f"model {card.name}/{card.version}: sha256 of the ONNX bytes is {digest}, "
                f"but the model card pins {card.onnx_sha256}; refusing to load"
            )
        if intra_op_num_threads < 1:
            raise ValueError(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}")

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The worker and the broker share 2 cores: one thread per session by default, no
        # inter-op parallelism, and no busy-waiting workers burning the broker's CPU.
        # Tree sums are reordered across threads, so scores from sessions with different thread
        # counts can differ by ~5e-7 (float32); compare against a session with the same count.
        opts.intra_op_num_threads = intra_op_num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only; warnings are noise in a worker's log
        # Loading from the bytes we hashed (not the path) closes the check-then-load race.
        self._session = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])

        self.card = card
        self.source_dir: Path | None = None  # set by from_dir
        self.name = card.name
        self.version = card.version
        self.sha256 = digest
        self.feature_names: tuple[str, ...] = tuple(card.features)
        self.classes: tuple[str, ...] = tuple(card.classes)
        self.n_features = len(self.feature_names)
        self._classes_arr = np.asarray(self.classes)
        self._get_row = itemgetter(*self.feature_names)
        self._input_name, self._output_names = self._check_signature()

    @classmethod
    def from_dir(cls, path: str | Path, *, intra_op_num_threads: int = 1) -> OnnxScorer:
        """Load ``<path>/model_card.json`` and ``<path>/model.onnx``, verifying the sha256."""
        path = Path(path)
        card = ModelCard.load(path)
        scorer = cls(card, (path / MODEL_FILENAME).read_bytes(), intra_op_num_threads=intra_op_num_threads)
        scorer.source_dir = path  # where its reference profile and other artifacts live
        return scorer

    def _check_signature(self) -> tuple[str, list[str]]:
        """Fail at load time, not on the first event, if the graph does not match the card."""
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            found = [(i.name, i.type) for i in inputs]
            raise ModelIntegrityError(f"expected one float tensor input, got {found}")
        width = inputs[0].shape[-1] if len(inputs[0].shape) == 2 else None
        if isinstance(width, int) and width != self.n_features:
            raise ModelIntegrityError(f"model takes {width} features, card lists {self.n_features}")
        names = [o.name for o in self._session.get_outputs()]
        if PROBABILITIES_OUTPUT in names:
            output = PROBABILITIES_OUTPUT
        else:
            candidates = [o.name for o in self._session.get_outputs() if o.type == "tensor(float)"]
            if len(candidates) != 1:
                raise ModelIntegrityError(f"cannot tell which output holds probabilities: {names}")
            output = candidates[0]
        # Probing with one row also warms up the session (first run allocates).
        probe = self._session.run([output], {inputs[0].name: np.zeros((1, self.n_features), np.float32)})[0]
        if probe.shape != (1, len(self.classes)):
            raise ModelIntegrityError(
                f"output {output!r} has shape {probe.shape} for one row; card lists classes {self.classes}"
            )
        return inputs[0].name, [output]

    def predict_many(self, X: np.ndarray) -> ScoreBatch:
        """Score a float32 (n, n_features) batch, columns in ``feature_names`` order.

        No implicit dtype conversion: a silent float64->float32 copy per batch would hide a cost
        on the hot path, so build batches as float32 (see ``to_matrix``).
        """
        if not isinstance(X, np.ndarray) or X.dtype != np.float32:
            got = X.dtype if isinstance(X, np.ndarray) else type(X).__name__
            raise ValueError(f"predict_many expects a float32 numpy array, got {got}")
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"predict_many expects shape (n, {self.n_features}), got {X.shape}")
        if X.shape[0] == 0:
            empty = np.empty((0, len(self.classes)), np.float64)
            return ScoreBatch(np.empty(0, np.float64), self._classes_arr[:0], empty)
        proba = self._session.run(self._output_names, {self._input_name: X})[0].astype(np.float64)
        return ScoreBatch(
            scores=proba[:, -1].copy(),  # contiguous, independent of the probabilities array
            labels=self._classes_arr[proba.argmax(axis=1)],
            probabilities=proba,
        )

    def to_matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Stack feature dicts into the float32 batch ``predict_many`` expects (see ``features_matrix``)."""
        return features_matrix(rows, self.feature_names, self._get_row)

    def predict_one(self, features: Mapping[str, float]) -> dict[str, Any]:
        """Score one event's features: ``{"score": p_positive, "label": cls, "probabilities": {cls: p}}``."""
        batch = self.predict_many(self.to_matrix([features]))
        proba = batch.probabilities[0].tolist()
        return {
            "score": float(batch.scores[0]),
            "label": str(batch.labels[0]),
            "probabilities": dict(zip(self.classes, proba, strict=True)),
        }

    def __repr__(self) -> str:
        return f"OnnxScorer(name={self.name!r}, version={self.version!r}, sha256={self.sha256[:12]}...)"


def features_matrix(
    rows: Sequence[Mapping[str, float]],
    feature_names: Sequence[str],
    getter: Callable[[Mapping[str, float]], Any] | None = None,
) -> np.ndarray:
    """Stack feature dicts into a float32 (n, k) array in ``feature_names`` order; extra keys are ignored.

    >>> features_matrix([{"b": 2.0, "a": 1.0, "x": 9.0}], ["a", "b"])
    array([[1., 2.]], dtype=float32)
    """
    k = len(feature_names)
    get = getter or itemgetter(*feature_names)
    try:
        # itemgetter does the per-row lookups in C; the list of tuples converts in one numpy call.
        values = [get(r) for r in rows]
    except KeyError as exc:
        raise ValueError(f"feature {exc.args[0]!r} is missing; the model needs {list(feature_names)}") from None
    if k == 1:  # itemgetter with a single key returns a scalar, not a tuple
        values = [(v,) for v in values]
    return np.array(values, dtype=np.float32).reshape(len(values), k)
