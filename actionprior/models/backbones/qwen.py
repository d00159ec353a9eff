"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL fast path: tensor patchify and layout-cached multimodal RoPE.

Frames that are already at the processor's target size (the usual case: the data pipeline resizes to
``image_size``) are rescaled, normalised and patchified as tensors on the model's device instead of via
the PIL image processor; the result is the processor's, to float rounding (tested), at a fraction of the
cost (no PIL round trip).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from actionprior.models.backbones.common import FamilyAdapter, frames_per_sample
from actionprior.models.backbones.layout_cache import LayoutCache


class QwenVLAdapter(FamilyAdapter):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: ``<|vision_start|> <|image_pad|> x N <|vision_end|>`` per image.

    The multimodal RoPE positions depend only on the token layout, so the model's own ``get_rope_index``
    runs once per layout (:class:`LayoutCache`; a Python loop over tokens, ~1 ms of a tiny backbone's
    forward on CPU) and the positions are passed to the model.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: Any, image_processor: Any):
        super().__init__(model, tokenizer, image_processor)
        self._get_rope_index = model.get_rope_index
        self.layout_cache = LayoutCache()

    def preprocess(self, images, camera_mask):
        per_sample = camera_mask.sum(dim=1).tolist()
        if not sum(per_sample):
            return {}, [[] for _ in per_sample]
        if self.tensor_path_applies(images.shape[-2], images.shape[-1]):
            pixel_values, grid = self.patchify(images[camera_mask.bool()])
        else:
            out = self.image_processor(images=frames_per_sample(images, camera_mask), return_tensors="pt")
            pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
        merge = self.image_processor.merge_size
        counts = (grid.prod(-1) // (merge * merge)).tolist()
        c = self.config
        blocks, i = [], 0
        for n in per_sample:
            blocks.append(
                [
                    [c.vision_start_token_id] + [c.image_token_id] * counts[i + j] + [c.vision_end_token_id]
                    for j in range(n)
                ]
            )
            i += n
        return {"pixel_values": pixel_values, "image_grid_thw": grid}, blocks

    def tensor_path_applies(self, height: int, width: int) -> bool:
        """True when the image processor would leave ``height x width`` frames unresized and RGB."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        proc = self.image_processor
        if not (proc.do_rescale and proc.do_normalize):
            return False
        if not proc.do_resize:
            return True
        factor = proc.patch_size * proc.merge_size
        size = proc.size
        target = smart_resize(height, width, factor, size["shortest_edge"], size["longest_edge"])
        return target == (height, width)

    def patchify(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``frames [N, 3, h, w]`` uint8 -> (``pixel_values [N * gh * gw, 3 * T * p * p]``, ``grid [N, 3]``).

        The layout of the processor's ``patchify``: patches in merge-window order, each patch's pixels
        repeated over the temporal patch (a still image is a clip of identical frames).
        """
        proc = self.image_processor
        n, ch, h, w = frames.shape
        p, m, tp = proc.patch_size, proc.merge_size, proc.temporal_patch_size
        gh, gw = h // p, w // p
        mean = torch.tensor(proc.image_mean, device=frames.device).view(1, ch, 1, 1)
        std = torch.tensor(proc.image_std, device=frames.device).view(1, ch, 1, 1)
        x = (frames.float() * proc.rescale_factor - mean) / std
        x = x.view(n, ch, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(-3).expand(*x.shape[:-2], tp, p, p)  # [N, gh/m, gw/m, m, m, C, T, p, p]
        grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long)
        return x.reshape(n * gh * gw, ch * tp * p * p), grid

    def extra_inputs(self, inputs):
        # Multimodal RoPE needs to know which positions are image tokens (text 0, image 1).
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        token_types = (ids == self.config.image_token_id).int()
        out = {"mm_token_type_ids": token_types}
        grid = inputs.get("image_grid_thw")
        if grid is not None:
            out["position_ids"] = self.rope_positions(ids, token_types, grid, mask)
        return out

    def rope_positions(
        self, ids: torch.Tensor, token_types: torch.Tensor, grid: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``get_rope_index``'s position ids ``[3, B, L]`` for this layout (CPU tensors), remembered."""

        def compute() -> torch.Tensor:
            positions, _ = self._get_rope_index(
                ids.clone(), token_types.clone(), image_grid_thw=grid.clone(), attention_mask=mask.clone()
            )
            return positions

        return self.layout_cache.get(("rope",) + LayoutCache.key(ids, grid, mask), compute)


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL: the vision tower's geometry (position-embedding interpolation taps, rotary positions,
    attention boundaries) depends only on the image grids too; it is computed once per grid with the
    vision tower's own helpers and passed through the model's ``image_*`` precomputed-kwargs interface.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: Any, image_processor: Any):
        super().__init__(model, tokenizer, image_processor)
        self._visual = model.visual

    def extra_inputs(self, inputs):
        out = super().extra_inputs(inputs)
        grid = inputs.get("image_grid_thw")
        if grid is not None:
            out.update(
                self.layout_cache.get(("vision",) + LayoutCache.key(grid), lambda: self._geometry(grid))
            )
        return out

    def _geometry(self, grid: torch.Tensor) -> dict[str, Any]:
        from transformers.vision_utils import (
            get_vision_attention_seqlens,
            get_vision_interpolation_indices_and_weights,
            get_vision_position_ids,
        )

        v = self._visual
        grid = grid.clone()
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid,
            num_grid_per_side=v.num_grid_per_side,
            mode=v.interpolation_mode,
            align_corners=v.interpolation_align_corners,
            spatial_merge_size=v.config.spatial_merge_size,
        )
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid, v.config)
        return {
            "image_interp_indices": indices,
            "image_interp_weights": weights,
            "image_position_ids": get_vision_position_ids(grid, v.spatial_merge_size),
            "image_cu_seqlens": cu_seqlens,
            "image_max_seqlen": max_seqlen,
        }
