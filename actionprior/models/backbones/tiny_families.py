"""The tiny families: for each real architecture (``tiny:<family>``), its special tokens and how to build its
tiny config, image processor and processor (:mod:`actionprior.models.backbones.tiny` builds the models)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import PretrainedConfig

from actionprior.models.backbones.generic import image_text_processor_class


@dataclass(frozen=True)
class TinyFamily:
    """How to build one architecture: its special tokens, config, image processor and processor.

    ``named_tokens`` become tokenizer attributes (``tokenizer.boi_token`` / ``boi_token_id``...) that the
    family's processor reads. ``build_processor(image_processor, tokenizer)`` may add tokens to the
    tokenizer (PaliGemma's location tokens), so the config is built last, with the final vocabulary.
    """

    special_tokens: tuple[str, ...]
    pad_token: str
    eos_token: str
    build_config: Callable[[dict[str, int], int], PretrainedConfig]
    build_image_processor: Callable[[], Any]
    build_processor: Callable[[Any, Any], Any] | None = None
    bos_token: str | None = None
    named_tokens: dict[str, str] = field(default_factory=dict)


# Small text towers share these sizes: width 64, 2 layers, 4 heads of 16.
_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
}
# Small SigLIP/CLIP-style vision towers: width 32, 2 layers, 32 px images.
_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
}


def _special_ids(ids: dict[str, int], pad: str, bos: str | None, eos: str) -> dict[str, int]:
    out = {"pad_token_id": ids[pad], "eos_token_id": ids[eos]}
    out["bos_token_id"] = ids[bos] if bos else ids[pad]
    return out


def _qwen3_vl_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config={
            "vocab_size": vocab,
            **_TEXT,
            # M-RoPE splits head_dim/2 = 8 rotary frequencies over (time, height, width).
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _qwen2_5_vl_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab,
            **_TEXT,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _smolvlm_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import SmolVLMConfig

    return SmolVLMConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": vocab,
            **_TEXT,
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<end_of_utterance>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        scale_factor=2,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _qwen_image_processor() -> Any:
    # The PIL backend: the torchvision backend (AutoImageProcessor's default) needs torchvision.
    from transformers import Qwen2VLImageProcessorPil

    # 64x64 frames -> 4x4 patches of 16 px (Qwen3-VL) -> 2x2 = 4 merged tokens per image.
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}, patch_size=16, merge_size=2
    )


def _qwen2_5_image_processor() -> Any:
    from transformers import Qwen2VLImageProcessorPil

    # Qwen2.5-VL uses 14 px patches: 64x64 frames resize to 56x56 -> 4x4 patches -> 4 tokens.
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56}, patch_size=14, merge_size=2
    )


def _smolvlm_image_processor() -> Any:
    from transformers import SmolVLMImageProcessorPil

    # One 64x64 tile per image (no splitting): (64/16)^2 / 2^2 = 4 image tokens.
    return SmolVLMImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": 64},
        max_image_size={"longest_edge": 64},
        do_resize=True,
    )


QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# The Qwen processors expand only <|image_pad|>; the vision start/end tokens come from the chat template.
# This one renders exactly the adapter's layout (image blocks, then the instruction), so the generic and
# adapter paths can be compared token for token; hub checkpoints bring their own (role-tagged) template.
_QWEN_PLAIN_TEMPLATE = (
    "{% for message in messages %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endfor %}"
)
# Gemma 3's turn format (user turn, then the model's turn opened by the generation prompt).
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _qwen3_vl_processor(image_processor: Any, tokenizer: Any) -> Any:
    from transformers import Qwen3VLProcessor

    cls = image_text_processor_class(Qwen3VLProcessor)
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=_QWEN_PLAIN_TEMPLATE)


def _qwen2_5_vl_processor(image_processor: Any, tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLProcessor

    cls = image_text_processor_class(Qwen2_5_VLProcessor)
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=_QWEN_PLAIN_TEMPLATE)


# ---------------------------------------------------------------- PaliGemma (SigLIP + Gemma)
def _paligemma_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import PaliGemmaConfig

    return PaliGemmaConfig(
        text_config={
            "model_type": "gemma",
            "vocab_size": vocab,
            **_TEXT,
            "num_key_value_heads": 1,
            **_special_ids(ids, "<pad>", "<bos>", "<eos>"),
        },
        # 32 px / 16 px patches = 4 image tokens.
        vision_config={
            "model_type": "siglip_vision_model",
            **_VISION,
            "patch_size": 16,
            "projection_dim": 64,
        },
        image_token_index=ids["<image>"],
        projection_dim=64,
        hidden_size=64,
        vocab_size=vocab,
    )


def _paligemma_image_processor() -> Any:
    from transformers import SiglipImageProcessorPil

    proc = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    proc.image_seq_length = 4  # what PaliGemmaProcessor reads (stored in preprocessor_config.json)
    return proc


def _paligemma_processor(image_processor: Any, tokenizer: Any) -> Any:
    from transformers import PaliGemmaProcessor

    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


# ---------------------------------------------------------------- LLaVA (CLIP + Llama)
def _llava_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import LlavaConfig

    return LlavaConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": vocab,
            **_TEXT,
            **_special_ids(ids, "<pad>", "<s>", "</s>"),
        },
        # 32 px / 16 px patches = 4 patch tokens (+ CLS, dropped by the "default" feature strategy).
        vision_config={"model_type": "clip_vision_model", **_VISION, "patch_size": 16, "projection_dim": 32},
        image_token_index=ids["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=4,
    )


def _llava_image_processor() -> Any:
    from transformers import LlavaImageProcessorPil

    return LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _llava_processor(image_processor: Any, tokenizer: Any) -> Any:
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


# ---------------------------------------------------------------- Gemma 3 (SigLIP + Gemma 3)
def _gemma3_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config={
            "model_type": "gemma3_text",
            "vocab_size": vocab,
            **_TEXT,
            "query_pre_attn_scalar": 16,
            "sliding_window": 64,
            **_special_ids(ids, "<pad>", "<bos>", "<eos>"),
        },
        # 32 px / 8 px patches = 4x4, average-pooled to 2x2 = 4 image tokens.
        vision_config={"model_type": "siglip_vision_model", **_VISION, "patch_size": 8},
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )


def _gemma3_image_processor() -> Any:
    from transformers import Gemma3ImageProcessorPil

    return Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False)


def _gemma3_processor(image_processor: Any, tokenizer: Any) -> Any:
    from transformers import Gemma3Processor

    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=4,
        chat_template=_GEMMA3_TEMPLATE,
    )


# ---------------------------------------------------------------- InternVL (InternViT + Qwen2)
def _internvl_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import InternVLConfig

    return InternVLConfig(
        # 32 px / 8 px patches = 4x4, pixel-shuffled by 0.5 to 2x2 = 4 image tokens.
        vision_config={
            "model_type": "internvl_vision",
            **{k: v for k, v in _VISION.items() if k != "image_size"},
            "image_size": [32, 32],
            "patch_size": [8, 8],
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": vocab,
            **_TEXT,
            **_special_ids(ids, "<|endoftext|>", None, "<|im_end|>"),
        },
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
    )


def _internvl_image_processor() -> Any:
    from transformers import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=False)


def _internvl_processor(image_processor: Any, tokenizer: Any) -> Any:
    from transformers import InternVLProcessor

    cls = image_text_processor_class(InternVLProcessor)
    return cls(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4)


# ---------------------------------------------------------------- Qwen3.5 (hybrid linear/full attention)
def _qwen3_5_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import Qwen3_5Config

    return Qwen3_5Config(
        text_config={
            "vocab_size": vocab,
            **_TEXT,
            # One gated-delta-net (linear attention) layer and one full-attention layer.
            "layer_types": ["linear_attention", "full_attention"],
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            # Half of head_dim rotates: 4 frequencies over (time, height, width).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
            **_special_ids(ids, "<|endoftext|>", None, "<|im_end|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 64,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


FAMILIES: dict[str, TinyFamily] = {
    "qwen3_vl": TinyFamily(
        QWEN_SPECIALS,
        "<|endoftext|>",
        "<|im_end|>",
        _qwen3_vl_config,
        _qwen_image_processor,
        _qwen3_vl_processor,
    ),
    "qwen2_5_vl": TinyFamily(
        QWEN_SPECIALS,
        "<|endoftext|>",
        "<|im_end|>",
        _qwen2_5_vl_config,
        _qwen2_5_image_processor,
        _qwen2_5_vl_processor,
    ),
    # No processor: SmolVLMProcessor needs the num2words package (the adapter path does not).
    "smolvlm": TinyFamily(
        ("<|endoftext|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"),
        "<|endoftext|>",
        "<end_of_utterance>",
        _smolvlm_config,
        _smolvlm_image_processor,
    ),
    "paligemma": TinyFamily(
        ("<pad>", "<eos>", "<bos>", "<image>"),
        "<pad>",
        "<eos>",
        _paligemma_config,
        _paligemma_image_processor,
        _paligemma_processor,
        bos_token="<bos>",
        named_tokens={"image_token": "<image>"},
    ),
    "llava": TinyFamily(
        ("<pad>", "</s>", "<s>", "<image>"),
        "<pad>",
        "</s>",
        _llava_config,
        _llava_image_processor,
        _llava_processor,
        bos_token="<s>",
        named_tokens={"image_token": "<image>"},
    ),
    "gemma3": TinyFamily(
        (
            "<pad>",
            "<eos>",
            "<bos>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
        "<pad>",
        "<eos>",
        _gemma3_config,
        _gemma3_image_processor,
        _gemma3_processor,
        bos_token="<bos>",
        named_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    ),
    "internvl": TinyFamily(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
        "<|endoftext|>",
        "<|im_end|>",
        _internvl_config,
        _internvl_image_processor,
        _internvl_processor,
        named_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    ),
    "qwen3_5": TinyFamily(
        QWEN_SPECIALS,
        "<|endoftext|>",
        "<|im_end|>",
        _qwen3_5_config,
        _qwen_image_processor,
        _qwen3_vl_processor,  # Qwen3.5 uses the Qwen3-VL processor
    ),
}
