"""Where sealed segments, manifests and dataset versions live: a small storage interface and its local backend.

Everything above this module speaks in *keys* ("segments/features/0/…avro", "versions/<id>.json") and
needs only: publish a finished file atomically, put small bytes atomically, read, list, delete. That is
what an object store offers too (a PUT makes the whole object visible at once; there is no rename), so
an S3-compatible backend fits behind the same ``Storage`` protocol. It is **not implemented** here: no S3
endpoint or emulator is available to test it honestly (see docs/data_versioning.md); asking for one
raises ``StorageNotAvailable`` instead of silently writing somewhere else.

``LocalStorage`` gives the durability the archiver's at-least-once contract relies on: a published file
was fsynced before its atomic ``os.replace`` and the directory entry is fsynced after it, so after a
crash a key either holds its complete bytes or does not exist.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     store = LocalStorage(d)
...     store.put_bytes("versions/a.json", b"{}")
...     store.list("versions/"), store.get_bytes("versions/a.json"), store.exists("versions/b.json")
(['versions/a.json'], b'{}', False)
>>> open_storage(Path("/tmp/x"), "s3://bucket/prefix")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
datastore.storage.StorageNotAvailable: s3://bucket/prefix: the S3-compatible backend is not implemented ...
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol


class StorageNotAvailable(RuntimeError):
    """The configured storage backend cannot be used by this build."""


class Storage(Protocol):
    """What the datastore needs from a backend. Keys are '/'-separated relative paths."""

    def spool_dir(self) -> Path:
        """A local directory for files being written; ``publish`` must be able to move files out of it."""

    def publish(self, local_path: Path, key: str) -> None:
        """Make a complete, fsynced local file visible under ``key`` in one atomic step (moves the file)."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write small bytes under ``key`` atomically (readers see the old object, or all of the new one)."""

    def get_bytes(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursively), sorted."""

    def delete(self, key: str) -> None: ...

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock for read-modify-write of the whole store (snapshot versus retention)."""


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory holding the new entry is flushed.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """A directory on a POSIX filesystem (local disk, or a shared volume mounted by every worker)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def spool_dir(self) -> Path:
        spool = self.root / "tmp"  # same filesystem as the keys, so publish is a rename
        spool.mkdir(parents=True, exist_ok=True)
        return spool

    def publish(self, local_path: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local_path, target)
        _fsync_dir(target.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")  # noqa: SIM115 - the caller owns the handle

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            keys.extend(f"{rel}/{name}" if rel != "." else name for name in files
                        if not (name.startswith(".") and name.endswith(".tmp")))  # put_bytes in progress
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # blocks: snapshots and retention runs are short and rare
            yield


def open_storage(data_dir: Path, url: str | None = None) -> LocalStorage:
    """The backend for ``Settings.data_path`` / ``Settings.data_store_url`` (see Settings)."""
    if url is None or url.startswith("file://"):
        return LocalStorage(Path(url.removeprefix("file://")) if url else data_dir)
    if url.startswith("s3://"):
        raise StorageNotAvailable(
            f"{url}: the S3-compatible backend is not implemented in this build; see docs/data_versioning.md "
            "(unset STREAMSCORE_DATA_STORE_URL to use the local data_dir)")
    raise StorageNotAvailable(f"{url}: unsupported data store URL (expected file://PATH or s3://BUCKET/PREFIX)")
