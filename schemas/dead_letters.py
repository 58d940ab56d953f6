"""Dead letters that always fit the broker: a bounded prefix of the original plus its size and sha256.

A letter used to embed the whole original value (base64, +33 %), so an 800 KB input produced a letter over
the broker's ``message.max.bytes`` and the produce failed with MSG_SIZE_TOO_LARGE. Now the letter keeps at
most ``max_original_bytes`` of the value (and of the key), with the full length and sha256 so the original
can be found in the archive, which keeps it whole. Every lane builds its letters with ``dead_letter_bytes``.

>>> from schemas.codecs import InvalidEvent, decode_dead_letter
>>> err = InvalidEvent("oversized", "payload is 800000 bytes, limit is 65536")
>>> letter, raw = dead_letter_bytes(err, topic="features", partition=0, offset=7, key=b"k", value=b"x" * 800_000,
...                                 worker="w1", failed_at=0)
>>> letter.original_size, letter.original_truncated, len(letter.original_value), len(raw) < 32_768
(800000, True, 16384, True)
>>> decode_dead_letter(raw) == letter
True
"""

from __future__ import annotations

import hashlib

from .codecs import InvalidEvent, encode_dead_letter
from .records import DeadLetter

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MAX_ORIGINAL_BYTES", "build_dead_letter", "dead_letter_bytes"]

# 16 KiB of the original is plenty to see what went wrong; the archive has the rest.
DEFAULT_MAX_ORIGINAL_BYTES = 16 * 1024
# Kafka's default message.max.bytes (1 MB); pass the cluster's own limit minus key and headers when known.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
# Payload-derived strings are clipped too: an event_id may be as long as the payload itself.
_MAX_ID_CHARS = 512
_MAX_REASON_CHARS = 2000


def _clip(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "..."


def build_dead_letter(error: InvalidEvent, *, topic: str, partition: int, offset: int, key: bytes | None,
                      value: bytes | None, worker: str, failed_at: int,
                      max_original_bytes: int = DEFAULT_MAX_ORIGINAL_BYTES) -> DeadLetter:
    """The DeadLetter for ``value`` (from ``topic``/``partition``/``offset``) that failed with ``error``.

    ``original_value`` and ``original_key`` keep at most ``max_original_bytes`` each (``original_truncated``
    says whether either was cut); ``original_size``/``original_sha256`` are those of the whole value.

    >>> dl = build_dead_letter(InvalidEvent("empty", "message value is null (tombstone)"), topic="t",
    ...                        partition=1, offset=2, key=None, value=None, worker="w", failed_at=5)
    >>> dl.original_value, dl.original_size, dl.original_truncated, dl.original_sha256[:12]
    (b'', 0, False, 'e3b0c44298fc')
    """
    if max_original_bytes < 0:
        raise ValueError(f"max_original_bytes must be >= 0, got {max_original_bytes}")
    original = value or b""
    truncated = len(original) > max_original_bytes or (key is not None and len(key) > max_original_bytes)
    return DeadLetter(
        event_id=_clip(error.event_id, _MAX_ID_CHARS),
        reason_code=error.code,
        reason=_clip(error.reason, _MAX_REASON_CHARS) or "",
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_key=None if key is None else bytes(key[:max_original_bytes]),
        original_value=bytes(original[:max_original_bytes]),
        original_size=len(original),
        original_sha256=hashlib.sha256(original).hexdigest(),
        original_truncated=truncated,
        failed_at=failed_at,
        worker=worker,
    )


def dead_letter_bytes(error: InvalidEvent, *, topic: str, partition: int, offset: int, key: bytes | None,
                      value: bytes | None, worker: str, failed_at: int,
                      max_original_bytes: int = DEFAULT_MAX_ORIGINAL_BYTES,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[DeadLetter, bytes]:
    """``build_dead_letter`` plus its JSON encoding, guaranteed to be at most ``max_message_bytes`` long.

    With the defaults a letter is at most ~60 KB; if ``max_message_bytes`` is smaller than that, the kept
    prefix shrinks until it fits. ValueError if even a letter without any original bytes does not fit.
    """
    keep = max_original_bytes
    while True:
        letter = build_dead_letter(error, topic=topic, partition=partition, offset=offset, key=key, value=value,
                                   worker=worker, failed_at=failed_at, max_original_bytes=keep)
        raw = encode_dead_letter(letter)
        if len(raw) <= max_message_bytes:
            return letter, raw
        if keep == 0:
            raise ValueError(f"a dead letter without original bytes is {len(raw)} bytes, over the "
                             f"max_message_bytes of {max_message_bytes}")
        # base64 makes each kept byte 4/3 of a byte: cutting 3/4 of the excess (and a little) from the
        # value's prefix is enough, one more round at most when the key was cut too.
        keep = max(0, keep - ((len(raw) - max_message_bytes) * 3 // 4 + 64))
