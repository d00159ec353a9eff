"""Batched (torch) action normalisation for padded multi-embodiment tensors (the training metrics' units).

:class:`actionprior.data.normalization.Normalizer` is the single source of truth. This module copies its
per-embodiment affine tables (:meth:`~actionprior.data.normalization.Normalizer.tables`) into ``[E, A_max]``
buffers once, so a mixed batch is (un)normalised on the model's device without a loop.
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
        center, scale = normalizer.tables("action", a_max)
        mean = np.zeros_like(center)
        for i, spec in enumerate(registry):
            mean[i, : spec.action_dim] = normalizer.stats[spec.name]["action"]["mean"]
        center, scale, mean = (torch.from_numpy(t) for t in (center, scale, mean))
        mask = torch.from_numpy(registry.dim_masks("action"))
        mask = torch.nn.functional.pad(mask, (0, a_max - mask.shape[1]))
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
