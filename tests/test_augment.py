"""Training-time image augmentation: a random shift is a crop of the border-padded frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from actionprior.training.augment import random_shift


def test_each_frame_is_a_crop_of_its_border_padded_self():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 2, 3, 10, 12), dtype=torch.uint8, generator=g)
    out = random_shift(images, 2, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    offsets = set()
    for b in range(3):
        for c in range(2):
            padded = F.pad(images[b, c].float()[None], (2, 2, 2, 2), mode="replicate")[0]
            hits = [
                (dy, dx)
                for dy in range(5)
                for dx in range(5)
                if torch.equal(padded[:, dy : dy + 10, dx : dx + 12].to(torch.uint8), out[b, c])
            ]
            assert hits, f"frame {b},{c} is not a shifted copy"
            offsets.add(hits[0])
    assert len(offsets) > 1  # frames get their own offsets


def test_no_shift_is_the_identity_and_absent_cameras_stay_black():
    images = torch.randint(0, 256, (2, 2, 3, 8, 8), dtype=torch.uint8)
    assert random_shift(images, 0) is images
    images[:, 1] = 0
    assert not random_shift(images, 3)[:, 1].any()
