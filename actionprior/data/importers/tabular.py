"""Arrow columns and image bytes to the arrays an Episode holds, with one-line errors for bad values."""

from __future__ import annotations

import io
import string
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actionprior.data.images import MAX_FRAME_PIXELS
from actionprior.data.importers.common import ImportFailure


def column_array(col: pa.ChunkedArray | pa.Array, where: str, key: str) -> np.ndarray:
    """A numeric or list-of-numeric column as float32 ``[T, D]`` (a scalar column gives ``D = 1``)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise ImportFailure(f"{where}: column '{key}' has {arr.null_count} null rows")
    kind = arr.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = np.unique(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise ImportFailure(f"{where}: column '{key}' rows have different lengths {lengths.tolist()[:5]}")
        values = arr.flatten()
        if values.null_count:
            raise ImportFailure(f"{where}: column '{key}' has null values")
        if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
            raise ImportFailure(f"{where}: column '{key}' holds {values.type}, expected numbers")
        flat = values.to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(len(arr), -1)
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return arr.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
    raise ImportFailure(f"{where}: column '{key}' has type {kind}, expected numbers or lists of numbers")


def image_bytes(col: pa.ChunkedArray, where: str, key: str) -> list[bytes]:
    """Encoded images of a column: Hugging Face's ``Image`` struct ``{bytes, path}`` or plain binary."""
    arr = col.combine_chunks()
    if pa.types.is_struct(arr.type):
        if arr.type.get_field_index("bytes") < 0:
            raise ImportFailure(f"{where}: image column '{key}' has no 'bytes' field ({arr.type})")
        arr = arr.field("bytes")
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise ImportFailure(
            f"{where}: image column '{key}' has type {arr.type}, expected encoded image bytes"
        )
    if arr.null_count:
        raise ImportFailure(
            f"{where}: image column '{key}' has {arr.null_count} rows without embedded bytes "
            "(images referenced by path are not supported)"
        )
    return arr.to_pylist()


def decode_image(data: bytes, where: str) -> np.ndarray:
    """PNG/JPEG/... bytes -> uint8 RGB ``[H, W, 3]`` (Pillow; size checked before decoding)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_FRAME_PIXELS:
                raise ImportFailure(f"{where}: {img.width}x{img.height} image is too large")
            return np.asarray(img.convert("RGB"))
    except ImportFailure:
        raise
    except Exception as exc:  # Pillow raises several types for corrupt bytes
        raise ImportFailure(f"{where}: undecodable image ({exc})") from None


def format_path(root: Path, template: Any, where: str, **values: Any) -> Path:
    """A path from a metadata template such as ``data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet``.

    The template is untrusted: only the named fields are allowed (no attribute or index access) and the
    result must stay inside the dataset folder.
    """
    if not isinstance(template, str):
        raise ImportFailure(f"{where}: path template must be a string, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ImportFailure(f"{where}: malformed path template {template!r} ({exc})") from None
    unknown = [f for f in fields if f not in values]
    if unknown:
        raise ImportFailure(f"{where}: path template {template!r} uses unknown fields {unknown}")
    path = (root / template.format(**values)).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ImportFailure(f"{where}: path template {template!r} points outside the dataset")
    return path
