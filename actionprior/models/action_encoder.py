"""The action encoder: a window of interleaved ``s_0, a_0, s_1, a_1, ...`` tokens -> one latent ``z``.

A learned summary token (plus the embodiment embedding) is prepended; its output, projected to
``latent_dim`` and layer-normalised, is ``z``. The same encoder compresses history windows in Stage 2.
Padded steps (``step_mask`` False) are removed from attention as keys, so their content cannot reach ``z``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from actionprior.models.embodiment_io import EmbodimentIO, IOMode
from actionprior.models.transformer import TransformerBlock, sinusoidal_embedding


class ActionEncoder(nn.Module):
    def __init__(
        self,
        state_dims: Sequence[int],
        action_dims: Sequence[int],
        max_state_dim: int,
        max_action_dim: int,
        width: int,
        depth: int,
        heads: int,
        latent_dim: int,
        io_mode: IOMode = "projection",
        use_state: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.width, self.latent_dim, self.use_state = width, latent_dim, use_state
        self.max_state_dim, self.max_action_dim = max_state_dim, max_action_dim
        self.io = EmbodimentIO(
            state_dims,
            action_dims,
            max_state_dim,
            max_action_dim,
            width,
            io_mode,
            state_in=use_state,
            action_in=True,
        )
        self.summary_token = nn.Parameter(torch.randn(width) * 0.02)
        self.type_embedding = nn.Embedding(2, width)  # 0 = state token, 1 = action token
        nn.init.normal_(self.type_embedding.weight, std=0.02)
        self.time_proj = nn.Linear(width, width)  # learned map of sinusoidal step features
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.to_latent = nn.Linear(width, latent_dim)
        # z is layer-normalised (no affine): a fixed scale keeps Stage 2's alignment loss ||z' - sg(z)||^2
        # well-conditioned and stops z drifting in norm while the decoder is trained.
        self.latent_norm = nn.LayerNorm(latent_dim, elementwise_affine=False)

    def forward(
        self, state: Tensor | None, action: Tensor, step_mask: Tensor, embodiment_id: Tensor
    ) -> Tensor:
        b, h, _ = action.shape
        self._check(state, action, step_mask, embodiment_id)
        self.io.check_ids(embodiment_id)
        steps = self.time_proj(
            sinusoidal_embedding(torch.arange(h, device=action.device), self.width)
        )  # [H, W]
        a_tok = self.io.embed_action(action, embodiment_id) + self.type_embedding.weight[1] + steps
        if self.use_state:
            assert state is not None  # checked above
            s_tok = self.io.embed_state(state, embodiment_id) + self.type_embedding.weight[0] + steps
            tokens = torch.stack([s_tok, a_tok], dim=2).reshape(
                b, 2 * h, self.width
            )  # s_0, a_0, s_1, a_1, ...
            token_mask = step_mask.repeat_interleave(2, dim=1)
        else:
            tokens, token_mask = a_tok, step_mask
        summary = (self.summary_token + self.io.embodiment_embedding(embodiment_id))[:, None, :]
        x = torch.cat([summary, tokens], dim=1)
        # The summary token is always visible, so no query ever attends to an empty key set.
        key_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), token_mask.bool()], dim=1)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.latent_norm(self.to_latent(self.norm(x[:, 0])))

    def _check(self, state: Tensor | None, action: Tensor, step_mask: Tensor, embodiment_id: Tensor) -> None:
        if action.ndim != 3 or action.shape[-1] != self.max_action_dim:
            raise ValueError(
                f"encoder: action must be [B, H, {self.max_action_dim}], got {tuple(action.shape)}"
            )
        b, h, _ = action.shape
        if self.use_state and (state is None or tuple(state.shape) != (b, h, self.max_state_dim)):
            raise ValueError(
                f"encoder: state must be [{b}, {h}, {self.max_state_dim}], got {None if state is None else tuple(state.shape)}"
            )
        if tuple(step_mask.shape) != (b, h):
            raise ValueError(f"encoder: step_mask must be [{b}, {h}], got {tuple(step_mask.shape)}")
        if tuple(embodiment_id.shape) != (b,):
            raise ValueError(f"encoder: embodiment_id must be [{b}], got {tuple(embodiment_id.shape)}")
