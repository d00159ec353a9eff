"""The processor-driven path: any image-text model that AutoModel + the model's processor load.

No per-family code. The model's own processor places the image tokens: the prompt is the processor's
chat template rendered for one user turn holding the present camera frames then the instruction (with the
generation prompt, so the extra tokens sit where the model's answer would start), or, for a processor
without a chat template, its image token once per frame followed by the instruction (the processor's
image-token rule expands it, e.g. PaliGemma's ``<image>`` prefix + bos). The extra tokens (history token,
query tokens) enter the text as a private marker token, added to a *copy* of the processor's tokenizer,
so after tokenisation their positions are simply where the marker id is; the marker id is then replaced
by a valid id (its embedding is overwritten anyway). Every tensor the processor returns that the model's
``forward`` names (``pixel_values``, ``token_type_ids``, ``image_grid_thw``, ``pixel_attention_mask``,
``image_sizes``, ...) is passed on.

Rows are right-padded and an extra token whose ``extra_mask`` is False is *left out* of its row, so each
row is exactly its unpadded sequence for any model (whatever way it derives positions from the mask):
"no history token" means no history token.

Processors that also declare video (or audio) sub-processors are used through an image-and-text subclass
(:func:`image_text_processor_class`): the video processors need torchvision, which this torch cannot use,
and the backbone never feeds video.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import AddedToken

from actionprior.models.backbones.common import PreparedInputs, frames_per_sample

log = logging.getLogger(__name__)

MARKER = "<|actionprior_extra|>"
IMAGE_TEXT_PARTS = ("image_processor", "tokenizer")


class UnsupportedBackbone(ValueError):
    """A model that cannot serve as the VLA's backbone; the message names the reason and the model type."""


