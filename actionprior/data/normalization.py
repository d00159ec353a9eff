"""Normalisation of states and actions per embodiment, shared by training and inference.

``quantile`` maps the 1st..99th percentile to [-1, 1] (robust to outliers); ``meanstd`` z-scores.
Gripper dimensions are mapped by their min/max to [-1, 1] in both modes: a binary open/close command
stays binary instead of becoming two arbitrary z-scores. Constant dimensions are centred, not scaled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from actionprior.data.stats import stats_fingerprint, stats_problems
from actionprior.embodiments import EmbodimentError, EmbodimentRegistry

NormMode = Literal["quantile", "meanstd"]
_EPS = 1e-6


class Normalizer:
    def __init__(self, stats: Mapping[str, Any], registry: EmbodimentRegistry, mode: NormMode = "quantile"):
        if mode not in ("quantile", "meanstd"):
            raise ValueError(f"normalisation mode must be 'quantile' or 'meanstd', got '{mode}'")
        missing = [n for n in registry.names if n not in stats]
        if missing:
            raise EmbodimentError(f"normalisation statistics have no entry for embodiments {missing}")
        self.stats = {n: stats[n] for n in registry.names}
        # Checked here too, not only where stats.json is read: statistics also arrive from checkpoints,
        # exported folders and user code, and a NaN quantile would turn every action into NaN silently.
        problems = stats_problems(self.stats)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise EmbodimentError(f"unusable normalisation statistics: {problems[0]}{more}")
        self.registry = registry
        self.mode: NormMode = mode
        self._affine: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for spec in registry:
            for kind, dim, grippers in (
                ("state", spec.state_dim, spec.gripper_state_dims),
                ("action", spec.action_dim, spec.gripper_action_dims),
            ):
                s = {k: np.asarray(v, dtype=np.float64) for k, v in self.stats[spec.name][kind].items()}
                if len(s["mean"]) != dim:
                    raise EmbodimentError(
                        f"statistics for '{spec.name}' {kind} have {len(s['mean'])} dims, spec has {dim}"
                    )
                if mode == "quantile":
                    center, half = (s["q99"] + s["q01"]) / 2, (s["q99"] - s["q01"]) / 2
                else:
                    center, half = s["mean"], s["std"]
                g = list(grippers)
                center[g] = (s["max"][g] + s["min"][g]) / 2
                half[g] = (s["max"][g] - s["min"][g]) / 2
                half = np.where(half < _EPS, 1.0, half)
                self._affine[(spec.name, kind)] = (center.astype(np.float32), half.astype(np.float32))

    @property
    def fingerprint(self) -> str:
        return stats_fingerprint({"mode": self.mode, "stats": self.stats})

    def _params(self, embodiment: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._affine[(embodiment, kind)]
        except KeyError:
            raise EmbodimentError(f"no normalisation for embodiment '{embodiment}' ({kind})") from None

    def affine(self, embodiment: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """``(center, scale)`` with ``raw = normalised * scale + center`` (float32, the embodiment's dims)."""
        return self._params(embodiment, kind)

    def tables(self, kind: str, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``center``, ``scale`` ``[E, width]`` in registry order for batched (un)normalisation of padded
        arrays; padded columns have center 0 and scale 1."""
        dims = [s.state_dim if kind == "state" else s.action_dim for s in self.registry]
        width = width or max(dims)
        center = np.zeros((len(dims), width), np.float32)
        scale = np.ones((len(dims), width), np.float32)
        for i, spec in enumerate(self.registry):
            center[i, : dims[i]], scale[i, : dims[i]] = self._params(spec.name, kind)
        return center, scale

    def normalize(self, embodiment: str, kind: str, x: np.ndarray) -> np.ndarray:
        center, half = self._params(embodiment, kind)
        return ((np.asarray(x, dtype=np.float32) - center) / half).astype(np.float32)

    def unnormalize(self, embodiment: str, kind: str, x: np.ndarray) -> np.ndarray:
        center, half = self._params(embodiment, kind)
        return (np.asarray(x, dtype=np.float32) * half + center).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "stats": self.stats, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], registry: EmbodimentRegistry) -> Normalizer:
        norm = cls(data["stats"], registry, data["mode"])
        if "fingerprint" in data and data["fingerprint"] != norm.fingerprint:
            raise EmbodimentError(
                f"normalisation fingerprint mismatch: stored {data['fingerprint']}, recomputed {norm.fingerprint}"
            )
        return norm
