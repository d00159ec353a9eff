"""Shared builders for the evaluation tests: a tiny Stage 2 checkpoint and matching raw observations.

The checkpoint is written the way training writes it (``VLAModule.on_save_checkpoint``), with untrained
weights: these tests check the inference plumbing, not the policy's quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from vla_builders import TINY_PRIOR

from actionprior.data.normalization import Normalizer
from actionprior.data.stats import compute_stats
from actionprior.data.synthetic import synthetic_registry
from actionprior.embodiments import EmbodimentRegistry

IMAGE, CHUNK, HISTORY = 32, 4, 3
CAMERAS = ("scene", "wrist")


def tiny_stats(registry: EmbodimentRegistry, seed: int = 0, scale: float = 3.0) -> dict[str, Any]:
    """Statistics far from the unit scale, so that forgetting to un-normalise shows in the numbers."""
    rng = np.random.default_rng(seed)
    return compute_stats(
        (
            s.name,
            5 + scale * rng.normal(size=(64, s.state_dim)),
            -2 + scale * rng.normal(size=(64, s.action_dim)),
        )
        for s in registry
    )


def write_tiny_checkpoint(
    path: Path, use_history: bool = True, registry: EmbodimentRegistry | None = None, cameras=CAMERAS
) -> Path:
    """Untrained weights; ``registry`` defaults to the synthetic embodiments (the simulator ones for sim tests)."""
    from actionprior.models.action_prior import ActionPriorConfig
    from actionprior.models.vla import VLAConfig
    from actionprior.training.vla_module import VLAModule

    registry = registry or synthetic_registry()
    normalizer = Normalizer(tiny_stats(registry), registry)
    torch.manual_seed(0)
    module = VLAModule(
        vla=VLAConfig(backbone="tiny:qwen3_vl", head_hidden=32, use_history=use_history),
        prior=ActionPriorConfig(**TINY_PRIOR),
        chunk_len=CHUNK,
        camera_names=list(cameras),
        embodiments=registry.to_dicts(),
        normalization=normalizer.to_dict(),
    )
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def raw_observation(embodiment: str = "synth_arm4", seed: int = 0, cameras=CAMERAS) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    dim = synthetic_registry()[embodiment].state_dim
    return {
        "embodiment": embodiment,
        "state": (5 + 3 * rng.normal(size=dim)).astype(np.float32),
        "images": {c: rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8) for c in cameras},
        "instruction": "pick up the red cube",
    }
