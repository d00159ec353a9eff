"""A second action head, in one file: a plain MLP that regresses the whole chunk from ``z'``.

Nothing else in the code base knows it. Importing this module registers it under ``mlp_regression``, and that
is all the VLA, ``VLAModule``, checkpoints, export, ``Policy`` and the server need
(``tests/test_action_head_seam.py``). It has no latent (``encode``): no auxiliary terms, no history token, no
Stage 1 prior; and no guided sampling: ``rtc`` execution is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from actionprior.models.action_head import HeadSettings, register_head
from actionprior.models.flow_matching import masked_mse


@dataclass
class MLPHeadConfig(HeadSettings):
    """``cond_dim``: the width of ``z'``; ``hidden``: the MLP's hidden width."""

    cond_dim: int = field(default=16, metadata={"architecture": True})
    hidden: int = field(default=64, metadata={"architecture": True})


@register_head("mlp_regression", MLPHeadConfig)
class MLPRegressionHead(nn.Module):
    def __init__(self, config: MLPHeadConfig):
        super().__init__()
        self.config = c = config
        self.embodiment = nn.Embedding(len(c.action_dims), c.cond_dim)
        self.net = nn.Sequential(
            nn.Linear(c.cond_dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.chunk_len * c.max_action_dim)
        )
        mask = torch.arange(c.max_action_dim)[None, :] < torch.tensor(c.action_dims)[:, None]
        self.register_buffer("dim_mask", mask, persistent=False)

    @property
    def cond_dim(self) -> int:
        return self.config.cond_dim

    def _chunk(self, cond: Tensor, embodiment_id: Tensor) -> Tensor:
        c = self.config
        out = self.net(cond + self.embodiment(embodiment_id)).view(-1, c.chunk_len, c.max_action_dim)
        return out * self.dim_mask[embodiment_id][:, None, :].to(out.dtype)

    def loss(
        self,
        cond: Tensor,
        action: Tensor,
        step_mask: Tensor,
        action_dim_mask: Tensor,
        embodiment_id: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return masked_mse(self._chunk(cond, embodiment_id), action, step_mask.bool(), action_dim_mask.bool())

    def sample(
        self,
        cond: Tensor,
        embodiment_id: Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        step_mask: Tensor | None = None,
    ) -> Tensor:
        return self._chunk(cond, embodiment_id)
