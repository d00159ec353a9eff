"""The on-disk layout of a dataset (one WebDataset sample per episode) and safe decoding of its fields.

A dataset directory holds::

    manifest.json     schema version, embodiment specs, shard list with per-shard counts and keys
    stats.json        per-embodiment, per-dimension normalisation statistics
    traj-<name>.tar   state.npy, action.npy, meta.json                (what Stage 1 streams; no pixels)
    obs-<name>.tar    the same plus <camera>.<t:05d>.png per timestep  (what Stage 2 streams)

Frames are stored one PNG per timestep so that a reader decodes only the timesteps it samples.
Nothing here ever unpickles: ``.npy`` fields are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
TRAJ_PREFIX = "traj-"
OBS_PREFIX = "obs-"
META_REQUIRED = ("embodiment", "task", "instruction", "success", "control_rate_hz", "length")
FRAME_FIELD = re.compile(r"^(?P<camera>[A-Za-z0-9_]+)\.(?P<t>\d{5})\.png$")


class DataError(ValueError):
    """Malformed data: the message names the file and sample key."""


@dataclass
class Episode:
    """One demonstration. Arrays are float32 ``[T, D]``; frames are uint8 ``[T, H, W, 3]`` per camera."""

    key: str
    embodiment: str
    task: str
    instruction: str
    state: np.ndarray
    action: np.ndarray
    success: bool
    control_rate_hz: float
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "." in self.key or "/" in self.key:
            raise DataError(f"episode key '{self.key}' must not contain '.' or '/'")
        self.state = np.ascontiguousarray(self.state, dtype=np.float32)
        self.action = np.ascontiguousarray(self.action, dtype=np.float32)
        if self.state.ndim != 2 or self.action.ndim != 2 or len(self.state) != len(self.action):
            raise DataError(
                f"episode {self.key}: state {self.state.shape} and action {self.action.shape} "
                "must both be [T, D] with the same T"
            )
        for cam, frames in self.frames.items():
            if (
                frames.dtype != np.uint8
                or frames.ndim != 4
                or frames.shape[0] != len(self)
                or frames.shape[3] != 3
            ):
                raise DataError(
                    f"episode {self.key}: camera '{cam}' frames must be uint8 [T={len(self)}, H, W, 3], "
                    f"got {frames.dtype} {frames.shape}"
                )

    def __len__(self) -> int:
        return int(self.state.shape[0])

    def meta(self) -> dict[str, Any]:
        return {
            "embodiment": self.embodiment,
            "task": self.task,
            "instruction": self.instruction,
            "success": bool(self.success),
            "control_rate_hz": float(self.control_rate_hz),
            "length": len(self),
            "cameras": sorted(self.frames),
            "schema_version": SCHEMA_VERSION,
            **self.extra,
        }


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt bytes
        raise DataError(f"{where}: cannot decode .npy field ({exc})") from exc


def decode_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: cannot decode meta.json ({exc})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{where}: meta.json must hold an object")
    return value


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise DataError(f"{where}: cannot decode PNG frame ({exc})") from exc


def frame_field(camera: str, t: int) -> str:
    return f"{camera}.{t:05d}.png"


def episode_to_samples(episode: Episode) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (trajectory, observation) WebDataset samples of one episode."""
    traj = {
        "__key__": episode.key,
        "state.npy": encode_npy(episode.state),
        "action.npy": encode_npy(episode.action),
        "meta.json": json.dumps(episode.meta()).encode(),
    }
    obs = dict(traj)
    for cam, frames in episode.frames.items():
        for t in range(len(episode)):
            obs[frame_field(cam, t)] = encode_png(frames[t])
    return traj, obs


def decode_trajectory(sample: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Decode and validate the trajectory fields of a raw sample (bytes values)."""
    for name in ("state.npy", "action.npy", "meta.json"):
        if name not in sample:
            raise DataError(f"{where}: missing field '{name}'")
    state = decode_npy(sample["state.npy"], f"{where} state.npy")
    action = decode_npy(sample["action.npy"], f"{where} action.npy")
    meta = decode_json(sample["meta.json"], f"{where} meta.json")
    missing = [k for k in META_REQUIRED if k not in meta]
    if missing:
        raise DataError(f"{where}: meta.json is missing {missing}")
    for name, arr in (("state", state), ("action", action)):
        if arr.dtype != np.float32 or arr.ndim != 2:
            raise DataError(f"{where}: {name} must be float32 [T, D], got {arr.dtype} {arr.shape}")
    if len(state) != len(action) or len(state) != meta["length"]:
        raise DataError(
            f"{where}: lengths disagree (state {len(state)}, action {len(action)}, meta {meta['length']})"
        )
    return state, action, meta
