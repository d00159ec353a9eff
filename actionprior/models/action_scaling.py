"""Batched (torch) action normalisation for padded multi-embodiment tensors.

:class:`actionprior.data.normalization.Normalizer` is the single source of truth (numpy, one embodiment
at a time). This module reads its affine maps once, through its public ``normalize``/``unnormalize``,
into ``[E, A_max]`` buffers, so a mixed batch is (un)normalised on the model's device without a loop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from actionprior.data.normalization import Normalizer


class ActionScaler(nn.Module):
    """``raw = normalised * scale[id] + center[id]``; padded dims stay zero in both directions."""

    def __init__(self, normalizer: Normalizer, max_action_dim: int | None = None):
        super().__init__()
        registry = normalizer.registry
        a_max = max_action_dim or registry.max_action_dim
        if a_max < registry.max_action_dim:
            raise ValueError(
                f"max_action_dim {a_max} < the registry's largest action dim {registry.max_action_dim}"
            )
        e = len(registry)
        center = torch.zeros(e, a_max)
        scale = torch.ones(e, a_max)
        mean = torch.zeros(e, a_max)
        mask = torch.zeros(e, a_max, dtype=torch.bool)
        for i, spec in enumerate(registry):
            d = spec.action_dim
            c = normalizer.unnormalize(spec.name, "action", np.zeros(d, np.float32))
            center[i, :d] = torch.from_numpy(c)
            scale[i, :d] = torch.from_numpy(
                normalizer.unnormalize(spec.name, "action", np.ones(d, np.float32)) - c
            )
            mean[i, :d] = torch.as_tensor(normalizer.stats[spec.name]["action"]["mean"], dtype=torch.float32)
            mask[i, :d] = True
        # Not persistent: they are derived from the normaliser that travels in the checkpoint anyway.
        self.register_buffer("center", center, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("mean_action", mean, persistent=False)
        self.register_buffer("dim_mask", mask, persistent=False)

    def _view(self, table: Tensor, embodiment_id: Tensor, x: Tensor) -> Tensor:
        rows = table[embodiment_id].to(x.dtype)
        return rows.view(rows.shape[0], *(1,) * (x.ndim - 2), rows.shape[-1])

    def unnormalize(self, x: Tensor, embodiment_id: Tensor) -> Tensor:
        """``x`` ``[B, ..., A_max]`` normalised -> raw units (zero on padded dims)."""
        mask = self._view(self.dim_mask, embodiment_id, x)
        return (
            x * self._view(self.scale, embodiment_id, x) + self._view(self.center, embodiment_id, x)
        ) * mask

    def normalize(self, x: Tensor, embodiment_id: Tensor) -> Tensor:
        mask = self._view(self.dim_mask, embodiment_id, x)
        return (
            (x - self._view(self.center, embodiment_id, x)) / self._view(self.scale, embodiment_id, x) * mask
        )

    def mean_chunk(self, embodiment_id: Tensor, chunk_len: int) -> Tensor:
        """The per-embodiment mean action (raw units) repeated over a chunk: ``[B, chunk_len, A_max]``."""
        return self.mean_action[embodiment_id][:, None, :].expand(-1, chunk_len, -1)
