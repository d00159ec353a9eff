"""Tiny random-weight image-text models of real architectures, built offline.

The default CPU configuration must run with no network, so it cannot download a VLM. Instead we build
a model of the *same architecture* (same classes, same token layout, same image processor) from a tiny
config with random weights, and a byte-level BPE tokenizer trained here on robot-instruction text plus
the family's special tokens. :func:`save_tiny_backbone` writes model, tokenizer and image processor with
``save_pretrained`` so that ``from_pretrained(local_dir)`` loads it exactly like a hub id; the VLA code
path is therefore identical for the tiny model and for e.g. ``Qwen/Qwen3-VL-2B-Instruct``.

Families: ``qwen3_vl`` (default, the paper's architecture), ``qwen2_5_vl`` and ``smolvlm``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

# Vocabulary source for the tiny tokenizer. Byte-level BPE can encode any string, so instructions
# outside this corpus still tokenize (into more pieces); the corpus only makes common words short.
_INSTRUCTION_CORPUS = (
    "pick up the red cube and place it in the bin",
    "pick the object and put it on the plate",
    "open the drawer",
    "close the drawer",
    "push the puck to the goal",
    "lift the block",
    "stack the red block on the green block",
    "insert the peg into the hole",
    "assemble the nut onto the peg",
    "press the button",
    "turn the faucet",
    "move the gripper to the target",
    "grasp the can and lift it up",
    "slide the plate into the rack",
    "wipe the table",
    "reach the goal position",
)


@dataclass(frozen=True)
class TinyFamily:
    """How to build one architecture: its special tokens and a config builder given their ids."""

    special_tokens: tuple[str, ...]
    pad_token: str
    eos_token: str
    build_config: Callable[[dict[str, int], int], PretrainedConfig]
    build_image_processor: Callable[[], Any]


def _qwen3_vl_config(ids: dict[str, int], vocab: int) -> PretrainedConfig:
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 2048,
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
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
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
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
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


_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

FAMILIES: dict[str, TinyFamily] = {
    "qwen3_vl": TinyFamily(
        _QWEN_SPECIALS, "<|endoftext|>", "<|im_end|>", _qwen3_vl_config, _qwen_image_processor
    ),
    "qwen2_5_vl": TinyFamily(
        _QWEN_SPECIALS, "<|endoftext|>", "<|im_end|>", _qwen2_5_vl_config, _qwen2_5_image_processor
    ),
    "smolvlm": TinyFamily(
        ("<|endoftext|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"),
        "<|endoftext|>",
        "<end_of_utterance>",
        _smolvlm_config,
        _smolvlm_image_processor,
    ),
}


def build_tiny_tokenizer(
    special_tokens: Iterable[str],
    pad_token: str,
    eos_token: str,
    corpus: Iterable[str] = _INSTRUCTION_CORPUS,
    vocab_size: int = 512,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline; special tokens get the first ids, in order."""
    specials = list(special_tokens)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad_token,
        eos_token=eos_token,
        additional_special_tokens=[t for t in specials if t not in (pad_token, eos_token)],
        padding_side="left",
    )


def build_tiny_backbone(kind: str = "qwen3_vl", seed: int = 0) -> tuple[PreTrainedModel, Any, Any]:
    """``(model, tokenizer, image_processor)`` for a tiny random-weight model of family ``kind``."""
    if kind not in FAMILIES:
        raise ValueError(f"unknown tiny backbone '{kind}'; available: {sorted(FAMILIES)}")
    family = FAMILIES[kind]
    tokenizer = build_tiny_tokenizer(family.special_tokens, family.pad_token, family.eos_token)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in family.special_tokens}
    config = family.build_config(ids, len(tokenizer))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # AutoModel gives the base model (no LM head): the VLA only needs hidden states.
        model = AutoModel.from_config(config)
    return model, tokenizer, family.build_image_processor()


def save_tiny_backbone(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny backbone so that ``AutoModel/AutoTokenizer/AutoImageProcessor.from_pretrained(out_dir)`` work."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, image_processor = build_tiny_backbone(kind, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out


__all__ = ["FAMILIES", "build_tiny_backbone", "build_tiny_tokenizer", "save_tiny_backbone"]
