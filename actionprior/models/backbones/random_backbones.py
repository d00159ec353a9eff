"""Full-size architectures with random weights (``random:<name>``), for GPU memory and throughput checks without a
download; they take their tiny family's tokenizer and processor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from actionprior.models.backbones.tiny import build_tiny_backbone
from actionprior.models.backbones.tiny_families import FAMILIES, QWEN_SPECIALS
from actionprior.models.backbones.tiny_tokenizer import build_tiny_tokenizer

# Qwen/Qwen3-VL-2B-Instruct's architecture, from its config.json on the Hugging Face hub
# (https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct/blob/main/config.json; cross-checked against public
# re-implementations that quote it: 28 layers, width 2048, 16 query / 8 key-value heads of 128, MLP 6144,
# vocabulary 151936, RoPE theta 5e6 with interleaved M-RoPE sections 24/20/20; a 24-block 1024-wide ViT with
# 16 px patches, 2x2 merge, 2-frame temporal patches, DeepStack taps after blocks 5, 11 and 17).
QWEN3_VL_2B: dict[str, Any] = {
    "text_config": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "vocab_size": 151936,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "tie_word_embeddings": True,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 2048,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
    },
    "tie_word_embeddings": True,
}


def qwen3_vl_2b_config(ids: dict[str, int] | None = None) -> PretrainedConfig:
    """The Qwen3-VL-2B-Instruct config; special token ids from ``ids`` (default: the tiny Qwen tokenizer's,
    which sit inside the 151936-token vocabulary, so the tiny tokenizer and processor drive it)."""
    from transformers import Qwen3VLConfig

    if ids is None:
        tokenizer = build_tiny_tokenizer(QWEN_SPECIALS, "<|endoftext|>", "<|im_end|>")
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(QWEN3_VL_2B["text_config"], pad_token_id=ids["<|endoftext|>"])
    return Qwen3VLConfig(
        text_config=text,
        vision_config=dict(QWEN3_VL_2B["vision_config"]),
        tie_word_embeddings=QWEN3_VL_2B["tie_word_embeddings"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


RANDOM_BACKBONES: dict[str, tuple[str, Callable[[dict[str, int]], PretrainedConfig]]] = {
    "qwen3_vl_2b": ("qwen3_vl", qwen3_vl_2b_config),
}


def build_random_backbone(name: str, seed: int = 0) -> tuple[PreTrainedModel, Any, Any, Any]:
    """A full-size architecture (``random:<name>``) with random weights and its tiny family's processor."""
    if name not in RANDOM_BACKBONES:
        raise ValueError(f"unknown random backbone '{name}'; available: {sorted(RANDOM_BACKBONES)}")
    family_name, build_config = RANDOM_BACKBONES[name]
    _, tokenizer, image_processor, processor = build_tiny_backbone(family_name, seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[family_name].special_tokens}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModel.from_config(build_config(ids))
    return model, tokenizer, image_processor, processor
