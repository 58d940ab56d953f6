"""Model folders: guarded, atomic writes of model.onnx + reference_profile.json + model_card.json.

A trainer must never destroy a model it did not make, nor swap one under a running worker:

* a folder holding a ``model.onnx`` without a ``model_card.json`` belongs to someone else and is
  never touched, not even with ``force`` (``ModelDirError``);
* re-writing the same bytes is a no-op success (an identical re-train changes nothing, not even mtimes);
* different artifacts replace existing ones only with ``force=True``, and never while a worker holds
  a serving lease on the folder (models.serving);
* every file goes to a temporary name, is fsynced and renamed into place, the card last, so a crash
  never leaves a half-written file and a folder with a card always has the model it pins. While the
  files are being renamed, ``.writing`` lists their sha256s, so a model.onnx left by a crash between
  renames is recognised as ours, not mistaken for a foreign model.

``models.train_demo.ensure_demo_model`` is the worker's start-up policy: serve the folder it was given, train the demo
only into the demo's own default folder, and answer anything else with a one-line ``ModelDirError``.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     files = {"model.onnx": b"onnx", "model_card.json": b"{}"}
...     write_artifacts(d, files), write_artifacts(d, files)
...     try:
...         write_artifacts(d, {"model.onnx": b"other", "model_card.json": b"{}"})
...     except ModelDirError as exc:
...         print(str(exc).split(";")[0].endswith("already holds different model.onnx"))
(True, False)
True
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from models.card import CARD_FILENAME, ModelCard
from models.onnx_scorer import MODEL_FILENAME
from models.serving import live_leases

WRITING_MARKER = ".writing"
DEFAULT_SETTING = "STREAMSCORE_MODEL_DIR"


class ModelDirError(RuntimeError):
    """A model folder cannot be used or written as asked; ``str()`` is one line for the user."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise trainers writing the same folder (flock on the directory itself: no lock file to leave)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _our_interrupted_write(directory: Path) -> bool:
    """True if model.onnx was left by a crash of our own write (its sha256 is in the marker)."""
    try:
        marker = json.loads((directory / WRITING_MARKER).read_text())
        return _sha256((directory / MODEL_FILENAME).read_bytes()) == marker.get(MODEL_FILENAME)
    except (OSError, ValueError, AttributeError):
        return False


def foreign_model_error(directory: str | Path) -> ModelDirError | None:
    """The error for a folder holding someone else's model.onnx (no card), else None."""
    directory = Path(directory)
    if (directory / MODEL_FILENAME).exists() and not (directory / CARD_FILENAME).exists() \
            and not _our_interrupted_write(directory):
        return ModelDirError(
            f"{directory} holds a model.onnx without a model_card.json, i.e. not a model written here; "
            "refusing to touch it (even with --force): move it away or write into another folder"
        )
    return None


def served_model_dir(model_dir: str | Path, default_dir: str | Path, *, setting: str = DEFAULT_SETTING
                     ) -> Path | None:
    """``model_dir`` if it holds model.onnx and a valid model card; None if it is ``default_dir`` without a card
    (the demo model is to be trained there: ``models.train_demo.ensure_demo_model``). Any other folder without a
    usable model raises ``ModelDirError`` with a one-line message naming ``setting``.

    Here rather than in models.train_demo, so that a worker serving a model it already has does not import
    scikit-learn, skl2onnx and onnx (~200 MB of RSS) only to check its folder.
    """
    model_dir = Path(model_dir)
    has_model, has_card = (model_dir / MODEL_FILENAME).is_file(), (model_dir / CARD_FILENAME).is_file()
    where = f"{setting}={model_dir}"
    fix = "point it at a model folder (model.onnx + model_card.json), or unset it to use the demo model"
    if has_model and has_card:
        try:
            ModelCard.load(model_dir)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "card"
            raise ModelDirError(f"{where}: model_card.json is not a valid model card ({field}: {first['msg']}); "
                                f"{fix}") from None
        return model_dir
    if has_model and not has_card and foreign_model_error(model_dir) is not None:
        raise ModelDirError(f"{where} has a model.onnx but no model_card.json (the worker verifies the model "
                            f"against its card); {fix}")
    if model_dir.resolve() == Path(default_dir).resolve() and not has_card:
        return None
    if not model_dir.exists():
        raise ModelDirError(f"{where} does not exist; {fix}")
    if not model_dir.is_dir():
        raise ModelDirError(f"{where} is not a folder; {fix}")
    raise ModelDirError(f"{where} has no model.onnx + model_card.json; {fix}")


def _describe_existing(directory: Path) -> str:
    try:
        card = ModelCard.load(directory)
        return f" ({card.name}@{card.version}, onnx sha256 {card.onnx_sha256[:12]}…)"
    except (OSError, ValueError):
        return ""


def write_artifacts(directory: str | Path, files: Mapping[str, bytes], *, force: bool = False) -> bool:
    """Write ``files`` (name -> bytes, in order; put the card last) into ``directory``.

    Returns False when the folder already holds exactly these bytes (nothing written), True when
    written. Raises ``ModelDirError`` for a foreign model.onnx, a served folder, or different
    existing artifacts without ``force``.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission: the user's mistake, one line
        raise ModelDirError(f"cannot use {directory} as a model folder: {exc.strerror or exc}") from None
    with _locked(directory):
        if (error := foreign_model_error(directory)) is not None:
            raise error
        present = {name: (directory / name).read_bytes() for name in files if (directory / name).exists()}
        if present == dict(files):
            return False
        if leases := live_leases(directory):
            pids = ", ".join(str(lease.pid) for lease in leases)
            raise ModelDirError(
                f"{directory} is being served by pid {pids}; stop that worker or write into another folder "
                f"(a lease left by a worker on another host can be removed: {leases[0].path})"
            )
        different = [name for name, data in present.items() if data != files[name]]
        if different and not force:
            raise ModelDirError(
                f"{directory} already holds different {', '.join(different)}{_describe_existing(directory)}; "
                "pass --force (force=True) to replace it, or write into another folder"
            )
        marker = directory / WRITING_MARKER
        _write_durable(marker, json.dumps({name: _sha256(data) for name, data in files.items()}).encode())
        for name, data in files.items():
            _write_durable(directory / name, data)
        _fsync_dir(directory)
        marker.unlink()
        _fsync_dir(directory)
    return True
