"""``actionprior data export lerobot DATASET --out DIR``: one embodiment of a dataset as a LeRobot v3.0 dataset.

The mirror image of :mod:`actionprior.data.importers.lerobot`, and the layout LeRobot 0.4.4's own writer
(``LeRobotDataset.create`` / ``save_episode``) produces, checked field by field against the fixture it wrote
(tests/fixtures/lerobot/v3_single_arm_video)::

    meta/info.json                            codebase_version v3.0, fps, robot_type, features, path templates
    meta/stats.json                           per feature min/max/mean/std/count/q01..q99 (lerobot_stats)
    meta/tasks.parquet                        task_index, indexed by the task string (pandas index)
    meta/episodes/chunk-000/file-000.parquet  per episode: tasks, length, data/ and videos/<key>/ locations,
                                              dataset_from/to_index, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet           one row per step: observation.state, action, [cameras,]
                                              timestamp, frame_index, episode_index, index, task_index
    videos/observation.images.<cam>/chunk-000/file-000.mp4   (--frames video) AV1 as LeRobot encodes it

A LeRobot dataset has one state and one action size, so it holds one embodiment: ``fps`` is its
``control_rate_hz``, ``robot_type`` its name, the feature ``names`` its ``state_names`` / ``action_names``, the
cameras its ``cameras`` (``observation.images.<camera>``). The task string of an episode is its instruction.
Data and video files roll over to the next file as LeRobot's do (``data_files_size_in_mb``,
``video_files_size_in_mb``, ``chunks_size`` files per chunk).

``--frames video`` encodes every camera like LeRobot (libsvtav1, yuv420p, g=2, crf=30): lossy.
``--frames images`` stores each frame as PNG bytes in the parquet (LeRobot's ``dtype: image``): lossless.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actionprior.data.exporters import lerobot_stats as lstats
from actionprior.data.exporters.video import FRAME_MODES, VIDEO_PIX_FMT, CameraFile, EpisodeEncoder
from actionprior.data.reader import dataset_views, load_manifest
from actionprior.data.schema import DataError, Episode, encode_png
from actionprior.data.shards import iter_episodes
from actionprior.data.splits import Split
from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec

FrameMode = Literal["video", "images"]

CODEBASE_VERSION = "v3.0"
# LeRobot 0.4.4's defaults (lerobot/datasets/utils.py).
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
CAMERA_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
# The index columns every LeRobot dataset has, after the user's features (lerobot DEFAULT_FEATURES).
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
PARTIAL_SUFFIX = ".partial"


class ExportError(DataError):
    """The dataset cannot be exported as asked; the message is one line naming the dataset or flag."""


def camera_key(camera: str) -> str:
    return f"{CAMERA_PREFIX}{camera}"


def _list_type(value: pa.DataType, size: int | None = None) -> pa.DataType:
    # LeRobot's files name list elements "element" (Hugging Face datasets' convention), not Arrow's "item".
    item = pa.field("element", value)
    return pa.list_(item, size) if size is not None else pa.list_(item)


@dataclass
class ExportReport:
    out_dir: Path
    embodiment: str
    episodes: int
    frames: int
    cameras: tuple[str, ...]
    frame_mode: str
    tasks: int
    encoder_restarts: int = 0  # episode encodes that hung and were run again (see video.py)


def dataset_embodiments(manifest: dict[str, Any]) -> list[str]:
    """Embodiments that have episodes in the dataset, in the manifest's spec order."""
    present = {e["embodiment"] for shard in manifest["shards"] for e in shard["episodes"]}
    return [name for name in manifest["embodiments"] if name in present]


