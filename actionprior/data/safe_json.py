"""One bounded JSON reader for everything read from a dataset folder (manifest, stats, sample meta).

``json.loads`` recurses once per nesting level and accepts ``NaN``/``Infinity`` and ``1e999`` (= inf).
This reader caps the byte size before reading, decodes UTF-8 strictly, measures the nesting depth with a
linear scan before parsing (so no input reaches the parser's recursion limit), and refuses non-finite
numbers. Every failure is a :class:`~actionprior.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, BinaryIO

from actionprior.data.errors import DataError
from actionprior.data.limits import MAX_JSON_DEPTH
from actionprior.data.location import open_local

# A JSON string (skipped as a whole, so brackets inside strings do not count) or a bracket. An unterminated
# string runs to the end of the input (optionally ending in a lone backslash): every match attempt that
# starts at a quote succeeds without backtracking, so the scan is linear on any input (without that
# ending, '"\\"\\"...\\' made it quadratic: 16 KB took 1.4 s).
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


def _depth_ok(data: bytes, max_depth: int) -> bool:
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return True  # cannot be deeper than its number of openings (the common, cheap case)
    depth = 0
    for match in _TOKENS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return False
        elif token in (b"]", b"}"):
            depth -= 1
    return True


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows to infinity")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (numbers must be finite)")


def loads_bounded(data: bytes, where: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse ``data`` as JSON under the caps; ``where`` names the file in errors."""
    if len(data) > max_bytes:
        raise DataError(f"{where}: {len(data)} bytes, over the {max_bytes}-byte cap for this file")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not valid UTF-8 (byte {exc.start})") from None
    if not _depth_ok(bytes(data), max_depth):
        raise DataError(f"{where}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:  # unreachable after the depth scan; kept so that no input can escape
        raise DataError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, int digit limit, non-finite numbers
        raise DataError(f"{where}: invalid JSON ({str(exc)[:200]})") from None


def read_bounded(stream: BinaryIO, where: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` from ``stream``; refuses longer content without reading it all."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(f"{where}: larger than the {max_bytes}-byte cap for this file")
    return data


def read_json_file(path: str | Path, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Bounded JSON from a local file; missing or unreadable files raise DataError too."""
    try:
        with open_local(path) as f:
            data = read_bounded(f, str(path), max_bytes)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return loads_bounded(data, str(path), max_bytes, max_depth)
