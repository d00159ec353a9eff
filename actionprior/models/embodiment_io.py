"""Embodiment-specific input and output layers around a shared transformer width.

Robots differ in how many state and action dims they have. Batch tensors are zero-padded to the
largest embodiment (``max_state_dim`` / ``max_action_dim``) and carry an ``embodiment_id`` per sample.

``io_mode="projection"`` (default): every embodiment has its own linear map in and out. The maps are
stored stacked and zero-padded (``[E, D_max, width]``), gathered by id and applied with one einsum, so a
batch mixing embodiments needs no Python loop over samples. A mask on the weights keeps the padded rows
at zero, so padded input dims cannot leak in and padded output dims are exactly zero.

``io_mode="padded"``: the paper's unified layout: one shared projection over the zero-padded vector, with
per-embodiment dim masks applied on the way in and out.

Both modes add a learned embodiment embedding that the encoder and decoder use as conditioning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

IOMode = Literal["projection", "padded"]
IO_MODES = ("projection", "padded")


def dim_masks(dims: Sequence[int], max_dim: int) -> Tensor:
    """Bool ``[E, max_dim]``: True on the first ``dims[e]`` entries of row ``e``."""
    return torch.arange(max_dim)[None, :] < torch.as_tensor(list(dims))[:, None]


class GatheredLinear(NamedTuple):
    """The masked per-sample weights of an :class:`EmbodimentLinear` for one batch of embodiment ids.

    Gathering and masking the stacked weights costs more than the product itself at small widths, so a
    sampler that applies the same layer at every flow step gathers once per chunk.
    """

    weight: Tensor  # [B, in, out], zero on padded input rows and output columns
    bias: Tensor  # [B, 1, out], zero on padded output dims

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``[B, T, in]`` -> ``[B, T, out]``; padded input dims are ignored, padded outputs are 0."""
        return torch.baddbmm(self.bias, x, self.weight)


class EmbodimentLinear(nn.Module):
    """``y = x @ W[id] + b[id]`` with per-embodiment weights; masked input and output dims.

    ``in_dims[e]`` / ``out_dims[e]`` are the real sizes of embodiment ``e`` (``None`` = the full width).
    With ``shared=True`` a single weight serves every embodiment (the padded layout); masks still apply.
    """

    def __init__(
        self,
        num_embodiments: int,
        in_features: int,
        out_features: int,
        in_dims: Sequence[int] | None = None,
        out_dims: Sequence[int] | None = None,
        shared: bool = False,
    ):
        super().__init__()
        e = num_embodiments
        in_dims = list(in_dims) if in_dims is not None else [in_features] * e
        out_dims = list(out_dims) if out_dims is not None else [out_features] * e
        for label, dims, limit in (("input", in_dims, in_features), ("output", out_dims, out_features)):
            if len(dims) != e or any(not 0 < d <= limit for d in dims):
                raise ValueError(f"EmbodimentLinear: {label} dims {dims} must be {e} sizes in 1..{limit}")
        self.shared = shared
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("in_mask", dim_masks(in_dims, in_features), persistent=False)
        self.register_buffer("out_mask", dim_masks(out_dims, out_features), persistent=False)
        n = 1 if shared else e
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n, out_features))
        # nn.Linear's default init, with fan-in = the embodiment's real input size.
        fan_in = [in_features] if shared else in_dims
        with torch.no_grad():
            for i, f in enumerate(fan_in):
                bound = 1.0 / math.sqrt(f)
                self.weight[i].uniform_(-bound, bound)
                self.bias[i].uniform_(-bound, bound)
        if not shared:
            with torch.no_grad():
                self.weight.mul_(self._weight_mask())
                self.bias.mul_(self.out_mask)

    def _weight_mask(self) -> Tensor:
        return (self.in_mask[:, :, None] & self.out_mask[:, None, :]).to(self.weight.dtype)

    def gather(self, embodiment_id: Tensor) -> GatheredLinear:
        """The masked weights of each sample's embodiment (see :class:`GatheredLinear`)."""
        mask = (self.in_mask[:, :, None] & self.out_mask[:, None, :]).to(self.weight.dtype)[embodiment_id]
        weight = self.weight[0] if self.shared else self.weight[embodiment_id]
        bias = self.bias[0] if self.shared else self.bias[embodiment_id]
        return GatheredLinear(weight * mask, (bias * self.out_mask[embodiment_id].to(bias.dtype))[:, None, :])

    def forward(self, x: Tensor, embodiment_id: Tensor) -> Tensor:
        """``x`` ``[B, ..., in_features]`` -> ``[B, ..., out_features]``, zero on padded output dims."""
        flat = x.reshape(x.shape[0], -1, self.in_features)
        return self.gather(embodiment_id)(flat).reshape(*x.shape[:-1], self.out_features)