def choose_embodiments(
    dataset: Path, manifest: dict[str, Any], embodiment: str | None, split: bool
) -> list[str]:
    names = dataset_embodiments(manifest)
    if not names:
        raise ExportError(f"{dataset}: the dataset has no episodes")
    if embodiment is not None and split:
        raise ExportError("--embodiment and --split-by-embodiment exclude each other")
    if embodiment is not None:
        if embodiment not in names:
            raise ExportError(
                f"{dataset}: no episodes of embodiment '{embodiment}'; it holds {', '.join(names)}"
            )
        return [embodiment]
    if split or len(names) == 1:
        return names
    raise ExportError(
        f"{dataset} holds {len(names)} embodiments ({', '.join(names)}) and a LeRobot dataset has one; "
        "choose one with --embodiment NAME or write each with --split-by-embodiment"
    )


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose another --out or delete it")
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    if partial.exists():
        raise ExportError(f"{partial} is left from an interrupted export; delete it and run again")


def lerobot_features(
    spec: EmbodimentSpec, fps: float, cameras: dict[str, tuple[int, int]], mode: str
) -> dict:
    """``info.json`` ``features``: state, action, cameras (``[h, w, 3]``), then LeRobot's index columns."""
    features: dict[str, Any] = {
        STATE_KEY: {"dtype": "float32", "shape": [spec.state_dim], "names": list(spec.state_names)},
        ACTION_KEY: {"dtype": "float32", "shape": [spec.action_dim], "names": list(spec.action_names)},
    }
    for cam, (h, w) in cameras.items():
        feature: dict[str, Any] = {
            "dtype": "video" if mode == "video" else "image",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
        }
        if mode == "video":
            # lerobot.datasets.video_utils.get_video_info of the encoded file
            feature["info"] = {
                "video.height": h,
                "video.width": w,
                "video.codec": "av1",
                "video.pix_fmt": VIDEO_PIX_FMT,
                "video.is_depth_map": False,
                "video.fps": int(round(fps)),
                "video.channels": 3,
                "has_audio": False,
            }
        features[camera_key(cam)] = feature
    features.update(json.loads(json.dumps(INDEX_FEATURES)))
    return features


