"""Per-embodiment, per-dimension normalisation statistics computed over a whole dataset."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

STAT_KEYS = ("mean", "std", "q01", "q99", "min", "max")


def array_stats(x: np.ndarray) -> dict[str, list[float]]:
    x = np.asarray(x, dtype=np.float64)
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }


def compute_stats(episodes: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Statistics from ``(embodiment, state [T, Ds], action [T, Da])`` triples.

    Exact quantiles over all transitions: a few million transitions of a few dozen dims fit in memory.
    """
    states: dict[str, list[np.ndarray]] = {}
    actions: dict[str, list[np.ndarray]] = {}
    for name, state, action in episodes:
        states.setdefault(name, []).append(state)
        actions.setdefault(name, []).append(action)
    out: dict[str, Any] = {}
    for name in sorted(states):
        s = np.concatenate(states[name])
        a = np.concatenate(actions[name])
        out[name] = {
            "num_episodes": len(states[name]),
            "num_transitions": int(len(s)),
            "state": array_stats(s),
            "action": array_stats(a),
        }
    return out


def stats_fingerprint(stats: Mapping[str, Any]) -> str:
    """A short hash of the statistics; checkpoints and policies compare it to refuse foreign stats."""
    payload = json.dumps(stats, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def merge_stats(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the statistics of several datasets; an embodiment may appear in only one of them.

    Refuses to merge the same embodiment from two datasets: exact quantiles cannot be merged, and
    silently picking one would change normalisation. Recompute stats over the union instead.
    """
    merged: dict[str, Any] = {}
    for part in parts:
        for name, value in part.items():
            if name in merged and merged[name] != value:
                raise ValueError(
                    f"embodiment '{name}' appears in several datasets with different statistics; "
                    "compute joint statistics with `actionprior data stats --recompute` over the union"
                )
            merged[name] = value
    return merged
