"""LeRobot's feature statistics (``meta/stats.json`` and the ``stats/...`` columns of the episode metadata).

The same layout and arithmetic as LeRobot 0.4.4's ``lerobot.datasets.compute_stats`` so that its
normalisation (mean/std for ACT, min/max for Diffusion Policy) sees what LeRobot's own writer would give:

* per episode and feature: ``min``, ``max``, ``mean``, ``std`` (population), ``count`` (``[rows]``) and the
  quantiles ``q01``, ``q10``, ``q50``, ``q90``, ``q99``; vectors per dimension, cameras per RGB channel in
  [0, 1] with shape ``(3, 1, 1)`` over the frames LeRobot samples (all of them below 100, ~``len**0.75``
  above);
* the dataset's statistics aggregate the episodes' like ``aggregate_stats``: exact min/max/mean/std, and
  quantiles as the count-weighted mean of the episodes' quantiles.

One difference: LeRobot estimates an episode's quantiles from histograms, this module computes them
exactly (``np.quantile``); both agree to the histogram's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_ORDER = ("min", "max", "mean", "std", "count", *QUANTILES)


def sample_indices(length: int) -> np.ndarray:
    """The frames LeRobot's ``compute_stats.sample_indices`` reads of an episode (100 up to ~500 frames,
    ``length ** 0.75`` beyond, never more than 10,000)."""
    count = max(min(100, length), min(int(length**0.75), 10_000))
    return np.round(np.linspace(0, length - 1, count)).astype(int)


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of ``[T, D]`` values (or ``[T]``, giving shape-``(1,)`` statistics)."""
    x = values.reshape(len(values), -1)
    as_float = x.astype(np.float64)
    integer = np.issubdtype(values.dtype, np.integer)
    stats = {
        "min": x.min(0) if integer else as_float.min(0),
        "max": x.max(0) if integer else as_float.max(0),
        "mean": as_float.mean(0),
        "std": as_float.std(0),
        "count": np.array([len(x)], dtype=np.int64),
    }
    for key, q in QUANTILES.items():
        stats[key] = np.quantile(as_float, q, axis=0)
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics, in [0, 1] and shaped ``(3, 1, 1)``, of uint8 ``[T, H, W, 3]`` frames (the
    sampled ones; ``count`` is the number of frames, as in LeRobot)."""
    picked = frames[sample_indices(len(frames))]
    pixels = picked.reshape(-1, 3).astype(np.float64) / 255.0
    stats = {
        "min": pixels.min(0),
        "max": pixels.max(0),
        "mean": pixels.mean(0),
        "std": pixels.std(0),
        "count": np.array([len(picked)], dtype=np.int64),
    }
    for key, q in QUANTILES.items():
        stats[key] = np.quantile(pixels, q, axis=0)
    return {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in stats.items()}


def aggregate(per_episode: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feature's dataset statistics from its episodes' (LeRobot's ``aggregate_feature_stats``)."""
    counts = np.stack([s["count"] for s in per_episode]).astype(np.float64)  # [E, 1]
    means = np.stack([s["mean"] for s in per_episode])
    weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
    total = counts.sum()
    mean = (means * weights).sum(0) / total
    variance = ((np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2) * weights).sum(
        0
    ) / total
    out = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for key in QUANTILES:
        out[key] = (np.stack([s[key] for s in per_episode]) * weights).sum(0) / total
    return out


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {feature: {k: v.tolist() for k, v in s.items()} for feature, s in stats.items()}
