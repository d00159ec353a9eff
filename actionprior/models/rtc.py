"""Real-time chunking (RTC; Black, Galliker & Levine 2025, arXiv 2506.07339): the maths of guided inpainting.

While a chunk executes, the next one is generated from a newer observation. The first ``frozen`` actions of the
new chunk cover steps that will already have been executed (from the previous chunk) by the time it arrives;
the rest of the overlap with the previous chunk should agree with it, so that switching chunks does not jump.
RTC integrates the flow with the velocity pulled towards the previous chunk (pseudo-inverse guidance, PiGDM)::

    x1_hat = x_t + (1 - t) v(x_t, t)                    (the denoised estimate at flow time t)
    g      = ((Y - x1_hat) * W)^T  d x1_hat / d x_t     (a vector-Jacobian product)
    v_rtc  = v + min(beta, (1 - t) / (t r_t^2)) g,      r_t^2 = (1 - t)^2 / (t^2 + (1 - t)^2)

with ``t = 1`` data and ``x_t = (1 - t) noise + t action`` (our convention, the paper's as well). ``W`` is the
soft mask: 1 on the frozen prefix, decaying exponentially over the rest of the overlap, 0 after it. Here the
frozen prefix is in addition held exactly on the previous chunk's actions (inpainting by replacement along the
straight noise-to-target path), so the returned chunk starts with exactly the actions that were executed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

MaskKind = Literal["soft", "hard"]
MASK_KINDS: tuple[str, ...] = get_args(MaskKind)
DEFAULT_MAX_GUIDANCE = 5.0  # the paper's beta
# actionprior.inference.execution repeats these two torch-free, for clients without torch (a test pins them).


def rtc_weights(chunk_len: int, frozen: Tensor, overlap: Tensor, kind: MaskKind = "soft") -> Tensor:
    """The guidance mask ``W`` ``[B, chunk_len]`` for ``frozen`` and ``overlap`` ``[B]`` (integers).

    ``soft`` (the paper's): 1 for ``i < frozen``; ``c_i (e^{c_i} - 1) / (e - 1)`` with
    ``c_i = (overlap - i) / (overlap - frozen + 1)`` for ``frozen <= i < overlap``; 0 from ``overlap`` on.
    ``hard``: 1 on the frozen prefix only.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"RTC mask must be one of {MASK_KINDS}, got '{kind}'")
    frozen = frozen.reshape(-1, 1).to(torch.float32)
    overlap = overlap.reshape(-1, 1).to(torch.float32)
    frozen = torch.minimum(frozen, overlap)
    i = torch.arange(chunk_len, dtype=torch.float32, device=frozen.device)[None, :]
    prefix = (i < frozen).float()
    if kind == "hard":
        return prefix
    c = ((overlap - i) / (overlap - frozen + 1.0)).clamp(0.0, 1.0)
    decay = c * torch.expm1(c) / (math.e - 1.0)
    return torch.where(i < frozen, prefix, torch.where(i < overlap, decay, torch.zeros_like(decay)))


def guidance_weight(t: float, max_guidance: float) -> float:
    """``min(beta, (1 - t) / (t r_t^2)) = min(beta, (t^2 + (1 - t)^2) / (t (1 - t)))``; ``beta`` at ``t = 0``."""
    if max_guidance <= 0.0:
        return 0.0
    if t <= 0.0 or t >= 1.0:
        return max_guidance
    return min(max_guidance, (t * t + (1.0 - t) ** 2) / (t * (1.0 - t)))


@dataclass
class RTCGuide:
    """What the next chunk is guided towards, in the decoder's (normalised, padded) units.

    Args:
        target: ``[B, H, A]`` the previous chunk's actions aligned to the new chunk's steps (step ``i`` of the
            new chunk is ``target[:, i]``); entries from ``overlap`` on are ignored.
        frozen: ``[B]`` leading steps that will have been executed before the new chunk arrives (the inference
            delay in control steps): held exactly on ``target``.
        overlap: ``[B]`` steps of the new chunk that the previous chunk still covers.
        max_guidance: the guidance-weight clip ``beta`` (0 switches guidance off).
        mask: ``soft`` (exponential decay over the overlap) or ``hard`` (the frozen prefix only).
        vjp: the paper's guidance, through the decoder's Jacobian (one backward pass per Euler step); False
            takes the Jacobian of the denoised estimate as the identity (``g = (Y - x1_hat) W``): no backward
            pass, an approximation that is not the paper's.
    """

    target: Tensor
    frozen: Tensor
    overlap: Tensor
    max_guidance: float = DEFAULT_MAX_GUIDANCE
    mask: MaskKind = "soft"
    vjp: bool = True

    def check(self, batch: int, chunk_len: int, action_dim: int) -> None:
        problems = []
        if tuple(self.target.shape) != (batch, chunk_len, action_dim):
            problems.append(
                f"target must be [{batch}, {chunk_len}, {action_dim}], got {tuple(self.target.shape)}"
            )
        for name in ("frozen", "overlap"):
            value = getattr(self, name)
            if tuple(value.shape) != (batch,):
                problems.append(f"{name} must be [{batch}], got {tuple(value.shape)}")
            elif value.numel() and (int(value.min()) < 0 or int(value.max()) > chunk_len):
                problems.append(f"{name} must lie in [0, {chunk_len}], got {value.tolist()}")
        if not problems and bool((self.frozen > self.overlap).any()):
            problems.append(
                f"frozen {self.frozen.tolist()} exceeds overlap {self.overlap.tolist()}: the previous chunk "
                "must cover the steps executed during inference"
            )
        if self.max_guidance < 0 or not math.isfinite(self.max_guidance):
            problems.append(f"max_guidance must be a finite number >= 0, got {self.max_guidance}")
        if self.mask not in MASK_KINDS:
            problems.append(f"mask must be one of {MASK_KINDS}, got '{self.mask}'")
        if problems:
            raise ValueError("invalid RTC guide: " + "; ".join(problems))
