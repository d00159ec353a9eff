"""The on-disk layout of a dataset (one WebDataset sample per episode) and safe decoding of its fields.

A dataset directory holds::

    manifest.json     schema version, embodiment specs, shard list with per-shard counts and keys
    stats.json        per-embodiment, per-dimension normalisation statistics
    traj-<name>.tar   state.npy, action.npy, meta.json                (what Stage 1 streams; no pixels)
    obs-<name>.tar    the same plus <camera>.<t:05d>.png per timestep  (what Stage 2 streams)
                      or, with ``"frames": {"storage": "video"}`` in the manifest, one <camera>.mp4 per
                      episode (:mod:`actionprior.data.video_frames`)

PNG frames are one member per timestep so that a reader decodes only the timesteps it samples; video members
are decoded from the key frame before each sampled timestep.
Nothing here ever unpickles: ``.npy`` fields are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actionprior.data import limits
from actionprior.data.checksums import checksum_problems
from actionprior.data.errors import DataError, show
from actionprior.data.location import SAFE_FILE_NAME, check_file_name
from actionprior.data.safe_json import loads_bounded
from actionprior.data.video_frames import VideoSettings, encode_video, frames_record_problems, video_field

# DataError and show (errors.py), SAFE_FILE_NAME and check_file_name (location.py) are also imported from here.

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
TRAJ_PREFIX = "traj-"
OBS_PREFIX = "obs-"
META_REQUIRED = ("embodiment", "task", "instruction", "success", "control_rate_hz", "length")
FRAME_FIELD = re.compile(r"^(?P<camera>[A-Za-z0-9_]+)\.(?P<t>\d{5})\.png\Z")
NUMERIC_KINDS = frozenset("biuf")


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
    """A numeric ``.npy`` array; the header's shape must agree with the byte count before anything is
    allocated (``np.load`` on a forged header would reserve the declared size first)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # numpy raises several types for corrupt headers
        raise DataError(f"{where}: cannot decode .npy field ({str(exc)[:200]})") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise DataError(f"{where}: .npy dtype {dtype} is not numeric")
    if len(shape) > 8:
        raise DataError(f"{where}: .npy array has {len(shape)} dimensions")
    count = math.prod(shape)
    body = len(data) - buf.tell()
    if count * dtype.itemsize != body:
        raise DataError(
            f"{where}: .npy header declares {dtype} {list(shape)} ({count * dtype.itemsize} bytes) "
            f"but holds {body} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    return array.reshape(shape, order="F" if fortran else "C").copy()


def decode_json(data: bytes, where: str) -> dict[str, Any]:
    value = loads_bounded(data, where, limits.MAX_META_BYTES)
    if not isinstance(value, dict):
        raise DataError(f"{where}: meta.json must hold an object")
    return value


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@contextmanager
def _quiet_bomb_warning() -> Iterator[None]:
    """PIL warns about large images at open; our own cap (checked next) decides, in one line."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR chunk (the first, by the PNG spec) in a few byte comparisons, or
    None when the data does not start like a PNG. For checks over every frame of a shard; decoding reads the
    rest."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def decode_png(data: bytes, where: str) -> np.ndarray:
    """An RGB frame; the header's size is checked against ``MAX_IMAGE_PIXELS`` before decoding."""
    from PIL import Image

    try:
        with _quiet_bomb_warning(), Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            width, height = img.size
            if width * height > limits.MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{where}: PNG declares {width}x{height} pixels, over the cap of "
                    f"{limits.MAX_IMAGE_PIXELS} pixels"
                )
            return np.asarray(img.convert("RGB"))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: cannot decode PNG frame ({str(exc)[:200]})") from None


def frame_field(camera: str, t: int) -> str:
    return f"{camera}.{t:05d}.png"


def trajectory_sample(episode: Episode) -> dict[str, Any]:
    """The trajectory WebDataset sample of one episode (no pixels)."""
    return {
        "__key__": episode.key,
        "state.npy": encode_npy(episode.state),
        "action.npy": encode_npy(episode.action),
        "meta.json": json.dumps(episode.meta()).encode(),
    }


