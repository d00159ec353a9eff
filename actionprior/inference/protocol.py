"""Wire format of the policy server: msgpack messages carrying numpy arrays, never pickle.

A numpy array travels as a map ``{"__nd__": True, "dtype": "<f4", "shape": [..], "data": <bytes>}``;
only plain numeric dtypes are accepted (no object arrays, so nothing can smuggle code), and the byte
count must agree with dtype and shape. Every message is size-checked before it is parsed.

Messages (client → server)::

    {"type": "act", "observation": {"embodiment", "state", "images": {cam: uint8 [h,w,3]}, "instruction"}}
    {"type": "reset"}                        forget history and queued actions of this connection
    {"type": "info"}                         what the policy expects (embodiments, cameras, image size)

Replies (server → client)::

    {"ok": True, "action": float32 [Da], "inference_ms": float, "replanned": bool}
    {"ok": True, "info": {...}}  /  {"ok": True}
    {"ok": False, "error": "human-readable reason"}
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

# Generous for a few 224x224 cameras (150 KB each) plus state; the server answers bigger requests
# with an error instead of parsing them.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_ND_KEY = "__nd__"
# Numeric kinds only: bool, signed/unsigned int, float. Object, string, void and datetime are refused.
_ALLOWED_KINDS = frozenset("biuf")


class ProtocolError(ValueError):
    """A message could not be encoded or decoded; the text says which field and why."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise ProtocolError(f"cannot send a numpy array of dtype {obj.dtype}: only numeric arrays")
        arr = np.ascontiguousarray(obj)
        return {_ND_KEY: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise ProtocolError(f"cannot encode an object of type {type(obj).__name__}")


def _decode_hook(obj: dict[str, Any]) -> Any:
    if not obj.get(_ND_KEY):
        return obj
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(d) for d in obj["shape"])
        data = obj["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed array field ({exc}); expected dtype, shape and data") from None
    if dtype.kind not in _ALLOWED_KINDS:
        raise ProtocolError(f"array dtype {dtype} is not allowed: only numeric arrays")
    if not isinstance(data, bytes):
        raise ProtocolError("array 'data' must be raw bytes")
    if any(d < 0 for d in shape):
        raise ProtocolError(f"array shape {list(shape)} has a negative dimension")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(data):
        raise ProtocolError(
            f"array of dtype {dtype} and shape {list(shape)} needs {expected} bytes, got {len(data)}"
        )
    # frombuffer is read-only and zero-copy; copy so that callers may modify what they receive.
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def encode(message: Any) -> bytes:
    """Serialise a message (dicts, lists, str, numbers, numpy arrays) to msgpack bytes."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def decode(payload: bytes | bytearray | memoryview, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Parse msgpack bytes produced by :func:`encode`; refuses payloads over ``max_bytes``."""
    if isinstance(payload, str):
        raise ProtocolError("expected a binary msgpack message, got a text frame")
    size = len(payload)
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(
            bytes(payload),
            object_hook=_decode_hook,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise ProtocolError(f"not a valid msgpack message: {type(exc).__name__}: {exc}") from None


def error_reply(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}
