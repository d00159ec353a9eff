"""The flow-matching decoder: predicts the velocity of a noisy action chunk given flow time and ``z``.

Conditioning enters twice: a vector ``c = time_mlp(t) + z_proj(z) + embodiment_embedding`` modulates every
block through adaLN, and ``z`` (plus the embodiment embedding) is also a prefix token that the chunk tokens
attend to. Padded chunk steps are removed from attention as keys, so their (noise) values cannot change
the prediction at real steps.

Sampling splits the work by what it depends on: :meth:`FlowDecoder.condition` (z, embodiment: once per
chunk), :meth:`FlowDecoder.step_conditioning` (flow time: all Euler steps in one batched call) and
:meth:`FlowDecoder.velocity_at` (the noisy chunk: once per step). Training calls :meth:`forward`, which
chains the three and gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from actionprior.models.embodiment_io import EmbodimentIO, GatheredLinear, IOMode
from actionprior.models.transformer import AdaLNFinal, Modulation, TransformerBlock, sinusoidal_embedding


@dataclass
class DecoderContext:
    """The per-chunk conditioning of :class:`FlowDecoder` (see :meth:`FlowDecoder.condition`)."""

    cond: Tensor  # [B, width]: z and embodiment part of the adaLN conditioning vector
    prefix: Tensor  # [B, 1, width]: the z token the chunk attends to
    steps: Tensor  # [H, width]: chunk-step embeddings
    key_mask: Tensor | None  # [B, 1 + H]: False on padded chunk steps
    action_in: GatheredLinear  # this batch's embodiment projections, gathered once per chunk
    action_out: GatheredLinear


@dataclass
class StepConditioning:
    """The adaLN modulation of every block for one flow time (or, stacked on a leading dim, for several)."""

    blocks: list[Modulation]
    final: tuple[Tensor, Tensor]

    def __getitem__(self, i: int) -> StepConditioning:
        """Step ``i`` of a conditioning computed for stacked flow times ``[S, B]``."""
        return StepConditioning(
            [Modulation(*(m[i] for m in block)) for block in self.blocks],
            (self.final[0][i], self.final[1][i]),
        )


class FlowDecoder(nn.Module):
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
        dropout: float = 0.0,
    ):
        super().__init__()
        self.width, self.latent_dim, self.max_action_dim = width, latent_dim, max_action_dim
        self.io = EmbodimentIO(
            state_dims,
            action_dims,
            max_state_dim,
            max_action_dim,
            width,
            io_mode,
            state_in=False,
            action_in=True,
            action_out=True,
        )
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.z_cond = nn.Linear(latent_dim, width)
        self.z_token = nn.Linear(latent_dim, width)
        self.step_proj = nn.Linear(width, width)
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, dropout=dropout, cond_dim=width) for _ in range(depth)
        )
        self.final = AdaLNFinal(width, cond_dim=width)

    def condition(
        self, z: Tensor, embodiment_id: Tensor, chunk_len: int, step_mask: Tensor | None = None
    ) -> DecoderContext:
        """Everything that does not depend on flow time or the noisy chunk: computed once per chunk when
        sampling, instead of once per Euler step."""
        b = z.shape[0]
        if tuple(z.shape) != (b, self.latent_dim):
            raise ValueError(f"decoder: z must be [{b}, {self.latent_dim}], got {tuple(z.shape)}")
        self.io.check_ids(embodiment_id)
        emb = self.io.embodiment_embedding(embodiment_id)
        steps = self.step_proj(sinusoidal_embedding(torch.arange(chunk_len, device=z.device), self.width))
        key_mask = None
        if step_mask is not None:
            if tuple(step_mask.shape) != (b, chunk_len):
                raise ValueError(
                    f"decoder: step_mask must be [{b}, {chunk_len}], got {tuple(step_mask.shape)}"
                )
            key_mask = torch.cat(
                [torch.ones(b, 1, dtype=torch.bool, device=z.device), step_mask.bool()], dim=1
            )
        assert self.io.action_in is not None and self.io.action_out is not None
        return DecoderContext(
            cond=self.z_cond(z) + emb,
            prefix=(self.z_token(z) + emb)[:, None, :],
            steps=steps,
            key_mask=key_mask,
            action_in=self.io.action_in.gather(embodiment_id),
            action_out=self.io.action_out.gather(embodiment_id),
        )

    def step_conditioning(self, t: Tensor, ctx: DecoderContext) -> StepConditioning:
        """adaLN modulation for flow times ``t``: ``[B]`` (one step) or ``[S, B]`` (``S`` steps at once)."""
        b = ctx.cond.shape[0]
        if t.ndim not in (1, 2) or t.shape[-1] != b:
            raise ValueError(f"decoder: flow time t must be [{b}] or [steps, {b}], got {tuple(t.shape)}")
        # Flow time in [0, 1] is scaled so that the sinusoid frequencies resolve it (as diffusion steps do).
        cond = self.time_mlp(sinusoidal_embedding(t * 1000.0, self.width)) + ctx.cond
        return StepConditioning([block.modulate(cond) for block in self.blocks], self.final.modulate(cond))

    def velocity_at(self, x_t: Tensor, ctx: DecoderContext, step: StepConditioning) -> Tensor:
        """Velocity ``[B, H, A]`` at noisy chunk ``x_t`` for an already computed time conditioning."""
        tokens = ctx.action_in(x_t) + ctx.steps
        x = torch.cat([ctx.prefix, tokens], dim=1)
        for block, modulation in zip(self.blocks, step.blocks, strict=True):
            x = block(x, ctx.key_mask, modulation=modulation)
        return ctx.action_out(self.final(x[:, 1:], modulation=step.final))

    def velocity(self, x_t: Tensor, t: Tensor, ctx: DecoderContext) -> Tensor:
        """Velocity ``[B, H, A]`` (zero on the embodiment's padded action dims) at noisy chunk ``x_t``."""
        b, h, a = x_t.shape
        if a != self.max_action_dim or h != ctx.steps.shape[0] or b != ctx.cond.shape[0]:
            raise ValueError(
                f"decoder: x_t must be [{ctx.cond.shape[0]}, {ctx.steps.shape[0]}, {self.max_action_dim}], "
                f"got {tuple(x_t.shape)}"
            )
        if tuple(t.shape) != (b,):
            raise ValueError(f"decoder: flow time t must be [{b}], got {tuple(t.shape)}")
        return self.velocity_at(x_t, ctx, self.step_conditioning(t, ctx))

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        z: Tensor,
        embodiment_id: Tensor,
        step_mask: Tensor | None = None,
    ) -> Tensor:
        """Velocity ``[B, H, A]`` (zero on the embodiment's padded action dims) at noisy chunk ``x_t``."""
        if x_t.ndim != 3:
            raise ValueError(f"decoder: x_t must be [B, H, {self.max_action_dim}], got {tuple(x_t.shape)}")
        return self.velocity(x_t, t, self.condition(z, embodiment_id, x_t.shape[1], step_mask))