def _hf_features(features: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face ``datasets`` feature metadata LeRobot's parquet carries (videos are not columns)."""
    out: dict[str, Any] = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            out[key] = {"_type": "Image"}
        elif ft["shape"] == [1]:
            out[key] = {"dtype": ft["dtype"], "_type": "Value"}
        else:
            out[key] = {
                "feature": {"dtype": ft["dtype"], "_type": "Value"},
                "length": ft["shape"][0],
                "_type": "List",
            }
    return out


def data_schema(features: dict[str, Any]) -> pa.Schema:
    fields = []
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            fields.append(pa.field(key, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        elif ft["shape"] == [1]:
            fields.append(pa.field(key, pa.from_numpy_dtype(np.dtype(ft["dtype"]))))
        else:
            fields.append(
                pa.field(key, _list_type(pa.from_numpy_dtype(np.dtype(ft["dtype"])), ft["shape"][0]))
            )
    metadata = {"huggingface": json.dumps({"info": {"features": _hf_features(features)}})}
    return pa.schema(fields, metadata=metadata)


def _file_mb(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


class _RollingFiles:
    """The (chunk, file) index of LeRobot's rolling files: a new file when the size limit would be passed
    (as ``_save_episode_data`` decides it: current size plus this episode at the file's average per frame)."""

    def __init__(self, limit_mb: float):
        self.limit_mb = limit_mb
        self.chunk = self.file = 0
        self.frames_in_file = 0
        self.open = False

    def needs_new(self, size_mb: float, frames: int) -> bool:
        if not self.open or self.frames_in_file == 0:
            return False
        return size_mb + size_mb / self.frames_in_file * frames >= self.limit_mb

    def advance(self) -> None:
        self.file += 1
        if self.file >= CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0
        self.frames_in_file = 0


@dataclass
class _Writer:
    """Writes episodes one after the other into a LeRobot v3.0 folder ``root``."""

    root: Path
    spec: EmbodimentSpec
    fps: float
    mode: str
    cameras: dict[str, tuple[int, int]]  # camera -> (height, width)
    features: dict[str, Any] = field(init=False)
    schema: pa.Schema = field(init=False)
    tasks: dict[str, int] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    episode_stats: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)
    frames: int = 0

    def __post_init__(self) -> None:
        self.features = lerobot_features(self.spec, self.fps, self.cameras, self.mode)
        self.schema = data_schema(self.features)
        self._data = _RollingFiles(DATA_FILES_SIZE_IN_MB)
        self._data_writer: pq.ParquetWriter | None = None
        self._videos = {cam: _RollingFiles(VIDEO_FILES_SIZE_IN_MB) for cam in self.cameras}
        self._video_files: dict[str, CameraFile] = {}
        self.encoder = EpisodeEncoder() if self.mode == "video" and self.cameras else None

    def _data_path(self) -> Path:
        return self.root / DATA_PATH.format(chunk_index=self._data.chunk, file_index=self._data.file)

    def _data_file(self, length: int) -> pq.ParquetWriter:
        if self._data_writer is not None and self._data.needs_new(_file_mb(self._data_path()), length):
            self._data_writer.close()
            self._data_writer = None
            self._data.advance()
        if self._data_writer is None:
            path = self._data_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self.schema)
            self._data.open = True
        return self._data_writer

    def _video_file(self, cam: str, length: int) -> CameraFile:
        rolling, current = self._videos[cam], self._video_files.get(cam)
        if current is not None and rolling.needs_new(current.size_mb, length):
            current.close()
            current = None
            rolling.advance()
        if current is None:
            path = self.root / VIDEO_PATH.format(
                video_key=camera_key(cam), chunk_index=rolling.chunk, file_index=rolling.file
            )
            assert self.encoder is not None
            current = CameraFile(path, self.fps, self.encoder, self.root / ".scratch")
            self._video_files[cam] = current
            rolling.open = True
        return current

    def add(self, episode: Episode) -> None:
        index = len(self.episodes)
        length = len(episode)
        task = episode.instruction
        task_index = self.tasks.setdefault(task, len(self.tasks))
        frame_index = np.arange(length, dtype=np.int64)
        columns: dict[str, Any] = {
            STATE_KEY: episode.state,
            ACTION_KEY: episode.action,
            # LeRobot stamps frame i at i / fps (float32)
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, index, dtype=np.int64),
            "index": np.arange(self.frames, self.frames + length, dtype=np.int64),
            "task_index": np.full(length, task_index, dtype=np.int64),
        }
        stats = {key: lstats.vector_stats(np.asarray(columns[key])) for key in columns}
        row: dict[str, Any] = {"episode_index": index, "tasks": [task], "length": length}
        arrays: dict[str, pa.Array] = {}
        for cam in self.cameras:
            frames = episode.frames[cam]
            stats[camera_key(cam)] = lstats.image_stats(frames)
            if self.mode == "images":
                arrays[camera_key(cam)] = pa.array(
                    [{"bytes": encode_png(f), "path": f"frame-{t:06d}.png"} for t, f in enumerate(frames)],
                    type=self.schema.field(camera_key(cam)).type,
                )
        writer = self._data_file(length)
        row["data/chunk_index"], row["data/file_index"] = self._data.chunk, self._data.file
        row["dataset_from_index"], row["dataset_to_index"] = self.frames, self.frames + length
        for name in self.schema.names:
            if name in arrays:
                continue
            value = np.asarray(columns[name])
            kind = self.schema.field(name).type
            if value.ndim == 2:
                flat = pa.array(value.reshape(-1), type=kind.value_type)
                arrays[name] = pa.FixedSizeListArray.from_arrays(flat, type=kind)
            else:
                arrays[name] = pa.array(value, type=kind)
        writer.write_table(pa.Table.from_arrays([arrays[n] for n in self.schema.names], schema=self.schema))
        self._data.frames_in_file += length
        if self.mode == "video":
            for cam in self.cameras:
                video = self._video_file(cam, length)
                start = video.frames / self.fps
                video.write(episode.frames[cam])
                self._videos[cam].frames_in_file += length
                prefix = f"videos/{camera_key(cam)}/"
                row[prefix + "chunk_index"] = self._videos[cam].chunk
                row[prefix + "file_index"] = self._videos[cam].file
                row[prefix + "from_timestamp"] = start
                row[prefix + "to_timestamp"] = video.frames / self.fps
        self.episodes.append(row)
        self.episode_stats.append(stats)
        self.frames += length

    def close(self) -> None:
        """Finish the open data and video files (once; again is a no-op)."""
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        videos, self._video_files = self._video_files, {}
        try:
            for video in videos.values():
                video.close()
        finally:
            if self.encoder is not None:
                self.encoder.close()
            shutil.rmtree(self.root / ".scratch", ignore_errors=True)

    def _stat_order(self) -> list[str]:
        return [k for k in self.features if k in self.episode_stats[0]]

    def finish(self) -> None:
        """Episode metadata, tasks, statistics and info.json (written last: its presence marks a dataset)."""
        self.close()
        order = self._stat_order()
        self._write_episodes(order)
        self._write_tasks()
        stats = {key: lstats.aggregate([s[key] for s in self.episode_stats]) for key in order}
        _write_json(self.root / "meta" / "stats.json", lstats.to_json(stats))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.spec.name,
            "total_episodes": len(self.episodes),
            "total_frames": self.frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
            "fps": int(self.fps) if float(self.fps).is_integer() else self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.mode == "video" and self.cameras else None,
            "features": self.features,
        }
        _write_json(self.root / "meta" / "info.json", info)

    def _write_episodes(self, order: list[str]) -> None:
        """One file of episode metadata; columns and Arrow types as LeRobot writes them."""
        columns: dict[str, pa.Array] = {
            "episode_index": pa.array([r["episode_index"] for r in self.episodes], pa.int64()),
            "tasks": pa.array([r["tasks"] for r in self.episodes], _list_type(pa.string())),
            "length": pa.array([r["length"] for r in self.episodes], pa.int64()),
        }
        for key in ("data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index"):
            columns[key] = pa.array([r[key] for r in self.episodes], pa.int64())
        for cam in self.cameras if self.mode == "video" else ():
            prefix = f"videos/{camera_key(cam)}/"
            for key, kind in (
                ("chunk_index", pa.int64()),
                ("file_index", pa.int64()),
                ("from_timestamp", pa.float64()),
                ("to_timestamp", pa.float64()),
            ):
                columns[prefix + key] = pa.array([r[prefix + key] for r in self.episodes], kind)
        for feature in order:
            integer = self.features[feature]["dtype"] == "int64"
            for stat in lstats.STAT_ORDER:
                values = [s[feature][stat].tolist() for s in self.episode_stats]
                leaf = pa.int64() if stat == "count" or (integer and stat in ("min", "max")) else pa.float64()
                depth = np.ndim(self.episode_stats[0][feature][stat])
                kind = leaf
                for _ in range(depth):
                    kind = _list_type(kind)
                columns[f"stats/{feature}/{stat}"] = pa.array(values, kind)
        for key in ("meta/episodes/chunk_index", "meta/episodes/file_index"):
            columns[key] = pa.array([0] * len(self.episodes), pa.int64())
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)

    def _write_tasks(self) -> None:
        """``task_index`` indexed by the task string, with the pandas metadata that makes the string the
        index when LeRobot reads it with ``pd.read_parquet`` (written without pandas, which is not ours)."""
        tasks = sorted(self.tasks, key=self.tasks.__getitem__)
        pandas_meta = {
            "index_columns": ["__index_level_0__"],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": None,
                    "field_name": "__index_level_0__",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.3.3",  # the pandas metadata version of LeRobot's own tasks.parquet
        }
        table = pa.table(
            {
                "task_index": pa.array([self.tasks[t] for t in tasks], pa.int64()),
                "__index_level_0__": pa.array(tasks, pa.string()),
            }
        ).replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
        pq.write_table(table, self.root / TASKS_PATH)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


