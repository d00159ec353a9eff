"""The current proprioceptive state as one VLM token.

The paper's VLA sees the robot only through its cameras (and, optionally, the history token, which holds
the *past* states). A policy that must infer from two 64-px frames where its own hand is cannot aim it: in
closed loop that is the difference between reaching a drawer handle and wandering above it (measured in
docs/policy_quality.md). Every small-data policy users know (ACT, Diffusion Policy, pi0) reads the state.

The state is normalised and zero-padded like every batch tensor (docs/contracts.md); a per-embodiment
linear map (masked to the robot's real dims) takes it to the VLM width, an MLP follows.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from actionprior.models.embodiment_io import EmbodimentLinear


class StateToken(nn.Module):
    """``state [B, max_state_dim]`` (normalised, padded) -> one token ``[B, width]`` per sample."""

    def __init__(self, state_dims: Sequence[int], max_state_dim: int, width: int):
        super().__init__()
        self.project = EmbodimentLinear(len(state_dims), max_state_dim, width, in_dims=state_dims)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(width, width))

    def forward(self, state: Tensor, embodiment_id: Tensor) -> Tensor:
        return self.mlp(self.project(state, embodiment_id))
