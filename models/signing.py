"""The deployment signing key and HMAC-SHA256 signatures of artifacts and registry records.

One key signs everything a worker will load from a shared directory or a topic: learner snapshots
(``online_learning.snapshots``) and registry records (``models.registry``), whose sha256 pins the
registry artifacts. Without the key, whoever can write there can make a worker run their bytes;
a sha256 stored beside an artifact is as writable as the artifact.

Where the key comes from (``resolve_key``): an explicit value (``STREAMSCORE_SIGNING_KEY``), else a
key file (``STREAMSCORE_SIGNING_KEY_FILE``, or the store's default path). The file is generated on
first use only when ``create`` is true, i.e. on the embedded single-host set-up; a real deployment
must provide the key, and a store without one refuses to write or load.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     key = load_or_create_key(Path(d) / "key", create=True)
...     same = load_or_create_key(Path(d) / "key", create=False)
...     mode = oct((Path(d) / "key").stat().st_mode & 0o777)
>>> key == same, len(key), mode
(True, 64, '0o600')
>>> signature = sign(key, b"artifact")
>>> verify(key, b"artifact", signature), verify(key, b"artifact!", signature), verify(key, b"artifact", None)
(True, False, False)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

KEY_BYTES = 32  # random bytes of a generated key, stored as 64 hex characters
MIN_KEY_CHARS = 16  # shorter keys are refused: they are guessable offline from any signed artifact


class SigningKeyError(ValueError):
    """No usable signing key: the message says where one was looked for and how to provide it."""


def _checked(text: bytes, source: str) -> bytes:
    key = text.strip()
    if len(key) < MIN_KEY_CHARS:
        raise SigningKeyError(f"signing key from {source} is {len(key)} characters; at least {MIN_KEY_CHARS} are "
                              f"required (generate one with: python -c 'import secrets; print(secrets.token_hex(32))')")
    return key


def load_or_create_key(path: Path, create: bool) -> bytes:
    """The key stored in ``path``; generated there (mode 0600) when missing and ``create``, else ``SigningKeyError``.

    Concurrent first uses agree on one key: the new key is written to a temporary file and linked into
    place, which fails when another process got there first (then its key is read).
    """
    path = Path(path)
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        if not create:
            raise SigningKeyError(f"no signing key: {path} does not exist. Set STREAMSCORE_SIGNING_KEY or "
                                  "STREAMSCORE_SIGNING_KEY_FILE (generated automatically only on the embedded "
                                  "broker)") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask
            fh.write(secrets.token_hex(KEY_BYTES).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    info = path.stat()  # follows symlinks: mounted secrets are often symlinks to a read-only file
    if not stat.S_ISREG(info.st_mode):
        raise SigningKeyError(f"signing key file {path} is not a regular file")
    if info.st_mode & 0o022:
        raise SigningKeyError(f"signing key file {path} is writable by group or others (mode "
                              f"{oct(info.st_mode & 0o777)}); anyone who can replace it can sign. chmod 600 it")
    return _checked(path.read_bytes(), str(path))


def resolve_key(value: str | bytes | None = None, file: Path | None = None, *, default_file: Path,
                create: bool) -> bytes:
    """The key from ``value`` if given, else from ``file`` (which must exist), else ``default_file`` (maybe created)."""
    if value:
        return _checked(value.encode() if isinstance(value, str) else value, "the configured signing key")
    if file is not None:
        return load_or_create_key(Path(file), create=False)
    return load_or_create_key(Path(default_file), create=create)


def sign(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of ``data`` under ``key``, hex."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def verify(key: bytes, data: bytes, signature: str | None) -> bool:
    """True when ``signature`` is ``sign(key, data)`` (constant-time); False for a missing or malformed one."""
    if not isinstance(signature, str) or not signature.isascii():  # compare_digest refuses non-ASCII str
        return False
    return hmac.compare_digest(sign(key, data), signature)