def episode_to_samples(
    episode: Episode, video: VideoSettings | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (trajectory, observation) WebDataset samples of one episode; frames as PNGs, or with ``video`` one
    video member per camera. The trajectory sample is the same either way."""
    traj = trajectory_sample(episode)
    obs = dict(traj)
    for cam, frames in episode.frames.items():
        if video is not None:
            obs[video_field(cam)] = encode_video(frames, video)
            continue
        for t in range(len(episode)):
            obs[frame_field(cam, t)] = encode_png(frames[t])
    return traj, obs


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def meta_problems(meta: Mapping[str, Any]) -> list[str]:
    """Type errors of a sample's meta.json (keys present), one message each."""
    out = []
    for key in ("embodiment", "task", "instruction"):
        if key in meta and not isinstance(meta[key], str):
            out.append(f"meta.json '{key}' must be a string, got {show(meta[key])}")
    if "success" in meta and not isinstance(meta["success"], bool):
        out.append(f"meta.json 'success' must be true or false, got {show(meta['success'])}")
    rate = meta.get("control_rate_hz")
    if "control_rate_hz" in meta and (
        not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0
    ):
        out.append(f"meta.json 'control_rate_hz' must be a positive number, got {show(rate)}")
    length = meta.get("length")
    if "length" in meta and (not _is_int(length) or not 1 <= length <= limits.MAX_EPISODE_LENGTH):
        out.append(
            f"meta.json 'length' must be an integer in [1, {limits.MAX_EPISODE_LENGTH}], got {show(length)}"
        )
    cameras = meta.get("cameras", [])
    if (
        not isinstance(cameras, list)
        or len(cameras) > limits.MAX_CAMERAS
        or not all(isinstance(c, str) and re.fullmatch(r"[A-Za-z0-9_]{1,64}", c) for c in cameras)
    ):
        out.append(f"meta.json 'cameras' must be a list of camera names, got {show(cameras)}")
    return out


def value_problem(label: str, arr: np.ndarray, max_abs: float | None = limits.MAX_ABS_VALUE) -> str | None:
    """Why ``arr`` is unusable (NaN/Inf, or beyond the ``MAX_ABS_VALUE`` sanity cap), or None."""
    bad = ~np.isfinite(arr)
    if bad.any():
        t, d = np.argwhere(bad)[0][:2] if arr.ndim >= 2 else (np.argwhere(bad)[0][0], 0)
        return f"{label} has {int(bad.sum())} NaN/Inf values (first at t={t}, dim={d})"
    if max_abs is not None and arr.size and float(np.abs(arr).max()) > max_abs:
        t, d = np.argwhere(np.abs(arr) > max_abs)[0][:2] if arr.ndim >= 2 else (0, 0)
        return (
            f"{label} has values beyond +-{max_abs:g} (first at t={t}, dim={d}); "
            "limits.MAX_ABS_VALUE is the sanity cap"
        )
    return None


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
    problems = meta_problems(meta)
    if problems:
        raise DataError(f"{where}: {problems[0]}")
    for name, arr in (("state", state), ("action", action)):
        if arr.dtype != np.float32 or arr.ndim != 2 or not 0 < arr.shape[1] <= limits.MAX_DIM:
            raise DataError(f"{where}: {name} must be float32 [T, D], got {arr.dtype} {list(arr.shape)}")
    if len(state) != len(action) or len(state) != meta["length"]:
        raise DataError(
            f"{where}: lengths disagree (state {len(state)}, action {len(action)}, meta {meta['length']})"
        )
    for name, arr in (("state", state), ("action", action)):
        problem = value_problem(name, arr)
        if problem:
            raise DataError(f"{where}: {problem}")
    return state, action, meta


def spec_problems(name: Any, spec: Any) -> list[str]:
    where = f"embodiments.{show(name, 40)}"
    if not isinstance(spec, dict):
        return [f"{where} must be an object, got {show(spec)}"]
    out = []
    for key in ("state_names", "action_names"):
        value = spec.get(key)
        if not isinstance(value, list) or not 0 < len(value) <= limits.MAX_DIM:
            out.append(f"{where}.{key} must be a non-empty list of names, got {show(value)}")
        elif not all(isinstance(v, str) for v in value):
            out.append(f"{where}.{key} must hold strings only")
    cameras = spec.get("cameras", [])
    if (
        not isinstance(cameras, list)
        or len(cameras) > limits.MAX_CAMERAS
        or not all(isinstance(c, str) and re.fullmatch(r"[A-Za-z0-9_]{1,64}", c) for c in cameras)
    ):
        out.append(
            f"{where}.cameras must be a list of camera names (letters, digits, '_'), got {show(cameras)}"
        )
    for key in ("gripper_state_dims", "gripper_action_dims"):
        value = spec.get(key, [])
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            out.append(f"{where}.{key} must be a list of integers, got {show(value)}")
    rate = spec.get("control_rate_hz")
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate < 1e6:
        out.append(f"{where}.control_rate_hz must be a positive number, got {show(rate)}")
    if spec.get("name") != name:
        out.append(f"{where}.name is {show(spec.get('name'))}, expected the key {show(name)}")
    for key in ("control_mode", "description"):
        if key in spec and not isinstance(spec[key], str):
            out.append(f"{where}.{key} must be a string, got {show(spec[key])}")
    if "sim" in spec and not isinstance(spec["sim"], dict):
        out.append(f"{where}.sim must be an object, got {show(spec['sim'])}")
    return out


def _episode_entry_problems(shard: str, index: int, entry: Any) -> list[str]:
    where = f"shard '{shard}' episodes[{index}]"
    if not isinstance(entry, dict):
        return [f"{where} must be an object, got {show(entry)}"]
    out = []
    key = entry.get("key")
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,200}", key):
        out.append(f"{where}.key must be a name of letters, digits, '_' and '-', got {show(key)}")
    if not isinstance(entry.get("embodiment"), str):
        out.append(f"{where}.embodiment must be a string, got {show(entry.get('embodiment'))}")
    length = entry.get("length")
    if not _is_int(length) or not 1 <= length <= limits.MAX_EPISODE_LENGTH:
        out.append(
            f"{where}.length must be an integer in [1, {limits.MAX_EPISODE_LENGTH}], got {show(length)}"
        )
    return out


