"""A Hugging Face image-text model as the VLA's backbone.

:class:`VLMBackbone` wraps any image-text model that the Auto classes load (hub id or local directory),
or a random-weight model built offline (``tiny:<family>`` / ``random:<name>``, see :mod:`.tiny`). It turns
camera frames + instructions + a few extra embedding tokens (the history token and the learned query
tokens) into the final hidden states at the extra tokens' positions.

The extra tokens enter through placeholder ids whose *embeddings* are overwritten by a forward hook on
the model's input-embedding layer. This keeps ``input_ids`` intact, which every architecture needs for
image placement and (Qwen) multimodal RoPE, and works for any model that embeds ids through
``get_input_embeddings()`` -- i.e. all of them.

Where the image tokens go is decided by a *path*: a per-family :class:`FamilyAdapter` fast path
(:data:`ADAPTERS`: Qwen tensor patchify and layout cache, SmolVLM/Idefics3) when the model type has one,
otherwise the processor-driven :class:`GenericPath`, which needs no per-family code. ``generic:<source>``
forces the generic path for a family that has an adapter.
"""

from __future__ import annotations

import base64
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel

from actionprior.models.backbones.common import (
    FamilyAdapter,
    PreparedInputs,
    check_batch,
    pick_attn_implementation,
)
from actionprior.models.backbones.generic import (
    GenericPath,
    UnsupportedBackbone,
    hidden_state_field,
    load_processor,
)
from actionprior.models.backbones.qwen import Qwen3VLAdapter, QwenVLAdapter
from actionprior.models.backbones.smolvlm import SmolVLMAdapter

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
RANDOM_PREFIX = "random:"
GENERIC_PREFIX = "generic:"
PATHS = ("auto", "adapter", "generic")

ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "qwen2_vl": QwenVLAdapter,
    "qwen2_5_vl": QwenVLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "smolvlm": SmolVLMAdapter,
    "idefics3": SmolVLMAdapter,
}


def check_image_text_model(model: PreTrainedModel, source: str) -> str:
    """Refuse what cannot work; returns the output field holding the final hidden states."""
    model_type = model.config.model_type
    if not callable(getattr(model, "get_image_features", None)):
        raise UnsupportedBackbone(
            f"backbone '{source}' (model_type '{model_type}') is a text-only model (no image features): "
            "the VLA needs an image-text model"
        )
    field = hidden_state_field(model)
    if field is None:
        raise UnsupportedBackbone(
            f"backbone '{source}' (model_type '{model_type}'): {type(model).__name__}'s outputs carry no "
            "hidden states (no last_hidden_state / hidden_states field), so there are no token features"
        )
    return field


