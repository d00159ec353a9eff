"""What every token-layout path shares: the prepared inputs, frame conversion, and the adapter base class.

A *path* turns ``images [B, C, 3, h, w]`` uint8, ``camera_mask [B, C]``, instructions and ``E`` extra tokens
into model inputs plus the positions at which the extra tokens' embeddings go (:class:`PreparedInputs`).
Two kinds exist: the per-family :class:`FamilyAdapter` fast paths (``qwen.py``, ``smolvlm.py``), which
lay tokens out themselves, and the processor-driven :class:`~actionprior.models.backbones.generic.GenericPath`,
which lets the model's own processor do it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel


def pick_attn_implementation(requested: str = "auto") -> str:
    """flash_attention_2 when installed and CUDA is present, otherwise PyTorch SDPA."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def frames_per_sample(images: torch.Tensor, camera_mask: torch.Tensor) -> list[list[np.ndarray]]:
    """``images [B, C, 3, h, w]`` uint8 -> per sample, its present frames as HWC numpy, in camera order."""
    frames = images.permute(0, 1, 3, 4, 2).cpu().numpy()
    present = camera_mask.cpu().numpy().astype(bool)
    return [[frames[b, c] for c in range(frames.shape[1]) if present[b, c]] for b in range(frames.shape[0])]


@dataclass
class PreparedInputs:
    """Model inputs and where the extra tokens sit in them.

    ``extra_positions [B, E]``: the sequence index of each extra token; None means the last ``E``
    positions of every row (the adapters' left-padded layout, which needs no gather). ``extra_present
    [B, E]``: False where an extra token was left out of the row (generic path, ``extra_mask`` False);
    None means all present.
    """

    model_inputs: dict[str, Any]
    extra_positions: torch.Tensor | None = None
    extra_present: torch.Tensor | None = None


def check_batch(images: torch.Tensor, camera_mask: torch.Tensor, instructions: Sequence[str]) -> None:
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be uint8 [B, C, 3, h, w], got shape {tuple(images.shape)}")
    if len(instructions) != images.shape[0] or camera_mask.shape[:2] != images.shape[:2]:
        raise ValueError(
            f"batch mismatch: images {tuple(images.shape)}, camera_mask {tuple(camera_mask.shape)}, "
            f"{len(instructions)} instructions"
        )


class FamilyAdapter:
    """How one architecture family lays out image tokens and which extra inputs its forward needs.

    Token layout per sample, left-padded so the extra tokens sit at the same final positions in every row::

        [pad ...] [image block, one per present camera] [instruction tokens] [extra token x E]
    """

    name = "adapter"

    def __init__(self, model: PreTrainedModel, tokenizer: Any, image_processor: Any):
        self.config = model.config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        # Any id works as the extra-token placeholder (its embedding is replaced); the pad id is always valid.
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def preprocess(
        self, images: torch.Tensor, camera_mask: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], list[list[list[int]]]]:
        """``images [B, C, 3, h, w]`` uint8 and ``camera_mask [B, C]`` (False = camera absent).

        Returns the pixel inputs for the model and, per sample and present image (in camera order), the
        image block's token ids.
        """
        raise NotImplementedError

    def extra_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Family-specific model inputs derived from ``input_ids``, ``attention_mask`` and the pixel inputs."""
        return {}

    def prepare(
        self,
        images: torch.Tensor,
        camera_mask: torch.Tensor,
        instructions: Sequence[str],
        num_extra: int,
        extra_mask: torch.Tensor | None = None,
    ) -> PreparedInputs:
        """``extra_mask [B, E]`` False hides an extra token from attention (and from position counting),
        which is exactly equivalent to leaving it out: how a sample is given "no history token"."""
        bsz = images.shape[0]
        pixel_inputs, blocks = self.preprocess(images, camera_mask)
        text_ids = self.tokenizer(list(instructions), add_special_tokens=False)["input_ids"]
        rows = [
            [t for block in blocks[b] for t in block] + list(text_ids[b]) + [self.pad_id] * num_extra
            for b in range(bsz)
        ]
        width = max(len(r) for r in rows)
        input_ids = torch.full((bsz, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((bsz, width), dtype=torch.long)
        for b, row in enumerate(rows):  # left padding keeps the extra tokens at the last positions
            input_ids[b, width - len(row) :] = torch.tensor(row)
            attention_mask[b, width - len(row) :] = 1
        if extra_mask is not None:
            attention_mask[:, width - num_extra :] = extra_mask.to(torch.long).cpu()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **pixel_inputs}
        inputs.update(self.extra_inputs(inputs))
        return PreparedInputs(inputs)
