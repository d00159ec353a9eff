"""In-memory batches with the shapes of docs/contracts.md, for timing training without a data pipeline.

Values are random (throughput does not depend on them) but every mask and padding rule of the contract
holds: per-embodiment real dims, a few windows that run past the episode end, first steps without
history, an absent camera now and then. A fixed set of distinct batches is built once on the CPU and
cycled, so the measured step contains the host-to-device copy but no data loading.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import cycle
from typing import Any

import torch
from torch.utils.data import IterableDataset

from actionprior.embodiments import EmbodimentRegistry

INSTRUCTIONS = (
    "pick up the red cube and place it in the bin",
    "open the drawer",
    "push the puck to the goal",
    "stack the red block on the green block",
)


def make_sample(
    index: int,
    registry: EmbodimentRegistry,
    chunk_len: int,
    history_len: int,
    cameras: int,
    image_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    e = index % len(registry)
    spec = registry[e]
    s_max, a_max = registry.max_state_dim, registry.max_action_dim

    def padded(steps: int, dim: int, full: int) -> torch.Tensor:
        x = torch.zeros(steps, full)
        x[:, :dim] = torch.randn(steps, dim, generator=g)
        return x

    step_mask = torch.ones(chunk_len, dtype=torch.bool)
    step_mask[-1] = index % 4 != 3  # some windows run past the episode end
    camera_mask = torch.ones(cameras, dtype=torch.bool)
    if cameras > 1:
        camera_mask[-1] = index % 5 != 4  # a camera missing now and then
    images = torch.randint(0, 256, (cameras, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    images[~camera_mask] = 0
    sample = {
        "embodiment_id": torch.tensor(e),
        "state": padded(chunk_len, spec.state_dim, s_max),
        "action": padded(chunk_len, spec.action_dim, a_max).clamp(-1, 1),
        "step_mask": step_mask,
        "state_dim_mask": torch.arange(s_max) < spec.state_dim,
        "action_dim_mask": torch.arange(a_max) < spec.action_dim,
        "images": images,
        "camera_mask": camera_mask,
        "instruction": INSTRUCTIONS[index % len(INSTRUCTIONS)],
    }
    sample["current_state"] = sample["state"][0]  # the state token's input, as the batch contract cuts it
    if history_len:
        history_mask = torch.ones(history_len, dtype=torch.bool)
        history_mask[:] = index % 6 != 0  # the first step of an episode has no history
        sample["history_state"] = padded(history_len, spec.state_dim, s_max)
        sample["history_action"] = padded(history_len, spec.action_dim, a_max)
        sample["history_mask"] = history_mask
    return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        key: [s[key] for s in samples]
        if isinstance(samples[0][key], str)
        else torch.stack([s[key] for s in samples])
        for key in samples[0]
    }


def make_batch(
    registry: EmbodimentRegistry,
    batch_size: int,
    chunk_len: int,
    history_len: int = 0,
    cameras: int = 2,
    image_size: int = 64,
    seed: int = 0,
    start: int = 0,
    with_images: bool = True,
) -> dict[str, Any]:
    samples = [
        make_sample(start + i, registry, chunk_len, history_len, cameras, image_size, seed)
        for i in range(batch_size)
    ]
    batch = collate(samples)
    if not with_images:  # the trajectory view (Stage 1) has no frames or instructions
        for key in ("images", "camera_mask", "instruction"):
            batch.pop(key)
    return batch


class CycledBatches(IterableDataset):
    """``distinct`` pre-built batches, repeated forever (use with ``DataLoader(batch_size=None)``)."""

    def __init__(self, distinct: int = 4, **batch_kwargs: Any):
        self.batches = [
            make_batch(start=i * batch_kwargs["batch_size"], **batch_kwargs) for i in range(distinct)
        ]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return cycle(self.batches)
