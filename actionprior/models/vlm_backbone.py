"""A Hugging Face image-text model as the VLA's backbone.

:class:`VLMBackbone` wraps any image-text model that the Auto classes load (hub id or local directory),
or a tiny random-weight model built offline (``tiny:<family>``, see :mod:`tiny_backbones`). It turns
camera frames + instructions + a few extra embedding tokens (the history token and the learned query
tokens) into the final hidden states at the extra tokens' positions.

Token layout per sample, left-padded so the extra tokens sit at the same final positions in every row::

    [pad ...] [image block, one per present camera] [instruction tokens] [extra token x E]

The extra tokens enter through placeholder ids whose *embeddings* are overwritten by a forward hook on
the model's input-embedding layer. This keeps ``input_ids`` intact, which every architecture needs for
image placement and (Qwen) multimodal RoPE, and works for any model that embeds ids through
``get_input_embeddings()`` -- i.e. all of them. What differs between families (the image-token block,
extra model inputs) lives in a small :class:`FamilyAdapter` per family.

Image preprocessing uses the family's image processor class (PIL backend: the torchvision backend
needs torchvision, which is not usable with this torch) on CPU inside ``forward``. For the Qwen families,
frames that are already at the processor's target size (the usual case: the data pipeline resizes to
``image_size``) are rescaled, normalised and patchified as tensors on the model's device instead; the
result is the processor's, to float rounding (tested), at a fraction of the cost (no PIL round trip).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"


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


class FamilyAdapter:
    """How one architecture family lays out image tokens and which extra inputs its forward needs."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, image_processor: Any):
        self.config = model.config
        self.tokenizer = tokenizer
        self.image_processor = image_processor

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


class LayoutCache:
    """A small LRU of tensors that depend only on a batch's layout (token ids, padding, image grids).

    Such tensors are the same at every step of an episode, and for every batch with the same
    instructions and cameras in training, so they are computed once. They are computed outside inference
    mode: a tensor remembered during a policy's inference-mode call must stay usable in a later training
    step (inference tensors cannot be saved for backward).
    """

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    @staticmethod
    def key(*tensors: torch.Tensor) -> tuple:
        return tuple((tuple(t.shape), t.cpu().numpy().tobytes()) for t in tensors)

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        with torch.inference_mode(False):
            value = compute()
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


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


class SmolVLMAdapter(FamilyAdapter):
    """SmolVLM / Idefics3 without image splitting: ``<fake><global-img><image> x N <fake>`` per image."""

    def preprocess(self, images, camera_mask):
        images = frames_per_sample(images, camera_mask)
        if any(len(sample) == 0 for sample in images):
            raise ValueError("SmolVLM backbone: every sample needs at least one present camera (camera_mask)")
        out = self.image_processor(images=images, return_tensors="pt")
        tok = self.tokenizer
        vis = self.config.vision_config
        seq_len = (vis.image_size // vis.patch_size) ** 2 // (self.config.scale_factor**2)
        fake = tok.convert_tokens_to_ids("<fake_token_around_image>")
        glob = tok.convert_tokens_to_ids("<global-img>")
        block = [fake, glob] + [self.config.image_token_id] * seq_len + [fake]
        blocks = [[list(block) for _ in sample] for sample in images]
        return {
            "pixel_values": out["pixel_values"],
            "pixel_attention_mask": out["pixel_attention_mask"],
        }, blocks

    def extra_inputs(self, inputs):
        # Left padding: positions count real tokens only, so the same prompt gets the same positions.
        return {"position_ids": (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)}


ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "qwen2_vl": QwenVLAdapter,
    "qwen2_5_vl": QwenVLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "smolvlm": SmolVLMAdapter,
    "idefics3": SmolVLMAdapter,
}


