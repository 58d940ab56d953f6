"""Names (learners, models, versions) turned into paths that cannot leave their store.

Every name that reaches a path comes from a command line or a control record, so it is treated as
hostile: ``confined(root, *parts)`` accepts each part only as ONE plain path component (no ``/``,
no ``..``, not absolute, not empty, not hidden: the store keeps its own files, e.g. the signing key,
under dot names) and refuses a result that a symlink leads out of ``root``. The returned path is
``root / parts`` as given (not resolved), so messages show the paths people configured.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> confined(root, "logreg", "v000001") == root / "logreg" / "v000001"
True
>>> confined(root, "../..", what="learner")
Traceback (most recent call last):
...
models.store_paths.UnsafePath: learner '../..' is not allowed: '/' is not allowed in a name; ...
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

ACCEPTED = "use a plain name: letters, digits, '.', '_', '-', not starting with '.'"


class UnsafePath(ValueError):
    """A name would leave its store (or is no name at all); the message says what was wrong and what is accepted."""


def _problem(part: object) -> str | None:
    if not isinstance(part, str) or not part.strip():
        return "the name is empty"
    if PurePosixPath(part).is_absolute() or PureWindowsPath(part).is_absolute():
        return "an absolute path is not a name"
    if "/" in part or "\\" in part:
        return "'/' is not allowed in a name"
    if "\0" in part:
        return "NUL is not allowed in a name"
    if part in (".", ".."):
        return f"{part!r} leaves the store"
    if part.startswith("."):
        return "hidden names are reserved for the store's own files"
    return None


def confined(root: str | Path, *parts: str, what: str = "name") -> Path:
    """``root / parts``, or ``UnsafePath`` when a part is not one plain component or a symlink leads out of root."""
    root = Path(root)
    if not parts:
        raise UnsafePath(f"no {what} given; {ACCEPTED}")
    for part in parts:
        problem = _problem(part)
        if problem is not None:
            raise UnsafePath(f"{what} {part!r} is not allowed: {problem}; {ACCEPTED}")
    path = root.joinpath(*parts)
    real_root, real = root.resolve(), path.resolve()
    if not real.is_relative_to(real_root):
        shown = "/".join(parts)
        raise UnsafePath(f"{what} {shown!r} is not allowed: a symlink leads it to {real}, outside {real_root}; "
                         "store entries must stay inside the store")
    return path
