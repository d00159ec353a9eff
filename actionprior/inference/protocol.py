"""Wire format of the policy server: msgpack messages carrying numpy arrays, never pickle.

A numpy array travels as a map ``{"__nd__": True, "dtype": "<f4", "shape": [..], "data": <bytes>}``;
only plain numeric dtypes are accepted (no object arrays, so nothing can smuggle code), and the byte
count must agree with dtype and shape. Every message is size-checked before it is parsed, and parsing is
bounded by :class:`Limits` (entries per map and list, string and binary lengths, nesting depth, total
containers and array elements): msgpack refuses an oversized map or list from its header, before building
it, so a request of 300,000 keys costs microseconds, not seconds.

Every message carries ``"version": PROTOCOL_VERSION``; a server refuses a request of another version (or of
none: a client from before versioning) with a one-line error, and a client refuses such a reply.

Messages (client → server)::

    {"type": "act", "observation": {"embodiment", "state", "images": {cam: uint8 [h,w,3]}, "instruction"}}
                                             one action; the server executes chunks for this connection
    {"type": "chunk", "observation": {...}, "step": int, "delay_steps": int,
     "executed": {"states": float [k, Ds], "actions": float [k, Da]}}     (executed: optional)
                                             a whole chunk for the observation of ``step`` (asynchronous
                                             clients, which execute chunks themselves): ``executed`` are the
                                             steps run since the previous request (for the history),
                                             ``delay_steps`` how many of the chunk's first actions will have
                                             run before it arrives (frozen by ``rtc``)
    {"type": "reset"}                        forget history, chunks and the step count of this connection
    {"type": "info"}                         what the policy expects (embodiments, cameras, image size, execution)

Replies (server → client)::

    {"ok": True, "action": float32 [Da], "inference_ms": float, "replanned": bool, "switched": bool}
    {"ok": True, "chunk": float32 [H, Da], "start_step": int, "inference_ms": float, "model_ms": float}
    {"ok": True, "info": {...}}  /  {"ok": True}
    {"ok": False, "error": "human-readable reason"}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

# Version 2 added "chunk" requests (asynchronous inference) and the version field itself.
PROTOCOL_VERSION = 2
# Generous for a few 224x224 cameras (150 KB each) plus state; the server answers bigger requests
# with an error instead of parsing them.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_ND_KEY = "__nd__"
# Numeric kinds only: bool, signed/unsigned int, float. Object, string, void and datetime are refused.
_ALLOWED_KINDS = frozenset("biuf")


class ProtocolError(ValueError):
    """A message could not be encoded or decoded; the text says which field and why."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one decoded message. ``REQUEST_LIMITS`` fit every valid request with a wide margin (a
    request is a few maps: type, observation, images per camera, one array map per array)."""

    max_map_len: int = 64  # entries of any one map
    max_array_len: int = 256  # entries of any one list (array shapes, ...)
    max_str_len: int = 16 * 1024  # bytes of one string (instructions are capped at 2000 characters)
    max_depth: int = 8  # nesting of maps and lists
    max_containers: int = 512  # maps and lists in the whole message
    max_array_elements: int = 64 * 1024 * 1024  # numpy elements in the whole message


REQUEST_LIMITS = Limits()
# Replies come from a server the client chose; ``info`` replies hold per-embodiment name lists.
REPLY_LIMITS = Limits(max_map_len=4096, max_array_len=65536, max_depth=16, max_containers=65536)
MAX_ERROR_CHARS = 500


def bounded_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters (saying how long it was): error replies and logs never echo
    unbounded client input."""
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text)} characters in all]"


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise ProtocolError(f"cannot send a numpy array of dtype {obj.dtype}: only numeric arrays")
        arr = np.ascontiguousarray(obj)
        return {_ND_KEY: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise ProtocolError(f"cannot encode an object of type {type(obj).__name__}")


def _array_from_map(obj: dict[Any, Any]) -> np.ndarray:
    try:
        dtype = np.dtype(obj["dtype"])
        shape_field = obj["shape"]
        data = obj["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(
            f"malformed array field ({bounded_text(str(exc), 100)}); expected dtype, shape and data"
        ) from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject or dtype.itemsize == 0:
        raise ProtocolError(f"array dtype {dtype} is not allowed: only numeric arrays")
    if not isinstance(data, bytes):
        raise ProtocolError("array 'data' must be raw bytes")
    if (
        not isinstance(shape_field, list)
        or len(shape_field) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape_field)
    ):
        raise ProtocolError("array 'shape' must be a list of at most 8 integers")
    shape = tuple(shape_field)
    if any(d < 0 for d in shape):
        raise ProtocolError(f"array shape {list(shape)} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no int64 overflow to forge a match
    if expected != len(data):
        raise ProtocolError(
            f"array of dtype {dtype} and shape {list(shape)} needs {expected} bytes, got {len(data)}"
        )
    # frombuffer is read-only and zero-copy; copy so that callers may modify what they receive.
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


class _Budget:
    """Hooks msgpack calls for every map and list as it completes (innermost first): they track nesting
    depth and counts and abort the parse as soon as a bound is passed."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.depth: dict[int, int] = {}  # id of a decoded container -> its nesting depth
        self.containers = 0
        self.elements = 0

    def _enter(self, children: Any) -> int:
        self.containers += 1
        if self.containers > self.limits.max_containers:
            raise ProtocolError(f"message holds more than {self.limits.max_containers} maps and lists")
        depth = 1 + max((self.depth.get(id(c), 0) for c in children), default=0)
        if depth > self.limits.max_depth:
            raise ProtocolError(f"message nests deeper than {self.limits.max_depth} levels")
        return depth

    def list_hook(self, items: list[Any]) -> list[Any]:
        self.depth[id(items)] = self._enter(items)
        return items

    def object_hook(self, obj: dict[Any, Any]) -> Any:
        depth = self._enter(obj.values())
        if not obj.get(_ND_KEY):
            self.depth[id(obj)] = depth
            return obj
        array = _array_from_map(obj)
        self.elements += array.size
        if self.elements > self.limits.max_array_elements:
            raise ProtocolError(f"message holds more than {self.limits.max_array_elements} array elements")
        self.depth[id(array)] = depth
        return array


def encode(message: Any) -> bytes:
    """Serialise a message (dicts, lists, str, numbers, numpy arrays) to msgpack bytes."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def decode(
    payload: bytes | bytearray | memoryview,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    limits: Limits = REQUEST_LIMITS,
) -> Any:
    """Parse msgpack bytes produced by :func:`encode`; refuses payloads over ``max_bytes`` or ``limits``."""
    if isinstance(payload, str):
        raise ProtocolError("expected a binary msgpack message, got a text frame")
    size = len(payload)
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
    budget = _Budget(limits)
    try:
        return msgpack.unpackb(
            payload,
            object_hook=budget.object_hook,
            list_hook=budget.list_hook,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=min(max_bytes, limits.max_str_len),
            max_map_len=limits.max_map_len,
            max_array_len=limits.max_array_len,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for corrupt or oversized input
        raise ProtocolError(
            f"not a valid msgpack message within the limits ({type(exc).__name__}: {bounded_text(str(exc), 200)}); "
            f"at most {limits.max_map_len} map entries, {limits.max_array_len} list entries, "
            f"{limits.max_str_len}-byte strings, depth {limits.max_depth}"
        ) from None


def error_reply(message: str) -> dict[str, Any]:
    return {"ok": False, "error": bounded_text(message)}


def check_request_version(request: dict[str, Any]) -> None:
    """Refuse a request of another protocol version, in one line that says which side to update."""
    version = request.get("version")
    if version == PROTOCOL_VERSION and not isinstance(version, bool):
        return
    if version is None:
        raise ProtocolError(
            f"this policy server speaks protocol version {PROTOCOL_VERSION} and the request carries no version "
            "(a client from an older actionprior); update actionprior on the client"
        )
    raise ProtocolError(
        f"protocol version {bounded_text(repr(version), 40)} is not supported: this policy server speaks version "
        f"{PROTOCOL_VERSION}; use the same actionprior version on client and server"
    )