class EmbodimentIO(nn.Module):
    """State/action projections into a shared width (and actions back out) plus an embodiment embedding.

    Only the projections a model needs are built: the encoder reads states and actions, the decoder
    reads (noisy) actions and writes actions.
    """

    def __init__(
        self,
        state_dims: Sequence[int],
        action_dims: Sequence[int],
        max_state_dim: int,
        max_action_dim: int,
        width: int,
        io_mode: IOMode = "projection",
        state_in: bool = True,
        action_in: bool = True,
        action_out: bool = False,
    ):
        super().__init__()
        if io_mode not in IO_MODES:
            raise ValueError(f"io_mode must be one of {IO_MODES}, got '{io_mode}'")
        if len(state_dims) != len(action_dims) or not state_dims:
            raise ValueError(
                f"state_dims {list(state_dims)} and action_dims {list(action_dims)} need one entry per embodiment"
            )
        self.num_embodiments = len(state_dims)
        self.io_mode = io_mode
        shared = io_mode == "padded"
        e = self.num_embodiments
        self.register_buffer("state_dim_mask_table", dim_masks(state_dims, max_state_dim), persistent=False)
        self.register_buffer(
            "action_dim_mask_table", dim_masks(action_dims, max_action_dim), persistent=False
        )
        self.state_in = (
            EmbodimentLinear(e, max_state_dim, width, in_dims=state_dims, shared=shared) if state_in else None
        )
        self.action_in = (
            EmbodimentLinear(e, max_action_dim, width, in_dims=action_dims, shared=shared)
            if action_in
            else None
        )
        self.action_out = (
            EmbodimentLinear(e, width, max_action_dim, out_dims=action_dims, shared=shared)
            if action_out
            else None
        )
        self.embedding = nn.Embedding(e, width)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def check_ids(self, embodiment_id: Tensor) -> None:
        if embodiment_id.dtype not in (torch.int64, torch.int32) or embodiment_id.ndim != 1:
            raise ValueError(
                f"embodiment_id must be an integer tensor [B], got {embodiment_id.dtype} {tuple(embodiment_id.shape)}"
            )
        if embodiment_id.numel() and (embodiment_id.min() < 0 or embodiment_id.max() >= self.num_embodiments):
            raise ValueError(
                f"embodiment_id values {sorted(set(embodiment_id.tolist()))} outside 0..{self.num_embodiments - 1} "
                "(the model was built for a different embodiment registry)"
            )

    def state_dim_mask(self, embodiment_id: Tensor) -> Tensor:
        return self.state_dim_mask_table[embodiment_id]

    def action_dim_mask(self, embodiment_id: Tensor) -> Tensor:
        return self.action_dim_mask_table[embodiment_id]

    def embed_state(self, state: Tensor, embodiment_id: Tensor) -> Tensor:
        assert self.state_in is not None, "this EmbodimentIO was built without a state projection"
        return self.state_in(state, embodiment_id)

    def embed_action(self, action: Tensor, embodiment_id: Tensor) -> Tensor:
        assert self.action_in is not None, "this EmbodimentIO was built without an action input projection"
        return self.action_in(action, embodiment_id)

    def project_action(self, hidden: Tensor, embodiment_id: Tensor) -> Tensor:
        assert self.action_out is not None, "this EmbodimentIO was built without an action output projection"
        return self.action_out(hidden, embodiment_id)

    def embodiment_embedding(self, embodiment_id: Tensor) -> Tensor:
        return self.embedding(embodiment_id)