def _frame_sizes(episode: Episode, cameras: tuple[str, ...], where: str) -> dict[str, tuple[int, int]]:
    sizes = {}
    for cam in cameras:
        if cam not in episode.frames:
            raise ExportError(
                f"{where}: episode '{episode.key}' has no '{cam}' frames; a LeRobot dataset needs every "
                "camera at every step"
            )
        sizes[cam] = tuple(int(s) for s in episode.frames[cam].shape[1:3])
    return sizes  # type: ignore[return-value]


def export_embodiment(
    dataset: Path,
    out: Path,
    embodiment: str,
    *,
    frames: FrameMode = "video",
    split: Split = "all",
    val_fraction: float = 0.0,
    manifest: dict[str, Any] | None = None,
) -> ExportReport:
    """Write the episodes of ``embodiment`` (of ``split``) as a LeRobot v3.0 dataset at ``out``.

    Written into ``out.partial`` and renamed at the end, so a failed export leaves nothing at ``out``.
    """
    if frames not in FRAME_MODES:
        raise ExportError(f"--frames must be one of {FRAME_MODES}, got '{frames}'")
    manifest = manifest if manifest is not None else load_manifest(dataset)
    spec = EmbodimentRegistry.from_dicts(manifest["embodiments"].values())[embodiment]
    with_frames = "observation" in dataset_views(manifest)
    cameras = tuple(spec.cameras) if with_frames else ()
    check_out(out)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    partial.mkdir(parents=True)
    writer: _Writer | None = None
    try:
        registry = EmbodimentRegistry.from_dicts(manifest["embodiments"].values())
        episodes = iter_episodes(
            dataset, registry, split, val_fraction, with_frames=with_frames, embodiment=embodiment
        )
        for episode in episodes:
            sizes = _frame_sizes(episode, cameras, str(dataset))
            if writer is None:
                writer = _Writer(partial, spec, spec.control_rate_hz, frames, sizes)
            elif sizes != writer.cameras:
                raise ExportError(
                    f"{dataset}: episode '{episode.key}' has frames of {sizes}, earlier ones {writer.cameras}; "
                    "a LeRobot feature has one shape"
                )
            writer.add(episode)
        if writer is None:
            raise ExportError(f"{dataset}: no episode of '{embodiment}' in the '{split}' split")
        writer.finish()
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):  # the first error is the one to report
                writer.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(partial, out)
    restarts = writer.encoder.restarts if writer.encoder is not None else 0
    return ExportReport(
        out, embodiment, len(writer.episodes), writer.frames, cameras, frames, len(writer.tasks), restarts
    )


def export(
    dataset: str | Path,
    out: str | Path,
    *,
    embodiment: str | None = None,
    split_by_embodiment: bool = False,
    frames: FrameMode = "video",
    split: Split = "all",
    val_fraction: float = 0.0,
) -> list[ExportReport]:
    """Export one embodiment to ``out``, or (``split_by_embodiment``) each to ``out/<embodiment>``."""
    dataset, out = Path(dataset), Path(out)
    if split not in ("all", "train", "val"):
        raise ExportError(f"--split must be all, train or val, got '{split}'")
    if split != "all" and not 0.0 < val_fraction < 1.0:
        raise ExportError(f"--split {split} needs --val-fraction in (0, 1), got {val_fraction}")
    manifest = load_manifest(dataset)
    names = choose_embodiments(dataset, manifest, embodiment, split_by_embodiment)
    if split_by_embodiment:
        check_out(out)
        targets = [(name, out / name) for name in names]
    else:
        targets = [(names[0], out)]
    return [
        export_embodiment(
            dataset,
            target,
            name,
            frames=frames,
            split=split,
            val_fraction=val_fraction,
            manifest=manifest,
        )
        for name, target in targets
    ]
