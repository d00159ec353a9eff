"""Writes episodes into a dataset directory: shard pairs, manifest and statistics.

Each call to :meth:`DatasetWriter.add_shard` writes one ``traj-<name>.tar`` / ``obs-<name>.tar`` pair
atomically (temporary file + rename) and then rewrites the manifest atomically, so an interrupted
collection can resume by skipping the shards its manifest already lists.

A *trajectory-only* dataset (``views=("trajectory",)``, e.g. ``data collect --no-images``) writes the
``traj-`` tar alone; its manifest records ``"views": ["trajectory"]`` and its shard entries ``"obs": null``.
A manifest without ``views`` (every dataset written before the key existed) has both views.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds

from actionprior.data.checksums import FileSum, HashingReader, HashingWriter, expected_sum, mismatch
from actionprior.data.location import open_file, shown_path

# The readers live in reader.py; re-exported here for existing imports.
from actionprior.data.reader import (  # noqa: F401
    ALL_VIEWS,
    dataset_views,
    fingerprint_problems,
    load_manifest,
    load_stats,
    manifest_dims,
    read_dataset_json,
    stale_stats,
)
from actionprior.data.schema import (
    MANIFEST_FILE,
    OBS_PREFIX,
    SCHEMA_VERSION,
    STATS_FILE,
    TRAJ_PREFIX,
    DataError,
    Episode,
    decode_trajectory,
    episode_to_samples,
    trajectory_sample,
)
from actionprior.data.stats import compute_stats, stats_fingerprint, stats_problems
from actionprior.data.tario import iter_tar_samples
from actionprior.data.video_frames import VideoSettings
from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec


def atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


class DatasetWriter:
    def __init__(
        self,
        directory: str | Path,
        registry: EmbodimentRegistry,
        name: str | None = None,
        views: Sequence[str] = ALL_VIEWS,
        video: VideoSettings | None = None,
    ):
        """``video``: store each camera of an episode as one video member (the manifest records the settings);
        None: one PNG per frame."""
        self.dir = Path(directory)
        self.video = video
        self.dir.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.views = tuple(v for v in ALL_VIEWS if v in views)
        if "trajectory" not in self.views:
            raise DataError(f"{self.dir}: a dataset always has the trajectory view, got views {list(views)}")
        if (self.dir / MANIFEST_FILE).exists():
            self.manifest = load_manifest(self.dir)
            stored = dataset_views(self.manifest)
            if stored != self.views:
                raise DataError(
                    f"{self.dir / MANIFEST_FILE}: the dataset has views {list(stored)} but this run writes "
                    f"{list(self.views)}; resume with the same --no-images setting or use another --out"
                )
            stored_frames = self.manifest.get("frames")
            wanted_frames = video.record() if video is not None else None
            if stored_frames != wanted_frames and "observation" in self.views:
                raise DataError(
                    f"{self.dir / MANIFEST_FILE}: the dataset stores frames as {_frames_text(stored_frames)} but "
                    f"this run writes {_frames_text(wanted_frames)}; resume with the same --frames settings or "
                    "use another --out"
                )
        else:
            self.manifest = {
                "schema_version": SCHEMA_VERSION,
                "name": name or self.dir.name,
                "embodiments": {},
                "shards": [],
                "collection": {},
            }
            if self.views != ALL_VIEWS:
                self.manifest["views"] = list(self.views)
            elif video is not None:
                self.manifest["frames"] = video.record()

    def has_shard(self, name: str) -> bool:
        return any(s["name"] == name for s in self.manifest["shards"])

    def add_shard(
        self, name: str, episodes: Sequence[Episode], collection: dict[str, Any] | None = None
    ) -> None:
        """Write one shard pair. ``collection`` records bookkeeping (attempts, failures) for this shard."""
        if self.has_shard(name):
            raise DataError(f"shard '{name}' already exists in {self.dir}")
        for ep in episodes:
            check_episode_dims(ep, self.registry[ep.embodiment])
        observation = "observation" in self.views
        self.record_shard(write_shard_files(self.dir, name, episodes, observation, self.video), collection)

    def record_shard(self, entry: dict[str, Any], collection: dict[str, Any] | None = None) -> None:
        """List a shard pair already written by :func:`write_shard_files` (possibly in another process)."""
        if self.has_shard(entry["name"]):
            raise DataError(f"shard '{entry['name']}' already exists in {self.dir}")
        for ep in entry["episodes"]:
            spec = self.registry[ep["embodiment"]]
            self.manifest["embodiments"][spec.name] = spec.to_dict()
        self.manifest["shards"].append(entry)
        if collection:
            self.manifest["collection"][entry["name"]] = collection
        atomic_write_json(self.dir / MANIFEST_FILE, self.manifest)

    def finalize(self) -> dict[str, Any]:
        """Recompute dataset totals and ``stats.json`` from the trajectory shards on disk."""
        return write_stats(self.dir, self.manifest)


def check_episode_dims(ep: Episode, spec: EmbodimentSpec) -> None:
    if ep.state.shape[1] != spec.state_dim or ep.action.shape[1] != spec.action_dim:
        raise DataError(
            f"episode {ep.key}: state/action dims {ep.state.shape[1]}/{ep.action.shape[1]} "
            f"do not match embodiment '{spec.name}' ({spec.state_dim}/{spec.action_dim})"
        )


def write_shard_files(
    directory: str | Path,
    name: str,
    episodes: Sequence[Episode],
    observation: bool = True,
    video: VideoSettings | None = None,
) -> dict[str, Any]:
    """Write the ``traj-``/``obs-`` tar pair of one shard atomically; returns its manifest entry, with the
    size and SHA-256 of each file (``checksums``).

    ``observation=False`` writes the ``traj-`` tar only (a trajectory-only dataset; the entry's ``obs`` is None).
    ``video``: the ``obs-`` tar holds one video member per camera and episode instead of PNG frames.

    Separate from :class:`DatasetWriter` so that worker processes can encode and write shards in parallel
    while one process alone owns the manifest (``DatasetWriter.record_shard``). Every writer of shards (collect,
    import, the synthetic dataset) goes through here, and every file it writes goes through
    :func:`_write_hashed`: the one place where checksums are computed.
    """
    directory = Path(directory)
    files = {"traj": f"{TRAJ_PREFIX}{name}.tar"}
    if observation:
        files["obs"] = f"{OBS_PREFIX}{name}.tar"
    sums = {
        field: _write_hashed(
            directory / (file + ".tmp"), _tar_of(episodes, 0 if field == "traj" else 1, video)
        )
        for field, file in files.items()
    }
    for file in files.values():  # published together, once both are complete
        os.replace(directory / (file + ".tmp"), directory / file)
    return {
        "name": name,
        "traj": files["traj"],
        "obs": files.get("obs"),
        "episodes": [
            {"key": ep.key, "embodiment": ep.embodiment, "task": ep.task, "length": len(ep)}
            for ep in episodes
        ],
        "num_episodes": len(episodes),
        "num_transitions": sum(len(ep) for ep in episodes),
        "checksums": {field: s.to_dict() for field, s in sums.items()},
    }


def _tar_of(
    episodes: Sequence[Episode], view: int, video: VideoSettings | None = None
) -> Callable[[BinaryIO], None]:
    """Writes the trajectory (``view=0``) or observation (1) samples of ``episodes`` as a WebDataset tar."""

    def write(stream: BinaryIO) -> None:
        with wds.TarWriter(stream) as sink:
            for ep in episodes:
                # The trajectory tar never encodes a frame.
                sink.write(trajectory_sample(ep) if view == 0 else episode_to_samples(ep, video)[1])

    return write


def _frames_text(record: dict[str, Any] | None) -> str:
    if record is None or record.get("storage") == "png":
        return "PNG"
    quality = "lossless" if record.get("lossless") else f"CRF {record.get('crf')}"
    return f"video ({record.get('encoder')}, {quality}, GOP {record.get('gop')})"


def _write_hashed(path: Path, write: Callable[[BinaryIO], None]) -> FileSum:
    """Create ``path`` with ``write(stream)`` and return its size and SHA-256, hashed as it is written."""
    with open(path, "wb") as raw:
        stream = HashingWriter(raw)
        write(stream)  # type: ignore[arg-type]
        stream.flush()
    return stream.result()


def iter_trajectories(directory: Path, manifest: dict[str, Any]) -> Iterable[tuple[str, Any, Any]]:
    """``(embodiment, state, action)`` of every episode the manifest lists, streamed from the trajectory
    shards, each checked against its recorded checksum (statistics of a damaged shard are never written)."""
    for shard in manifest["shards"]:
        path = shown_path(directory, shard["traj"])
        expected = expected_sum(shard, "traj")
        with open_file(directory, shard["traj"]) as raw:
            stream = HashingReader(raw)
            for sample in iter_tar_samples(stream, path, verify=expected is None):
                state, action, meta = decode_trajectory(sample, f"{path}:{sample['__key__']}")
                yield meta["embodiment"], state, action
        problem = mismatch(stream.result(), expected) if expected is not None else None
        if problem:
            raise DataError(f"{path}: {problem}")


def write_stats(directory: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute and write ``stats.json``; refuses statistics that are not finite or beyond the sanity cap
    (``limits.MAX_ABS_VALUE``) rather than writing them, naming the embodiment and dim."""
    directory = Path(directory)
    manifest = manifest or load_manifest(directory)
    stats = compute_stats(iter_trajectories(directory, manifest))
    problems = stats_problems(stats)
    if problems:
        raise DataError(
            f"{directory}: refusing to write {STATS_FILE}: {problems[0]} (run `actionprior data check {directory}` "
            "to find the episode)"
        )
    payload = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": stats_fingerprint(stats),
        "embodiments": stats,
    }
    atomic_write_json(directory / STATS_FILE, payload)
    manifest["num_episodes"] = sum(s["num_episodes"] for s in manifest["shards"])
    manifest["num_transitions"] = sum(s["num_transitions"] for s in manifest["shards"])
    atomic_write_json(directory / MANIFEST_FILE, manifest)
    return payload
