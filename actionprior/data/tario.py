"""Bounded, streaming reading of WebDataset tar shards into samples.

Python's ``tarfile`` (what WebDataset's readers use) builds a ``TarInfo`` per member and parses a PAX
header for each (``TarWriter`` stores float mtimes): measured ~100-250 µs per member here. An observation
shard has one member per frame, so parsing alone capped the observation view at ~50 windows/s. This reader
parses the 512-byte ustar/PAX headers itself (a few µs per member) and groups members into samples with
WebDataset's own key rule, so the shard format stays plain WebDataset.

Shards are untrusted input. The reader streams: it holds one member at a time and at most one sample (see
:mod:`actionprior.data.limits` for the caps), reads every size field as a plain non-negative number (a
negative PAX size once made it loop forever), never moves backwards in the stream, and never echoes file
content into its error messages.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from actionprior.data import limits
from actionprior.data.schema import DataError

_BLOCK = 512
_ZEROS = bytes(_BLOCK)
_OCTAL = re.compile(rb"^[0-7]+\Z")
_DECIMAL = re.compile(r"^[0-9]{1,20}\Z")
_SKIP_CHUNK = 1 << 20


def _octal(field: bytes, what: str, where: str, pos: int) -> int:
    raw = field.rstrip(b"\0 ").strip(b" ")
    if not raw:
        return 0
    if not _OCTAL.match(raw):  # also refuses '-', '+', '_' and base-256 numbers that int() would take
        raise DataError(f"{where}: corrupt tar header at byte {pos} (field '{what}' is not an octal number)")
    return int(raw, 8)


def _pax_records(body: bytes, where: str, pos: int) -> dict[str, str]:
    """``length key=value\\n`` records; every length must be positive and stay inside the body."""
    records: dict[str, str] = {}
    at = 0
    while at < len(body):
        if body[at:].strip(b"\0") == b"":
            break  # trailing padding
        space = body.find(b" ", at, at + 21)
        length_text = body[at:space] if space > at else b""
        if not length_text.isdigit():
            raise DataError(f"{where}: corrupt PAX header at byte {pos} (bad record length)")
        length = int(length_text)
        end = at + length
        if length <= space - at + 1 or end > len(body) or body[end - 1 : end] != b"\n":
            raise DataError(f"{where}: corrupt PAX header at byte {pos} (record length out of range)")
        key, eq, value = body[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise DataError(f"{where}: corrupt PAX header at byte {pos} (record without '=')")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: corrupt PAX header at byte {pos} (not valid UTF-8)") from None
        at = end
    return records


def _decode_name(raw: bytes, where: str, pos: int) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where}: tar member name at byte {pos} is not valid UTF-8") from None
    if any(ord(c) < 32 for c in name):
        raise DataError(f"{where}: tar member name at byte {pos} contains control characters")
    return name


class _Reader:
    """Exact reads and forward skips on a binary stream (files, pipes, HTTP bodies); tracks the offset."""

    def __init__(self, stream: BinaryIO, where: str):
        self.stream, self.where, self.pos = stream, where, 0

    def read(self, n: int, what: str) -> bytes:
        chunks, left = [], n
        while left > 0:
            chunk = self.stream.read(left)
            if not chunk:
                raise DataError(
                    f"{self.where}: truncated tar ({what} needs {n} bytes at byte {self.pos}, "
                    f"{n - left} left)"
                )
            chunks.append(chunk)
            left -= len(chunk)
        self.pos += n
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def read_block(self) -> bytes | None:
        """The next 512-byte header block, or None at a clean end of file."""
        data = self.stream.read(_BLOCK)
        while data and len(data) < _BLOCK:
            more = self.stream.read(_BLOCK - len(data))
            if not more:
                break
            data += more
        if len(data) < _BLOCK:
            return None
        self.pos += _BLOCK
        return data

    def skip(self, n: int, what: str) -> None:
        left = n
        while left > 0:  # read and drop in chunks: pipes cannot seek, and memory stays flat
            got = len(self.stream.read(min(left, _SKIP_CHUNK)))
            if not got:
                raise DataError(f"{self.where}: truncated tar ({what} needs {n} bytes at byte {self.pos})")
            left -= got
            self.pos += got


def _check_tail(reader: _Reader, pos: int) -> None:
    """Read what follows the end-of-archive block at ``pos``: zeros only, and not more than the cap."""
    cap = limits.MAX_TAR_TAIL_BYTES
    left = cap + 1
    while left > 0:
        chunk = reader.stream.read(min(left, _SKIP_CHUNK))
        if not chunk:
            return
        if chunk.count(0) != len(chunk):
            raise DataError(
                f"{reader.where}: data after the end-of-archive marker at byte {pos} (appended to the shard?)"
            )
        left -= len(chunk)
        reader.pos += len(chunk)
    raise DataError(
        f"{reader.where}: more than {cap} bytes follow the end-of-archive marker at byte {pos} "
        "(appended to the shard?)"
    )


def _as_stream(source: bytes | bytearray | memoryview | BinaryIO) -> BinaryIO:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    return source


def iter_tar_members(
    source: bytes | bytearray | memoryview | BinaryIO,
    where: str,
    verify: bool = True,
    max_member_bytes: int | None = None,
    skipped: list[str] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """``(name, content)`` of the regular files of a tar; raises DataError on truncation/corruption.

    ``source`` is the tar's bytes or a binary stream read forward once, to its end: what follows the
    end-of-archive marker must be zeros (a tar writer's padding to its record size) and at most
    ``limits.MAX_TAR_TAIL_BYTES``, so data appended to a shard is not ignored. ``verify`` checks every header
    checksum (``data check`` does, and the stream for shards without a whole-file checksum; a shard's SHA-256
    covers its headers). A member larger than ``max_member_bytes`` is refused before it is read. The names
    of members that are not regular files (directories, links: never followed) go to ``skipped``.
    """
    cap = limits.MAX_MEMBER_BYTES if max_member_bytes is None else max_member_bytes
    reader = _Reader(_as_stream(source), where)
    pending: dict[str, str] = {}
    while True:
        pos = reader.pos
        header = reader.read_block()
        if header is None:
            raise DataError(f"{where}: truncated tar (no end-of-archive marker after byte {pos})")
        if header == _ZEROS:  # end-of-archive block
            _check_tail(reader, pos)
            return
        if verify and _octal(header[148:156], "chksum", where, pos) != (
            sum(header) - sum(header[148:156]) + 8 * 32
        ):
            raise DataError(f"{where}: corrupt tar header at byte {pos} (checksum mismatch)")
        kind = header[156:157]
        size = _octal(header[124:136], "size", where, pos)
        if "size" in pending:
            if not _DECIMAL.match(pending["size"]):
                raise DataError(f"{where}: corrupt PAX header before byte {pos} (size is not a number)")
            size = int(pending["size"])
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        if kind in (b"x", b"g", b"L"):
            if size > limits.MAX_HEADER_EXTENSION_BYTES:
                raise DataError(
                    f"{where}: tar header extension at byte {pos} declares {size} bytes, over the "
                    f"{limits.MAX_HEADER_EXTENSION_BYTES}-byte cap"
                )
            body = reader.read(padded, "header extension")[:size]
            if kind == b"x":
                pending = _pax_records(body, where, pos)
            elif kind == b"L":  # GNU long name
                pending = {"path": _decode_name(body.rstrip(b"\0"), where, pos)}
            continue  # 'g' (global PAX header): nothing we use
        name = _decode_name(header[0:100].split(b"\0", 1)[0], where, pos)
        if header[257:262] == b"ustar":
            prefix = _decode_name(header[345:500].split(b"\0", 1)[0], where, pos)
            name = f"{prefix}/{name}" if prefix else name
        name = pending.get("path", name)
        pending = {}
        if kind not in (b"0", b"\0"):
            if skipped is not None:
                skipped.append(name)
            reader.skip(padded, f"member '{name[:100]}'")  # directories, links, devices: never followed
            continue
        if size > cap:
            raise DataError(
                f"{where}: member '{name[:100]}' declares {size} bytes, over the {cap}-byte cap per member"
            )
        body = reader.read(size, f"member '{name[:100]}'")
        reader.skip(padded - size, f"member '{name[:100]}' padding")
        yield name, body


def split_name(name: str) -> tuple[str | None, str | None]:
    """WebDataset's key rule (``base_plus_ext``): the key ends at the first dot of the base name."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot <= 0:
        return None, None
    return name[:dot], name[dot + 1 :]


def iter_tar_samples(
    source: bytes | bytearray | memoryview | BinaryIO,
    url: str,
    verify: bool = True,
    skipped: list[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Members grouped into WebDataset samples: ``{"__key__", "__url__", field: bytes}``.

    At most one sample is held: a sample over ``MAX_SAMPLE_BYTES`` or ``MAX_MEMBERS_PER_SAMPLE`` fields
    is refused, naming its key. Members that belong to no sample (no key: ``README``; a ``__`` key; not a
    regular file) are left out; their names go to ``skipped``.
    """
    sample: dict[str, Any] | None = None
    total = 0
    for name, body in iter_tar_members(source, url, verify, skipped=skipped):
        key, field = split_name(name)
        if key is None or field is None or key.startswith("__"):
            if skipped is not None:
                skipped.append(name)
            continue
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample, total = {"__key__": key, "__url__": url}, 0
        if field in sample:
            raise DataError(f"{url}:{key[:100]}: duplicate field '{field[:100]}'")
        total += len(body)
        if total > limits.MAX_SAMPLE_BYTES or len(sample) > limits.MAX_MEMBERS_PER_SAMPLE:
            raise DataError(
                f"{url}:{key[:100]}: sample exceeds the cap of {limits.MAX_SAMPLE_BYTES} bytes or "
                f"{limits.MAX_MEMBERS_PER_SAMPLE} fields"
            )
        sample[field] = body
    if sample is not None:
        yield sample