class VLMBackbone(nn.Module):
    """Images + instructions + extra embeddings -> hidden states at the extra tokens."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        image_processor: Any,
        source: str = "",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        model_type = model.config.model_type
        if model_type not in ADAPTERS:
            raise ValueError(
                f"backbone '{source}' has model_type '{model_type}', which has no image/token adapter; "
                f"supported: {sorted(ADAPTERS)} (add a FamilyAdapter in actionprior/models/vlm_backbone.py)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        self.adapter = ADAPTERS[model_type](model, tokenizer, image_processor)
        text_config = model.config.get_text_config()
        self.hidden_size: int = int(text_config.hidden_size)
        # Any id works as the extra-token placeholder (its embedding is replaced); the pad id is always valid.
        self._placeholder_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._pending_extra: torch.Tensor | None = None
        model.get_input_embeddings().register_forward_hook(self._insert_extra)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # A backbone whose weights we train must not cache keys/values.
        model.config.use_cache = False
        text_config.use_cache = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        attn_implementation: str = "auto",
        gradient_checkpointing: bool = False,
        torch_dtype: str | None = None,
        tiny_seed: int = 0,
    ) -> VLMBackbone:
        """A hub id, a local directory, or ``tiny:<family>`` (random weights, built offline)."""
        attn = pick_attn_implementation(attn_implementation)
        if name_or_path.startswith(TINY_PREFIX):
            from actionprior.models.tiny_backbones import build_tiny_backbone

            model, tokenizer, processor = build_tiny_backbone(
                name_or_path[len(TINY_PREFIX) :], seed=tiny_seed
            )
            model.set_attn_implementation(attn)
        else:
            model = AutoModel.from_pretrained(
                name_or_path, attn_implementation=attn, dtype=torch_dtype or "auto"
            )
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
        log.info(
            "VLM backbone %s (%s): attention implementation = %s", name_or_path, type(model).__name__, attn
        )
        return cls(
            model, tokenizer, processor, source=name_or_path, gradient_checkpointing=gradient_checkpointing
        )

    def export_spec(self) -> dict[str, Any]:
        """Everything but the weights needed to rebuild this backbone offline (weights live in the state dict).

        The files that ``save_pretrained`` writes for config, tokenizer and image processor, as text, so a
        checkpoint rebuilds the backbone with no hub access and no dependence on a local directory.
        """
        with tempfile.TemporaryDirectory() as tmp:
            self.model.config.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            self.image_processor.save_pretrained(tmp)
            files = {p.name: p.read_text() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
        return {"source": self.source, "files": files}

    @classmethod
    def from_spec(
        cls,
        spec: dict[str, Any],
        attn_implementation: str = "auto",
        gradient_checkpointing: bool = False,
    ) -> VLMBackbone:
        """Rebuild with random weights from :meth:`export_spec`; load the state dict afterwards."""
        attn = pick_attn_implementation(attn_implementation)
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in spec["files"].items():
                (Path(tmp) / name).write_text(text)
            config = AutoConfig.from_pretrained(tmp)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
            processor = AutoImageProcessor.from_pretrained(tmp, backend="pil")
        model = AutoModel.from_config(config, attn_implementation=attn)
        log.info("VLM backbone rebuilt from checkpoint spec (%s): attention = %s", spec.get("source"), attn)
        return cls(
            model,
            tokenizer,
            processor,
            source=spec.get("source", ""),
            gradient_checkpointing=gradient_checkpointing,
        )

    # ------------------------------------------------------------------ forward
    def _insert_extra(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        extra = self._pending_extra
        if extra is None or output.dim() != 3 or output.shape[0] != extra.shape[0]:
            return None
        n = extra.shape[1]
        return torch.cat([output[:, :-n], extra.to(output.dtype)], dim=1)

    def build_inputs(
        self,
        images: torch.Tensor,
        camera_mask: torch.Tensor,
        instructions: Sequence[str],
        num_extra: int,
        extra_mask: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Model inputs (ids, mask, pixels, family extras) with ``num_extra`` placeholders at the end.

        ``extra_mask [B, E]`` False hides an extra token from attention (and from position counting),
        which is exactly equivalent to leaving it out: how a sample is given "no history token".
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be uint8 [B, C, 3, h, w], got shape {tuple(images.shape)}")
        bsz = images.shape[0]
        if len(instructions) != bsz or camera_mask.shape[:2] != images.shape[:2]:
            raise ValueError(
                f"batch mismatch: images {tuple(images.shape)}, camera_mask {tuple(camera_mask.shape)}, "
                f"{len(instructions)} instructions"
            )
        pixel_inputs, blocks = self.adapter.preprocess(images, camera_mask)
        text_ids = self.tokenizer(list(instructions), add_special_tokens=False)["input_ids"]
        rows = [
            [t for block in blocks[b] for t in block] + list(text_ids[b]) + [self._placeholder_id] * num_extra
            for b in range(bsz)
        ]
        width = max(len(r) for r in rows)
        pad = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        input_ids = torch.full((bsz, width), pad, dtype=torch.long)
        attention_mask = torch.zeros((bsz, width), dtype=torch.long)
        for b, row in enumerate(rows):  # left padding keeps the extra tokens at the last positions
            input_ids[b, width - len(row) :] = torch.tensor(row)
            attention_mask[b, width - len(row) :] = 1
        if extra_mask is not None:
            if tuple(extra_mask.shape) != (bsz, num_extra):
                raise ValueError(f"extra_mask must be [{bsz}, {num_extra}], got {tuple(extra_mask.shape)}")
            attention_mask[:, width - num_extra :] = extra_mask.to(torch.long).cpu()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **pixel_inputs}
        inputs.update(self.adapter.extra_inputs(inputs))
        return inputs

    def forward(
        self,
        images: torch.Tensor,
        camera_mask: torch.Tensor,
        instructions: Sequence[str],
        extra_embeds: torch.Tensor,
        extra_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``extra_embeds [B, E, D]`` are appended after image and text; returns their final hidden states."""
        if extra_embeds.dim() != 3 or extra_embeds.shape[-1] != self.hidden_size:
            raise ValueError(
                f"extra_embeds must be [B, E, {self.hidden_size}] (the VLM width), got {tuple(extra_embeds.shape)}"
            )
        device = extra_embeds.device
        inputs = self.build_inputs(images, camera_mask, instructions, extra_embeds.shape[1], extra_mask)
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        self._pending_extra = extra_embeds
        try:
            out = self.model(**inputs, use_cache=False)
        finally:
            self._pending_extra = None
        return out.last_hidden_state[:, -extra_embeds.shape[1] :]
