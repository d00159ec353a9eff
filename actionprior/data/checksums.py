"""Checksums of shard files: computed on the bytes as they are written, verified on the bytes as they are read.

Every shard entry of ``manifest.json`` records the size and SHA-256 of its files::

    "checksums": {"traj": {"bytes": 143360, "sha256": "9f2c..."}, "obs": {"bytes": 9932800, "sha256": "..."}}

The writer hashes what it writes (:class:`HashingWriter`, no second pass over the file) and ``data check``
and the stream hash what they read anyway (:class:`HashingReader`, no second read). SHA-256 because it is
what object stores, Git LFS and the Hugging Face Hub record (``sha256sum`` checks a shard by hand) and, on
CPUs with SHA extensions, the fastest hash ``hashlib`` offers: ``benchmarks/checksum_cost.py`` measures it
against BLAKE2b, SHA-1 and CRC-32 and the cost in the stream.

A dataset written before checksums existed has shard entries without ``checksums``; readers take it with a
one-line notice and ``actionprior data check DIR --rehash`` adds them.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from actionprior.data.errors import show

ALGORITHM = "sha256"
_HEX = re.compile(r"^[0-9a-f]{64}\Z")
FILE_FIELDS = ("traj", "obs")


@dataclass(frozen=True)
class FileSum:
    """The size in bytes and the SHA-256 (hex) of one file."""

    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.size, ALGORITHM: self.sha256}


def checksum_problems(label: str, value: Any) -> list[str]:
    """Problems of a shard entry's ``checksums`` object (absent is fine: a dataset from before checksums)."""
    if value is None:
        return []
    where = f"shard '{label}' checksums"
    if not isinstance(value, Mapping) or not set(value) <= set(FILE_FIELDS):
        return [f"{where} must be an object with 'traj' and 'obs' entries, got {show(value)}"]
    out = []
    for field, entry in value.items():
        size = entry.get("bytes") if isinstance(entry, Mapping) else None
        digest = entry.get(ALGORITHM) if isinstance(entry, Mapping) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            out.append(f"{where}.{field}.bytes must be a non-negative integer, got {show(size)}")
        if not isinstance(digest, str) or not _HEX.match(digest):
            out.append(f"{where}.{field}.{ALGORITHM} must be 64 lowercase hex digits, got {show(digest)}")
    return out


def expected_sum(shard: Mapping[str, Any], field: str) -> FileSum | None:
    """The recorded sum of a (validated) shard entry's ``traj``/``obs`` file, or None when it has none."""
    entry = (shard.get("checksums") or {}).get(field)
    return FileSum(int(entry["bytes"]), entry[ALGORITHM]) if entry is not None else None


def mismatch(actual: FileSum, expected: FileSum) -> str | None:
    """Why a file read as ``actual`` is not the file the manifest recorded, or None when it is."""
    if actual.size != expected.size:
        what = "truncated (an interrupted copy?)" if actual.size < expected.size else "bytes were added"
        return (
            f"{actual.size} bytes, but manifest.json records {expected.size}: {what}; restore the file from "
            "its source"
        )
    if actual.sha256 != expected.sha256:
        return (
            f"checksum mismatch: {ALGORITHM} {actual.sha256[:16]}..., manifest.json records "
            f"{expected.sha256[:16]}...: the file changed after it was written (bit rot, a damaged copy); "
            "restore it from its source"
        )
    return None


class _HashingRaw(io.RawIOBase):
    """The raw layer under :class:`HashingReader`: hashes each chunk the buffer above it reads."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self.source = raw
        self.hash = hashlib.new(ALGORITHM)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if hasattr(self.source, "readinto"):
            n = self.source.readinto(buffer)
        else:  # e.g. WebDataset's pipe: wrapper offers read() only
            data = self.source.read(len(buffer))
            n = len(data)
            buffer[:n] = data
        if n:
            self.hash.update(memoryview(buffer)[:n])
            self.count += n
        return n or 0


class HashingReader:
    """A binary stream that hashes and counts every byte read through it (files, pipes, HTTP bodies).

    The tar reader makes a few small reads per member; they are served by an ``io.BufferedReader`` (C) over a
    raw layer that hashes whole chunks of ``buffer_size``, so verifying costs one hash update per chunk, not a
    Python call per read. It reads ahead of its caller, which is fine: readers take shards to their end.
    """

    def __init__(self, raw: BinaryIO, buffer_size: int = 1 << 20):
        self._raw = _HashingRaw(raw)
        self._buffered = io.BufferedReader(self._raw, buffer_size)
        self.read = self._buffered.read

    def fileno(self) -> int:
        return self._raw.source.fileno()

    def close(self) -> None:
        self._raw.source.close()

    def result(self) -> FileSum:
        """Size and digest of what was read from the source so far (the whole file once a reader reached
        its end)."""
        return FileSum(self._raw.count, self._raw.hash.hexdigest())


class HashingWriter:
    """A writable stream that hashes and counts every byte written through it (see ``write_shard_files``)."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self._hash = hashlib.new(ALGORITHM)
        self.count = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.count += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def result(self) -> FileSum:
        return FileSum(self.count, self._hash.hexdigest())
