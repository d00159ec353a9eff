"""Training-time image augmentation for Stage 2.

A random shift (pad by ``shift`` pixels with the border, crop back at a random offset, per sample and camera) is
the augmentation that makes pixel-based behaviour cloning work from tens of demonstrations (DrQ, Diffusion
Policy, robomimic): the policy cannot memorise exact pixel positions, so it must learn where objects are
relative to the gripper. It runs on the batch tensor (on the training device), never at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(images: Tensor, shift: int, generator: torch.Generator | None = None) -> Tensor:
    """``images [B, C, 3, h, w]`` uint8 -> the same shape, each frame shifted by up to ``shift`` px."""
    if shift <= 0:
        return images
    b, c, ch, h, w = images.shape
    frames = images.reshape(b * c, ch, h, w).float()
    padded = F.pad(frames, (shift, shift, shift, shift), mode="replicate")
    dy = torch.randint(0, 2 * shift + 1, (b * c,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * shift + 1, (b * c,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])[:, None, None, :]
    n = torch.arange(b * c, device=images.device)[:, None, None, None]
    chan = torch.arange(ch, device=images.device)[None, :, None, None]
    out = padded[n, chan, rows, cols]
    return out.round().to(images.dtype).reshape(b, c, ch, h, w)
