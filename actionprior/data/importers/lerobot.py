"""``actionprior data import lerobot SRC --out data_shards/NAME``: a local LeRobot dataset to shards.

Both published layouts (https://github.com/huggingface/lerobot, ``LeRobotDataset``):

* **v3.0** — ``meta/info.json``; ``meta/episodes/chunk-*/file-*.parquet`` (one row per episode: ``length``,
  ``tasks``, ``data/chunk_index``, ``data/file_index``, ``dataset_from_index``/``dataset_to_index`` and, per
  video camera, ``videos/<key>/chunk_index``, ``file_index``, ``from_timestamp``, ``to_timestamp``);
  data parquet and one mp4 per camera shared by many episodes (``info.json`` ``data_path``/``video_path``).
* **v2.0 / v2.1** — ``meta/info.json``, ``meta/episodes.jsonl`` (``episode_index``, ``tasks``, ``length``),
  ``meta/tasks.jsonl``; one parquet and one mp4 per camera per episode.

Cameras may be videos (decoded with PyAV at each row's ``timestamp``; v3.0 adds the episode's
``from_timestamp``) or images embedded in the parquet (dtype ``image``: Hugging Face ``{bytes, path}``).
The parquet's own Arrow schema is read, not its Hugging Face feature metadata.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actionprior.data.images import RESIZE_MODES, fit_image, image_record
from actionprior.data.importers.common import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SHARD_EPISODES,
    ImportFailure,
    Unit,
    camera_mapping,
    check_contiguous,
    import_record,
    make_episode,
    parse_episode_selection,
    plan_units,
    short_name,
)
from actionprior.data.importers.spec_guess import concat_names, feature_names, import_spec, slug
from actionprior.data.importers.tabular import column_array, decode_image, format_path, image_bytes
from actionprior.data.importers.video import VideoReader
from actionprior.data.schema import Episode
from actionprior.embodiments import EmbodimentSpec

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
MAX_META_BYTES = 256 * 2**20  # bounded reads of JSON metadata


@dataclass(frozen=True)
class EpisodeRef:
    index: int
    length: int
    tasks: tuple[str, ...]
    data_file: str
    # camera feature key -> (video file, this episode's from_timestamp and to_timestamp in that file)
    videos: dict[str, tuple[str, float, float | None]] = field(default_factory=dict)


@dataclass
class LeRobotSource:
    """A planned LeRobot import (picklable; workers load units from it)."""

    root: str
    version: str
    fps: float
    state_keys: tuple[str, ...]
    action_keys: tuple[str, ...]
    state_dims: tuple[int, ...]
    action_dims: tuple[int, ...]
    cameras: tuple[tuple[str, str], ...]  # (short name, feature key)
    camera_dtypes: dict[str, str]  # feature key -> "video" | "image"
    episodes: dict[int, EpisodeRef]
    embodiment: str
    image_size: int
    resize: str
    threads: int = 0

    def _read_rows(self, path: str, wanted: list[int]) -> dict[int, pa.Table]:
        where = f"{path}: episode {wanted[0]}"
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise ImportFailure(f"{where}: unreadable parquet ({exc})") from None
        image_keys = [k for _, k in self.cameras if self.camera_dtypes[k] == "image"]
        columns = [
            *self.state_keys,
            *self.action_keys,
            "timestamp",
            "frame_index",
            "episode_index",
            *image_keys,
        ]
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ImportFailure(f"{where}: column '{missing[0]}' missing (columns: {schema.names})")
        try:
            table = pq.read_table(path, columns=columns, filters=[("episode_index", "in", wanted)])
        except (OSError, pa.ArrowException) as exc:
            raise ImportFailure(f"{where}: unreadable parquet ({exc})") from None
        episode_col = table["episode_index"].to_numpy()
        return {e: table.take(np.flatnonzero(episode_col == e)) for e in wanted}

    def load_unit(self, unit: Unit) -> list[Episode]:
        refs = [self.episodes[i] for i in unit.episodes]
        by_file: dict[str, list[int]] = {}
        for ref in refs:
            by_file.setdefault(ref.data_file, []).append(ref.index)
        rows: dict[int, pa.Table] = {}
        for path, wanted in by_file.items():
            rows.update(self._read_rows(path, wanted))
        readers: dict[str, VideoReader] = {}
        try:
            return [self._episode(ref, rows[ref.index], readers) for ref in refs]
        finally:
            for reader in readers.values():
                reader.close()

    def _episode(self, ref: EpisodeRef, table: pa.Table, readers: dict[str, VideoReader]) -> Episode:
        where = f"{ref.data_file}: episode {ref.index}"
        if table.num_rows != ref.length:
            raise ImportFailure(
                f"{where}: {table.num_rows} rows in the data, the episode metadata says {ref.length}"
            )
        frame_index = table["frame_index"].to_numpy()
        order = np.argsort(frame_index, kind="stable")
        if not np.array_equal(frame_index[order], np.arange(len(order))):
            raise ImportFailure(f"{where}: frame_index is not 0..{len(order) - 1} (gap or duplicate)")
        table = table.take(order)
        state = self._vector(table, self.state_keys, self.state_dims, where)
        action = self._vector(table, self.action_keys, self.action_dims, where)
        timestamps = table["timestamp"].to_numpy().astype(np.float64)

        def convert(frame: np.ndarray) -> np.ndarray:
            return fit_image(frame, self.image_size, self.resize)  # type: ignore[arg-type]

        frames: dict[str, np.ndarray] = {}
        source_hw: dict[str, list[int]] = {}
        for short, key in self.cameras:
            if self.camera_dtypes[key] == "image":
                decoded = [
                    decode_image(b, f"{where} '{key}' row {t}")
                    for t, b in enumerate(image_bytes(table[key], where, key))
                ]
                source_hw[short] = list(decoded[0].shape[:2])
                frames[short] = np.stack([convert(f) for f in decoded])
            else:
                path, offset, end = ref.videos[key]
                if end is not None and offset + timestamps[-1] >= end + 0.5 / self.fps:
                    raise ImportFailure(
                        f"{where}: timestamps reach {timestamps[-1]:.3f} s but the '{key}' video segment "
                        f"is {end - offset:.3f} s long"
                    )
                if path not in readers:
                    readers[path] = VideoReader(path, self.fps, where, threads=self.threads)
                reader = readers[path]
                source_hw[short] = list(reader.height_width)
                frames[short] = np.stack(
                    reader.frames_at(
                        timestamps + offset, self.image_size, self.resize, f"episode {ref.index} '{key}'"
                    )
                )
        instruction = ref.tasks[0] if ref.tasks else ""
        if not instruction:
            raise ImportFailure(f"{where}: the episode has no task string")
        return make_episode(
            key=f"{self.embodiment}_{ref.index:06d}",
            where=where,
            embodiment=self.embodiment,
            instruction=instruction,
            state=state,
            action=action,
            control_rate_hz=self.fps,
            frames=frames,
            extra={
                "source": f"lerobot:{Path(self.root).name}",
                "source_format": f"lerobot {self.version}",
                "source_episode": ref.index,
                "tasks": list(ref.tasks),
                "image_size": self.image_size,
                "image_resize": self.resize,
                "source_image_hw": source_hw,
            },
        )

    @staticmethod
    def _vector(table: pa.Table, keys: tuple[str, ...], dims: tuple[int, ...], where: str) -> np.ndarray:
        parts = []
        for key, dim in zip(keys, dims, strict=True):
            arr = column_array(table[key], where, key)
            if arr.shape[1] != dim:
                raise ImportFailure(
                    f"{where}: '{key}' has {arr.shape[1]} values per row, info.json says {dim}"
                )
            parts.append(arr)
        return np.concatenate(parts, axis=1)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ImportFailure(f"{path}: missing")
    if path.stat().st_size > MAX_META_BYTES:
        raise ImportFailure(f"{path}: larger than {MAX_META_BYTES >> 20} MiB")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportFailure(f"{path}: not valid JSON ({exc})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ImportFailure(f"{path}: missing")
    if path.stat().st_size > MAX_META_BYTES:
        raise ImportFailure(f"{path}: larger than {MAX_META_BYTES >> 20} MiB")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImportFailure(f"{path}: line {n} is not valid JSON ({exc})") from None
            if not isinstance(value, dict):
                raise ImportFailure(f"{path}: line {n} is not an object")
            out.append(value)
    return out


def _feature_dim(features: dict[str, Any], key: str, info_path: Path, flag: str) -> int:
    if key not in features:
        raise ImportFailure(
            f"{info_path}: feature '{key}' not found (features: {sorted(features)}); choose {flag}"
        )
    shape = features[key].get("shape") or [1]
    try:
        return int(np.prod([int(s) for s in shape]))
    except (TypeError, ValueError):
        raise ImportFailure(f"{info_path}: feature '{key}' has a malformed shape {shape!r}") from None


def _v3_episodes(root: Path, info: dict[str, Any], video_keys: list[str]) -> dict[int, EpisodeRef]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ImportFailure(f"{root / 'meta' / 'episodes'}: no chunk-*/file-*.parquet episode metadata")
    base = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index"]
    per_video = [
        f"videos/{k}/{c}"
        for k in video_keys
        for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
    ]
    episodes: dict[int, EpisodeRef] = {}
    for path in files:
        try:
            names = pq.read_schema(path).names
            missing = [c for c in base + per_video if c not in names]
            if missing:
                raise ImportFailure(f"{path}: column '{missing[0]}' missing from the episode metadata")
            rows = pq.read_table(path, columns=base + per_video).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise ImportFailure(f"{path}: unreadable parquet ({exc})") from None
        for row in rows:
            idx = int(row["episode_index"])
            where = f"{path}: episode {idx}"
            data = format_path(
                root,
                info.get("data_path"),
                where,
                chunk_index=int(row["data/chunk_index"]),
                file_index=int(row["data/file_index"]),
            )
            videos = {}
            for key in video_keys:
                video = format_path(
                    root,
                    info.get("video_path"),
                    where,
                    video_key=key,
                    chunk_index=int(row[f"videos/{key}/chunk_index"]),
                    file_index=int(row[f"videos/{key}/file_index"]),
                )
                videos[key] = (
                    str(video),
                    float(row[f"videos/{key}/from_timestamp"]),
                    float(row[f"videos/{key}/to_timestamp"]),
                )
            if idx in episodes:
                raise ImportFailure(f"{where}: episode listed twice in the episode metadata")
            episodes[idx] = EpisodeRef(idx, int(row["length"]), tuple(row["tasks"] or ()), str(data), videos)
    return episodes


def _v2_episodes(root: Path, info: dict[str, Any], video_keys: list[str]) -> dict[int, EpisodeRef]:
    path = root / "meta" / "episodes.jsonl"
    tasks_path = root / "meta" / "tasks.jsonl"
    tasks = {int(t["task_index"]): str(t["task"]) for t in _read_jsonl(tasks_path) if "task_index" in t}
    chunks_size = int(info.get("chunks_size") or 1000)
    episodes: dict[int, EpisodeRef] = {}
    for row in _read_jsonl(path):
        if "episode_index" not in row or "length" not in row:
            raise ImportFailure(f"{path}: a line lacks 'episode_index' or 'length'")
        idx = int(row["episode_index"])
        where = f"{path}: episode {idx}"
        ep_tasks = [str(t) for t in row.get("tasks") or []]
        if not ep_tasks and "task_index" in row:
            ep_tasks = [tasks.get(int(row["task_index"]), "")]
        chunk = idx // chunks_size
        data = format_path(root, info.get("data_path"), where, episode_chunk=chunk, episode_index=idx)
        videos = {
            key: (
                str(
                    format_path(
                        root,
                        info.get("video_path"),
                        where,
                        episode_chunk=chunk,
                        video_key=key,
                        episode_index=idx,
                    )
                ),
                0.0,
                None,
            )
            for key in video_keys
        }
        if idx in episodes:
            raise ImportFailure(f"{where}: episode listed twice")
        episodes[idx] = EpisodeRef(idx, int(row["length"]), tuple(ep_tasks), str(data), videos)
    return episodes


def plan(
    src: str | Path,
    *,
    state_key: str = "observation.state",
    action_key: str = "action",
    cameras: str | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    resize: str = "pad",
    episodes: str | None = None,
    embodiment: str | None = None,
    spec_path: str | Path | None = None,
    control_mode: str = "unspecified",
    gripper_state_dims: str | None = None,
    gripper_action_dims: str | None = None,
    shard_episodes: int = DEFAULT_SHARD_EPISODES,
    threads: int = 0,
) -> tuple[LeRobotSource, list[Unit], EmbodimentSpec, dict[str, Any]]:
    """Read and check the metadata; the source, its units, the embodiment spec and the import record."""
    root = Path(src).resolve()
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise ImportFailure(f"{root}: not a LeRobot dataset folder (no meta/info.json)")
    info = _read_json(info_path)
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version not in SUPPORTED_VERSIONS:
        raise ImportFailure(
            f"{info_path}: codebase_version {version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    features = info.get("features")
    if not isinstance(features, dict):
        raise ImportFailure(f"{info_path}: no 'features' mapping")
    fps = info.get("fps")
    if not isinstance(fps, (int, float)) or fps <= 0:
        raise ImportFailure(f"{info_path}: fps must be a positive number, got {fps!r}")
    if image_size <= 0:
        raise ImportFailure(f"--image-size must be positive, got {image_size}")
    if resize not in RESIZE_MODES:
        raise ImportFailure(f"--resize must be one of {RESIZE_MODES}, got '{resize}'")
    state_keys = tuple(k.strip() for k in state_key.split(",") if k.strip())
    action_keys = tuple(k.strip() for k in action_key.split(",") if k.strip())
    state_dims = tuple(_feature_dim(features, k, info_path, "--state-key") for k in state_keys)
    action_dims = tuple(_feature_dim(features, k, info_path, "--action-key") for k in action_keys)

    camera_features = {k: v.get("dtype") for k, v in features.items() if v.get("dtype") in ("video", "image")}
    default = {k: short_name(k) for k in camera_features}
    mapping = camera_mapping(cameras, list(camera_features), default, str(info_path), "camera feature")
    shorts = [s for s, _ in mapping]

    video_keys = [k for _, k in mapping if camera_features[k] == "video"]
    refs = _v3_episodes(root, info, video_keys) if version == "v3.0" else _v2_episodes(root, info, video_keys)
    meta_where = str(root / "meta" / ("episodes" if version == "v3.0" else "episodes.jsonl"))
    check_contiguous(list(refs), meta_where)
    total = info.get("total_episodes")
    if isinstance(total, int) and total != len(refs):
        raise ImportFailure(
            f"{info_path}: total_episodes is {total} but the episode metadata lists {len(refs)}"
        )
    selected = parse_episode_selection(episodes, sorted(refs), meta_where)

    name = embodiment or slug(str(info.get("robot_type") or "")) or slug(f"lerobot_{root.name}")
    native = {short: _feature_hw(features[key]) for short, key in mapping}
    image = image_record(image_size, resize, {k: hw for k, hw in native.items() if hw})  # type: ignore[arg-type]
    sim = {
        "source": "lerobot",
        "image": image,
        "camera_features": dict(mapping),
        "state_keys": list(state_keys),
        "action_keys": list(action_keys),
    }
    state_names = concat_names(
        [
            (k, feature_names(k, features[k].get("names"), d))
            for k, d in zip(state_keys, state_dims, strict=True)
        ]
    )
    action_names = concat_names(
        [
            (k, feature_names(k, features[k].get("names"), d))
            for k, d in zip(action_keys, action_dims, strict=True)
        ]
    )
    spec = import_spec(
        spec_path,
        embodiment,
        name=name,
        state_names=state_names,
        action_names=action_names,
        control_rate_hz=float(fps),
        cameras=shorts,
        description=f"imported from LeRobot dataset {root.name} ({version}, robot_type {info.get('robot_type')})",
        sim=sim,
        control_mode=control_mode,
        gripper_state=gripper_state_dims,
        gripper_action=gripper_action_dims,
    )
    source = LeRobotSource(
        root=str(root),
        version=version,
        fps=float(fps),
        state_keys=state_keys,
        action_keys=action_keys,
        state_dims=state_dims,
        action_dims=action_dims,
        cameras=tuple(mapping),
        camera_dtypes={k: camera_features[k] for _, k in mapping},
        episodes={i: refs[i] for i in selected},
        embodiment=spec.name,
        image_size=image_size,
        resize=resize,
        threads=threads,
    )
    units = plan_units(spec.name, selected, [refs[i].length for i in selected], shard_episodes)
    record = import_record(
        f"lerobot {version}",
        str(root),
        selected,
        shard_episodes,
        image,
        dict(mapping),
        spec,
        state_keys=list(state_keys),
        action_keys=list(action_keys),
    )
    return source, units, spec, record


def _feature_hw(feature: dict[str, Any]) -> tuple[int, int] | None:
    """A camera feature's native ``(height, width)`` from info.json (None when it does not say): its ``names``
    place height and width, else the shape is ``[h, w, c]`` (LeRobot's layout) or ``[c, h, w]``."""
    shape, names = feature.get("shape"), feature.get("names")
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(x, int) and x > 0 for x in shape):
        return None
    if isinstance(names, list) and "height" in names and "width" in names and len(names) == 3:
        return shape[names.index("height")], shape[names.index("width")]
    if shape[2] in (1, 3):
        return shape[0], shape[1]
    return (shape[1], shape[2]) if shape[0] in (1, 3) else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="local LeRobot dataset folder (holds meta/info.json)")
    p.add_argument(
        "--state-key", default="observation.state", help="feature(s) for the state vector, comma-joined"
    )
    p.add_argument("--action-key", default="action", help="feature(s) for the action vector, comma-joined")
    p.add_argument(
        "--cameras",
        default=None,
        help="short=feature_key,... (default: every video/image feature, named by its last dotted part)",
    )


def run_from_args(
    args: argparse.Namespace,
) -> tuple[LeRobotSource, list[Unit], EmbodimentSpec, dict[str, Any]]:
    return plan(
        args.src,
        state_key=args.state_key,
        action_key=args.action_key,
        cameras=args.cameras,
        image_size=args.image_size,
        resize=args.resize,
        episodes=args.episodes,
        embodiment=args.embodiment,
        spec_path=args.spec,
        control_mode=args.control_mode,
        gripper_state_dims=args.gripper_state_dims,
        gripper_action_dims=args.gripper_action_dims,
        shard_episodes=args.shard_episodes,
        threads=args.threads if args.threads is not None else (0 if args.workers <= 1 else 1),
    )
