"""The canonical bytes of an archived Kafka record, and the content hash built from them.

A dataset version id must depend on the data only - not on how the archiver happened to cut segments,
which codec compressed them, or which decoder version filled the decoded fields. So the id is defined
over the *Kafka records themselves*, each encoded canonically, in (topic, partition, epoch, offset) order:

    record   = topic, partition, offset, timestamp_ms, key, value, headers   (what Kafka stored)
    encoding = u32 len + utf-8 topic | i32 partition | i64 offset | u8 has_ts [i64 ts]
               | i32 len or -1 + key | i32 len or -1 + value | u32 n_headers, each: u32 len + utf-8 name,
                 i32 len or -1 + value                                          (all little-endian)
    id       = sha256( b"streamscore.dataset/1\\n" + encoding(r1) + encoding(r2) + ... )

The *epoch* is the incarnation of the topic partition the record was consumed from (datastore.epochs):
a broker that lost its log, or a topic deleted and re-created, reuses offsets for other records. Two
incarnations holding the same offsets are different data, so the epoch is part of a record's identity:
a record of epoch e > 0 is encoded as ``u32 0xFFFFFFFF | u32 e | encoding`` (no topic name is 2**32-1
bytes long, so this cannot be read as an epoch-0 record). Epoch 0 keeps the plain encoding, so every id
computed before epochs existed is unchanged.

Every field is length-prefixed, so the concatenation is unambiguous. Decoded fields are excluded on
purpose: they are a function of ``value`` (and of the decoder's version), and the segment's file sha256
already pins them byte for byte.

>>> rec = SourceRecord("features", 0, 41, 1_700_000_000_000, b"e1", b'{"a":1}', [("traceparent", b"00-ab")])
>>> len(encode(rec))
78
>>> h = ContentHasher(); _ = h.add(rec); a = h.hexdigest()
>>> h2 = ContentHasher(); _ = h2.add(rec._replace(value=b'{"a":2}')); a == h2.hexdigest()
False
>>> h3 = ContentHasher(); _ = h3.add(rec, epoch=1); a == h3.hexdigest(), len(encode(rec, epoch=1))
(False, 86)
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

DOMAIN = b"streamscore.dataset/1\n"

Header = tuple[str, bytes | None]


class SourceRecord(NamedTuple):
    """A Kafka record as consumed: the unit that is archived, identified by (topic, partition, offset)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: list[Header]

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_POS = struct.Struct("<iq")
_TS = struct.Struct("<Bq")
_NO_TS = b"\x00"


def _blob(data: bytes | None) -> bytes:
    return _I32.pack(-1) if data is None else _I32.pack(len(data)) + data


_EPOCH_TAG = _U32.pack(0xFFFFFFFF)


def encode(rec: SourceRecord, epoch: int = 0) -> bytes:
    """The canonical bytes of one record of ``epoch`` (see the module docstring for the layout)."""
    topic = rec.topic.encode()
    parts = [_EPOCH_TAG, _U32.pack(epoch)] if epoch else []
    parts += [_U32.pack(len(topic)), topic, _POS.pack(rec.partition, rec.offset),
             _NO_TS if rec.timestamp_ms is None else _TS.pack(1, rec.timestamp_ms),
             _blob(rec.key), _blob(rec.value), _U32.pack(len(rec.headers))]
    for name, value in rec.headers:
        raw = name.encode()
        parts += (_U32.pack(len(raw)), raw, _blob(value))
    return b"".join(parts)


class ContentHasher:
    """sha256 over canonical records fed in (topic, partition, epoch, offset) order; the caller guarantees it."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(DOMAIN)
        self.count = 0

    def add(self, rec: SourceRecord, epoch: int = 0) -> bytes:
        """Hash the record in; returns its canonical bytes (the archive keeps a digest of them)."""
        data = encode(rec, epoch)
        self._h.update(data)
        self.count += 1
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()
