"""A small synthetic multi-embodiment dataset, written with the real :class:`DatasetWriter`.

Used by tests and benchmarks so that they exercise the same shard format as collected data without a
simulator: three embodiments with different state/action dims (one gripper dim each), two cameras and
shards of unequal sizes. Frames are random noise seeded by (episode, camera, t) so a reader can check it
decoded the right timestep.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import numpy as np

from actionprior.data.schema import Episode
from actionprior.data.video_frames import VideoSettings
from actionprior.data.writer import DatasetWriter
from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec

SYNTHETIC_CAMERAS = ("scene", "wrist")


def _spec(name: str, state_dim: int, action_dim: int, cameras: Sequence[str]) -> EmbodimentSpec:
    return EmbodimentSpec(
        name=name,
        state_names=tuple(f"q{i}" for i in range(state_dim - 1)) + ("gripper_width",),
        action_names=tuple(f"u{i}" for i in range(action_dim - 1)) + ("gripper",),
        control_mode="synthetic",
        control_rate_hz=20.0,
        cameras=tuple(cameras),
        gripper_action_dims=(action_dim - 1,),
        gripper_state_dims=(state_dim - 1,),
        description="synthetic test embodiment",
    )


def synthetic_registry(cameras: Sequence[str] = SYNTHETIC_CAMERAS) -> EmbodimentRegistry:
    """Three embodiments: 6/4-D, 9/7-D and 11/8-D state/action."""
    return EmbodimentRegistry(
        [
            _spec("synth_arm4", 6, 4, cameras),
            _spec("synth_arm7", 9, 7, cameras),
            _spec("synth_arm8", 11, 8, cameras),
        ]
    )


def synthetic_frame(seed: int, episode_index: int, camera_index: int, t: int, size: int) -> np.ndarray:
    """The frame that :func:`write_synthetic_dataset` stores for (episode, camera, t)."""
    rng = np.random.default_rng([seed, episode_index, camera_index, t])
    # Blocky noise: unique per timestep, yet compressible like a rendered frame.
    block = max(1, size // 8)
    coarse = rng.integers(0, 256, size=(-(-size // block), -(-size // block), 3), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(block, 0).repeat(block, 1)[:size, :size])


def make_episode(
    spec: EmbodimentSpec,
    key: str,
    length: int,
    rng: np.random.Generator,
    frames: dict[str, np.ndarray] | None = None,
    task: str = "reach",
) -> Episode:
    """A smooth random-walk episode with a binary gripper command and a gripper width that follows it."""
    state = np.cumsum(rng.normal(0.0, 0.05, size=(length, spec.state_dim)), axis=0) + rng.normal(
        size=spec.state_dim
    )
    action = np.cumsum(rng.normal(0.0, 0.1, size=(length, spec.action_dim)), axis=0)
    close_at = int(rng.integers(1, max(2, length)))
    gripper = np.where(np.arange(length) < close_at, -1.0, 1.0)
    action[:, spec.gripper_action_dims[0]] = gripper
    state[:, spec.gripper_state_dims[0]] = np.where(gripper < 0, 0.04, 0.01)
    return Episode(
        key=key,
        embodiment=spec.name,
        task=task,
        instruction=f"{task} the target with {spec.name}",
        state=state,
        action=action,
        success=True,
        control_rate_hz=spec.control_rate_hz,
        frames=frames or {},
    )


def write_synthetic_dataset(
    out_dir: str | Path,
    episodes_per_embodiment: int = 6,
    length_range: tuple[int, int] = (12, 40),
    shard_sizes: Sequence[int] = (5, 3, 7, 2),
    image_size: int = 16,
    cameras: Sequence[str] = SYNTHETIC_CAMERAS,
    with_frames: bool = True,
    embodiments: Sequence[str] | None = None,
    tasks: Sequence[str] = ("reach", "push"),
    seed: int = 0,
    video: VideoSettings | None = None,
) -> list[Episode]:
    """Write a dataset (shards, manifest, stats) to ``out_dir`` and return the episodes in write order.

    Episodes of all embodiments are interleaved and cut into shards whose sizes cycle through
    ``shard_sizes`` (unequal on purpose: readers must cope with uneven shards across ranks/workers).
    ``video``: frames stored as one video member per camera and episode (PNG frames when None).
    """
    registry = synthetic_registry(cameras)
    if embodiments is not None:
        registry = EmbodimentRegistry(registry[name] for name in embodiments)
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    for i in range(episodes_per_embodiment * len(registry)):
        spec = registry[i % len(registry)]
        length = int(rng.integers(length_range[0], length_range[1] + 1))
        frames = {}
        if with_frames:
            frames = {
                cam: np.stack([synthetic_frame(seed, i, c, t, image_size) for t in range(length)])
                for c, cam in enumerate(cameras)
            }
        key = f"ep{i:05d}_{spec.name}"
        episodes.append(make_episode(spec, key, length, rng, frames, task=tasks[i % len(tasks)]))
    writer = DatasetWriter(out_dir, registry, video=video)
    start, sizes = 0, cycle(shard_sizes)
    for shard_index in range(len(episodes)):
        if start >= len(episodes):
            break
        size = next(sizes)
        writer.add_shard(f"{shard_index:05d}", episodes[start : start + size])
        start += size
    writer.finalize()
    return episodes
