"""A small pre-norm transformer block shared by the action encoder and the flow decoder.

Attention goes through ``F.scaled_dot_product_attention`` so PyTorch picks the fastest kernel available
(flash / memory-efficient on GPU, a fused kernel on CPU). With ``cond_dim`` set, the block is
conditioned by adaptive LayerNorm (shift, scale and a zero-initialised gate per sub-layer, as in DiT's
adaLN-Zero): each block starts as the identity, which keeps early flow-matching training stable.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """``[...]`` float positions or times -> ``[..., dim]`` sin/cos features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        # key_mask [B, N] True = attend; broadcast over heads and queries.
        attn_mask = key_mask[:, None, None, :] if key_mask is not None else None
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Modulation(NamedTuple):
    """adaLN parameters of one conditioned block, each ``[..., B, 1, width]`` (``scale`` already ``1 + scale``)."""

    shift1: Tensor
    scale1: Tensor
    gate1: Tensor
    shift2: Tensor
    scale2: Tensor
    gate2: Tensor


def _split_modulation(params: Tensor, parts: int) -> list[Tensor]:
    """``[..., B, parts * width]`` -> ``parts`` tensors ``[..., B, 1, width]``."""
    return list(params.unsqueeze(-2).chunk(parts, dim=-1))


class TransformerBlock(nn.Module):
    """Pre-norm attention + MLP; adaLN-Zero conditioning on a ``[B, cond_dim]`` vector when ``cond_dim`` is set.

    ``modulate(cond)`` and ``forward(x, mask, modulation=...)`` are split so that a sampler can compute the
    conditioning of every flow-matching step in one batched call (it only depends on flow time and ``z``),
    leaving the per-step work to the token path.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.conditioned = cond_dim is not None
        affine = not self.conditioned
        self.norm1 = nn.LayerNorm(width, elementwise_affine=affine)
        self.attn = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=affine)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.drop = nn.Dropout(dropout)
        if self.conditioned:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * width))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

    def modulate(self, cond: Tensor) -> Modulation:
        """adaLN parameters for conditioning vectors ``[..., B, cond_dim]``."""
        if not self.conditioned:
            raise ValueError("this TransformerBlock is not conditioned (built without cond_dim)")
        shift1, scale1, gate1, shift2, scale2, gate2 = _split_modulation(self.modulation(cond), 6)
        return Modulation(shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2)

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None = None,
        cond: Tensor | None = None,
        modulation: Modulation | None = None,
    ) -> Tensor:
        if not self.conditioned:
            x = x + self._dropout(self.attn(self.norm1(x), key_mask))
            return x + self._dropout(self.mlp(self.norm2(x)))
        if modulation is None:
            if cond is None:
                raise ValueError(
                    "this TransformerBlock is conditioned: pass cond [B, cond_dim] or modulation"
                )
            modulation = self.modulate(cond)
        m = modulation
        h = torch.addcmul(m.shift1, self.norm1(x), m.scale1)
        x = torch.addcmul(x, m.gate1, self._dropout(self.attn(h, key_mask)))
        h = torch.addcmul(m.shift2, self.norm2(x), m.scale2)
        return torch.addcmul(x, m.gate2, self._dropout(self.mlp(h)))

    def _dropout(self, x: Tensor) -> Tensor:
        # Skipping the no-op module call matters when sampling runs this block at every flow step.
        return self.drop(x) if self.training and self.drop.p > 0 else x


class AdaLNFinal(nn.Module):
    """Final norm of a conditioned stack: LayerNorm modulated by ``cond`` (zero-initialised)."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def modulate(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(shift, 1 + scale)``, each ``[..., B, 1, width]``."""
        shift, scale = _split_modulation(self.modulation(cond), 2)
        return shift, 1 + scale

    def forward(
        self, x: Tensor, cond: Tensor | None = None, modulation: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        if modulation is None:
            if cond is None:
                raise ValueError("AdaLNFinal: pass cond [B, cond_dim] or modulation")
            modulation = self.modulate(cond)
        shift, scale = modulation
        return torch.addcmul(shift, self.norm(x), scale)