def manifest_problems(manifest: Any) -> list[str]:
    """Structural problems of a parsed manifest.json, one message each (empty when readers can trust the
    types and names it holds). Readers raise the first; ``data check`` reports them all."""
    if not isinstance(manifest, dict):
        return [f"manifest must be a JSON object, got {show(manifest)}"]
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return [
            f"schema_version {show(manifest.get('schema_version'))}, this actionprior reads {SCHEMA_VERSION}"
        ]
    out = []
    embodiments = manifest.get("embodiments")
    if not isinstance(embodiments, dict) or not embodiments:
        out.append(f"'embodiments' must be a non-empty object of specs, got {show(embodiments)}")
    else:
        for name, spec in embodiments.items():
            out += spec_problems(name, spec)
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return [*out, f"'shards' must be a list, got {show(shards)}"]
    # A trajectory-only dataset (``data collect --no-images``) has ``"obs": null`` shard entries.
    trajectory_only = manifest.get("views") == ["trajectory"]
    for i, shard in enumerate(shards):
        out += shard_problems(i, shard, trajectory_only)
    return out + frames_record_problems(manifest.get("frames"))


def shard_label(index: int, shard: Any) -> str:
    name = shard.get("name") if isinstance(shard, dict) else None
    return name if isinstance(name, str) and SAFE_FILE_NAME.match(name) else f"#{index}"


def shard_problems(index: int, shard: Any, trajectory_only: bool = False) -> list[str]:
    """Problems of one entry of the manifest's ``shards`` list (names, episode entries, counts' types)."""
    if not isinstance(shard, dict):
        return [f"shards[{index}] must be an object, got {show(shard)}"]
    out = []
    label = shard_label(index, shard)
    if label != shard.get("name"):
        out.append(f"shards[{index}].name must be a plain name, got {show(shard.get('name'))}")
    for field_ in ("traj", "obs"):
        if field_ == "obs" and trajectory_only and shard.get("obs") is None:
            continue
        try:
            check_file_name(shard.get(field_), f"shard '{label}' {field_}")
        except DataError as exc:
            out.append(str(exc))
    episodes = shard.get("episodes")
    if not isinstance(episodes, list):
        out.append(f"shard '{label}' episodes must be a list, got {show(episodes)}")
    else:
        for j, entry in enumerate(episodes):
            out += _episode_entry_problems(label, j, entry)
    for key in ("num_episodes", "num_transitions"):
        if not _is_int(shard.get(key)):
            out.append(f"shard '{label}' {key} must be an integer, got {show(shard.get(key))}")
    return out + checksum_problems(label, shard.get("checksums"))


def bookkeeping_problems(shards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(episode key or "", message)`` for every count or key of well-typed shard entries that does not add
    up: an episode listed twice, counts that disagree with the episodes listed. Readers refuse the first
    (the stream would sample a listed-twice episode twice as often); ``data check`` reports them all."""
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for shard in shards:
        name, episodes = shard["name"], shard["episodes"]
        if shard["num_episodes"] != len(episodes):
            out.append(
                ("", f"shard '{name}': num_episodes {shard['num_episodes']} but {len(episodes)} listed")
            )
        listed = sum(e["length"] for e in episodes)
        if shard["num_transitions"] != listed:
            out.append(
                (
                    "",
                    f"shard '{name}': num_transitions {shard['num_transitions']} but episodes sum to {listed}",
                )
            )
        for entry in episodes:
            key = entry["key"]
            if key in seen:
                where = "twice in shard" if seen[key] == name else f"in shards '{seen[key]}' and"
                out.append((key, f"episode key {key} listed {where} '{name}'"))
            seen.setdefault(key, name)
    return out