@functools.cache
def image_text_processor_class(cls: type) -> type:
    """``cls`` restricted to its image processor and tokenizer (other sub-processors are passed as None).

    The subclass keeps the class name, so ``save_pretrained`` writes the original ``processor_class``.
    """
    parts = cls.get_attributes()
    if not all(p in parts for p in IMAGE_TEXT_PARTS):
        raise UnsupportedBackbone(f"processor {cls.__name__} has no image path (its parts: {parts})")
    dropped = tuple(p for p in parts if p not in IMAGE_TEXT_PARTS)
    if not dropped:
        return cls

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):  # noqa: N807
        cls.__init__(
            self, image_processor=image_processor, tokenizer=tokenizer, **dict.fromkeys(dropped), **kwargs
        )

    # The original signature minus the dropped parts: ProcessorMixin reads it to find the sub-processors
    # and the init arguments to save (e.g. InternVL's image_seq_length).
    signature = inspect.signature(cls.__init__)
    __init__.__signature__ = signature.replace(
        parameters=[p for n, p in signature.parameters.items() if n not in dropped]
    )
    return type(
        cls.__name__,
        (cls,),
        {"__init__": __init__, "__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )


def _processor_class_name(path: str, model_type: str) -> str | None:
    """``processor_class`` from the saved processor/tokenizer files, else the Auto mapping's for the type."""
    from transformers.utils import cached_file

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            resolved = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            resolved = None
        if resolved:
            data = json.loads(Path(resolved).read_text())
            if isinstance(data.get("processor_class"), str):
                return data["processor_class"]
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    return PROCESSOR_MAPPING_NAMES.get(model_type)


def load_processor(path: str, model_type: str) -> Any:
    """The model's processor (image + text parts, PIL image backend) from a hub id or directory."""
    from transformers.models.auto.processing_auto import processor_class_from_name

    name = _processor_class_name(path, model_type)
    cls = processor_class_from_name(name) if name else None
    if cls is None:
        raise UnsupportedBackbone(
            f"backbone '{path}' (model_type '{model_type}') has no multimodal processor "
            "(no processor_config.json / processor_class, and none registered for the type): no image path"
        )
    restricted = image_text_processor_class(cls)
    processor_dict, _ = cls.get_processor_dict(path)
    init = inspect.signature(cls.__init__).parameters
    kwargs = {
        k: v for k, v in processor_dict.items() if k in init and k not in ("self", *cls.get_attributes())
    }
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        # The PIL backend: the torchvision one (AutoImageProcessor's default) needs torchvision.
        image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    except OSError as err:
        raise UnsupportedBackbone(
            f"backbone '{path}' (model_type '{model_type}') has no image processor "
            f"(preprocessor_config.json): no image path ({err.__class__.__name__})"
        ) from err
    return restricted(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


def hidden_state_field(model: PreTrainedModel) -> str | None:
    """Which field of ``model``'s output holds the final hidden states, from its forward's annotation.

    ``last_hidden_state``, else ``hidden_states`` (a tuple per layer, requested with
    ``output_hidden_states``); None when the declared outputs carry neither (e.g. CLIP's similarity
    logits and pooled embeddings). "?" when the forward declares no output class (checked at call time).
    """
    from transformers.utils import ModelOutput

    annotation = inspect.signature(type(model).forward).return_annotation
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    outputs = [c for c in candidates if isinstance(c, type) and issubclass(c, ModelOutput)]
    if not outputs:
        return "?"
    fields = set().union(*(c.__dataclass_fields__ for c in outputs))
    for field in ("last_hidden_state", "hidden_states"):
        if field in fields:
            return field
    return None


class GenericPath:
    """Builds model inputs for any image-text model with its own processor (see the module docstring)."""

    name = "generic"

    def __init__(self, model: PreTrainedModel, processor: Any):
        model_type = model.config.model_type
        self.processor = processor  # the user's, as exported to checkpoints
        if (
            getattr(processor, "image_processor", None) is None
            or getattr(processor, "tokenizer", None) is None
        ):
            raise UnsupportedBackbone(
                f"model_type '{model_type}': its processor ({type(processor).__name__}) has no image "
                "processor and tokenizer pair: no image path"
            )
        self.use_chat_template = bool(getattr(processor, "chat_template", None))
        self.image_token = getattr(processor, "image_token", None)
        if not self.use_chat_template and not self.image_token:
            raise UnsupportedBackbone(
                f"model_type '{model_type}': its processor ({type(processor).__name__}) has neither a chat "
                "template nor an image token, so there is no way to tell it where the images go"
            )
        # A private copy gets the marker token, so exported tokenizer files stay the model's own.
        self._runtime = copy.deepcopy(processor)
        tok = self._runtime.tokenizer
        tok.add_tokens([AddedToken(MARKER, special=True, normalized=False)])
        self.marker_id = int(tok.convert_tokens_to_ids(MARKER))
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        params = inspect.signature(type(model).forward).parameters
        self.forward_inputs = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        self.forward_inputs.discard("self")

    def prompt(self, num_images: int, instruction: str) -> str:
        if self.use_chat_template:
            content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": instruction}]
            return self._runtime.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        return self.image_token * num_images + instruction

    def prepare(
        self,
        images: torch.Tensor,
        camera_mask: torch.Tensor,
        instructions: Sequence[str],
        num_extra: int,
        extra_mask: torch.Tensor | None = None,
    ) -> PreparedInputs:
        frames = frames_per_sample(images, camera_mask)
        if any(len(f) == 0 for f in frames):
            raise ValueError(
                "generic VLM backbone: every sample needs at least one present camera (camera_mask)"
            )
        bsz = len(frames)
        present = (
            extra_mask.bool().cpu()
            if extra_mask is not None
            else torch.ones(bsz, num_extra, dtype=torch.bool)
        )
        texts = [
            self.prompt(len(frames[b]), instructions[b]) + MARKER * int(present[b].sum()) for b in range(bsz)
        ]
        out = self._runtime(
            text=texts,
            images=frames,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            # A rendered chat template already holds the special tokens it wants.
            add_special_tokens=not self.use_chat_template,
        )
        ids = out["input_ids"]
        is_marker = ids == self.marker_id
        if not torch.equal(is_marker.sum(dim=1), present.sum(dim=1)):
            raise RuntimeError(
                f"{type(self.processor).__name__} did not keep the extra-token markers intact "
                f"(found {is_marker.sum(dim=1).tolist()}, expected {present.sum(dim=1).tolist()})"
            )
        positions = torch.zeros(bsz, num_extra, dtype=torch.long)
        positions[present] = is_marker.nonzero()[:, 1]  # both in row-major order
        inputs: dict[str, Any] = {"input_ids": ids.masked_fill(is_marker, self.pad_id)}
        for key, value in out.items():
            if key != "input_ids" and key in self.forward_inputs:
                inputs[key] = value
        return PreparedInputs(inputs, positions, None if extra_mask is None else present)