class VLMBackbone(nn.Module):
    """Images + instructions + extra embeddings -> hidden states at the extra tokens."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any = None,
        image_processor: Any = None,
        source: str = "",
        gradient_checkpointing: bool = False,
        processor: Any = None,
        path: str = "auto",
    ):
        super().__init__()
        if path not in PATHS:
            raise ValueError(f"backbone path must be one of {PATHS}, got '{path}'")
        model_type = model.config.model_type
        self._hidden_field = check_image_text_model(model, source)
        use_adapter = path == "adapter" or (path == "auto" and model_type in ADAPTERS)
        if use_adapter and model_type not in ADAPTERS:
            raise ValueError(
                f"backbone '{source}' has model_type '{model_type}', which has no adapter; "
                f"adapters: {sorted(ADAPTERS)} (use path='generic' or 'auto')"
            )
        if not use_adapter and processor is None:
            raise UnsupportedBackbone(
                f"backbone '{source}' (model_type '{model_type}') needs its multimodal processor for the "
                "generic path, and none was given"
            )
        if processor is not None:
            tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
            if image_processor is None:
                image_processor = getattr(processor, "image_processor", None)
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.processor = processor
        self.source = source
        self.path = "adapter" if use_adapter else "generic"
        self.adapter: FamilyAdapter | GenericPath = (
            ADAPTERS[model_type](model, tokenizer, image_processor)
            if use_adapter
            else GenericPath(model, processor)
        )
        text_config = model.config.get_text_config()
        self.hidden_size: int = int(text_config.hidden_size)
        self._pending: tuple[torch.Tensor, PreparedInputs, int] | None = None
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
        quantization_config: Any = None,
    ) -> VLMBackbone:
        """A hub id, a local directory, ``tiny:<family>`` or ``random:<name>`` (random weights, built
        offline); ``generic:<any of these>`` forces the processor-driven path. ``quantization_config``: a
        ``transformers`` quantisation config (QLoRA's 4-bit base) for a hub id or directory."""
        attn = pick_attn_implementation(attn_implementation)
        path, name = "auto", name_or_path
        if name.startswith(GENERIC_PREFIX):
            path, name = "generic", name[len(GENERIC_PREFIX) :]
        tokenizer = image_processor = None
        if name.startswith((TINY_PREFIX, RANDOM_PREFIX)):
            if quantization_config is not None:
                raise ValueError(
                    f"backbone '{name_or_path}': quantisation (QLoRA) applies to a pretrained backbone loaded "
                    "from a hub id or directory, not to one built from a config (tiny:/random:)"
                )
            from actionprior.models.backbones.random_backbones import build_random_backbone
            from actionprior.models.backbones.tiny import build_tiny_backbone

            build = build_tiny_backbone if name.startswith(TINY_PREFIX) else build_random_backbone
            model, tokenizer, image_processor, processor = build(name.split(":", 1)[1], seed=tiny_seed)
            model.set_attn_implementation(attn)
        else:
            config = AutoConfig.from_pretrained(name)
            extra = {"quantization_config": quantization_config} if quantization_config is not None else {}
            model = AutoModel.from_pretrained(
                name, attn_implementation=attn, dtype=torch_dtype or "auto", **extra
            )
            processor = None
            if path == "generic" or config.model_type not in ADAPTERS:
                check_image_text_model(model, name)  # before looking for a processor it would not need
                processor = load_processor(name, config.model_type)
            else:
                tokenizer = AutoTokenizer.from_pretrained(name)
                image_processor = AutoImageProcessor.from_pretrained(name, backend="pil")
        backbone = cls(
            model,
            tokenizer,
            image_processor,
            source=name_or_path,
            gradient_checkpointing=gradient_checkpointing,
            processor=processor,
            path=path,
        )
        log.info(
            "VLM backbone %s (%s): %s path, attention implementation = %s",
            name_or_path,
            type(model).__name__,
            backbone.path,
            attn,
        )
        return backbone

    def export_spec(self) -> dict[str, Any]:
        """Everything but the weights needed to rebuild this backbone offline (weights live in the state dict).

        The files that ``save_pretrained`` writes for config, tokenizer and image processor (the whole
        processor on the generic path), as text (binary ones, e.g. a sentencepiece model, base64), so a
        checkpoint rebuilds the backbone with no hub access and no dependence on a local directory.
        """
        with tempfile.TemporaryDirectory() as tmp:
            self.model.config.save_pretrained(tmp)
            if self.path == "generic":
                self.processor.save_pretrained(tmp)
            else:
                self.tokenizer.save_pretrained(tmp)
                self.image_processor.save_pretrained(tmp)
            files, binary = {}, {}
            for p in sorted(Path(tmp).iterdir()):
                if not p.is_file():
                    continue
                data = p.read_bytes()
                try:
                    files[p.name] = data.decode("utf-8")
                except UnicodeDecodeError:
                    binary[p.name] = base64.b64encode(data).decode("ascii")
        spec: dict[str, Any] = {"source": self.source, "path": self.path, "files": files}
        if binary:
            spec["binary_files"] = binary
        return spec

    @classmethod
    def from_spec(
        cls,
        spec: dict[str, Any],
        attn_implementation: str = "auto",
        gradient_checkpointing: bool = False,
    ) -> VLMBackbone:
        """Rebuild with random weights from :meth:`export_spec`; load the state dict afterwards."""
        attn = pick_attn_implementation(attn_implementation)
        path = spec.get("path", "auto")
        tokenizer = image_processor = processor = None
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in spec["files"].items():
                (Path(tmp) / Path(name).name).write_text(text)
            for name, data in spec.get("binary_files", {}).items():
                (Path(tmp) / Path(name).name).write_bytes(base64.b64decode(data))
            config = AutoConfig.from_pretrained(tmp)
            if path == "generic" or (path == "auto" and config.model_type not in ADAPTERS):
                processor = load_processor(tmp, config.model_type)
            else:
                tokenizer = AutoTokenizer.from_pretrained(tmp)
                image_processor = AutoImageProcessor.from_pretrained(tmp, backend="pil")
        model = AutoModel.from_config(config, attn_implementation=attn)
        log.info("VLM backbone rebuilt from checkpoint spec (%s): attention = %s", spec.get("source"), attn)
        return cls(
            model,
            tokenizer,
            image_processor,
            source=spec.get("source", ""),
            gradient_checkpointing=gradient_checkpointing,
            processor=processor,
            path=path,
        )

    # ------------------------------------------------------------------ forward
    def _insert_extra(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self._pending is None:
            return None
        extra, prepared, length = self._pending
        if output.dim() != 3 or output.shape[0] != extra.shape[0] or output.shape[1] != length:
            return None
        extra = extra.to(output.dtype)
        if prepared.extra_positions is None:  # the last E positions of every row
            return torch.cat([output[:, : -extra.shape[1]], extra], dim=1)
        positions = prepared.extra_positions.to(output.device)
        present = prepared.extra_present
        rows = torch.arange(extra.shape[0], device=output.device).unsqueeze(1).expand_as(positions)
        if present is not None:
            present = present.to(output.device)
            rows, positions, extra = rows[present], positions[present], extra[present]
        return output.index_put((rows, positions), extra)  # out of place: gradients reach both

    def prepare(
        self,
        images: torch.Tensor,
        camera_mask: torch.Tensor,
        instructions: Sequence[str],
        num_extra: int,
        extra_mask: torch.Tensor | None = None,
    ) -> PreparedInputs:
        """Model inputs with ``num_extra`` extra-token placeholders, and where those sit.

        ``extra_mask [B, E]`` False makes a sample go without that extra token (hidden from attention and
        from position counting on the adapter paths, left out of the row on the generic path): how a
        sample is given "no history token".
        """
        check_batch(images, camera_mask, instructions)
        if extra_mask is not None and tuple(extra_mask.shape) != (images.shape[0], num_extra):
            raise ValueError(
                f"extra_mask must be [{images.shape[0]}, {num_extra}], got {tuple(extra_mask.shape)}"
            )
        return self.adapter.prepare(images, camera_mask, instructions, num_extra, extra_mask)

    def build_inputs(
        self,
        images: torch.Tensor,
        camera_mask: torch.Tensor,
        instructions: Sequence[str],
        num_extra: int,
        extra_mask: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """The model inputs of :meth:`prepare`."""
        return self.prepare(images, camera_mask, instructions, num_extra, extra_mask).model_inputs

    def forward(
        self,
        images: torch.Tensor,
        camera_mask: torch.Tensor,
        instructions: Sequence[str],
        extra_embeds: torch.Tensor,
        extra_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``extra_embeds [B, E, D]`` are placed after image and text; returns their final hidden states
        ``[B, E, D]`` (zeros for extra tokens a sample goes without on the generic path)."""
        if extra_embeds.dim() != 3 or extra_embeds.shape[-1] != self.hidden_size:
            raise ValueError(
                f"extra_embeds must be [B, E, {self.hidden_size}] (the VLM width), got {tuple(extra_embeds.shape)}"
            )
        device = extra_embeds.device
        num_extra = extra_embeds.shape[1]
        prepared = self.prepare(images, camera_mask, instructions, num_extra, extra_mask)
        inputs = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepared.model_inputs.items()
        }
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if self._hidden_field == "hidden_states":
            inputs["output_hidden_states"] = True
        self._pending = (extra_embeds, prepared, inputs["input_ids"].shape[1])
        try:
            out = self.model(**inputs, use_cache=False)
        finally:
            self._pending = None
        hidden = self._final_hidden(out)
        if prepared.extra_positions is None:
            return hidden[:, -num_extra:]
        positions = prepared.extra_positions.to(hidden.device)
        gathered = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        if prepared.extra_present is not None:
            gathered = gathered * prepared.extra_present.to(hidden.device).unsqueeze(-1).to(gathered.dtype)
        return gathered

    def _final_hidden(self, out: Any) -> torch.Tensor:
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None and getattr(out, "hidden_states", None) is not None:
            hidden = out.hidden_states[-1]
        if hidden is None:
            raise UnsupportedBackbone(
                f"backbone '{self.source}' (model_type '{self.model.config.model_type}'): "
                f"{type(out).__name__} carries no hidden states"
            )
        return hidden
