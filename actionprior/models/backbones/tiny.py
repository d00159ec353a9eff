"""Random-weight image-text models of real architectures, built offline.

The default CPU configuration must run with no network, so it cannot download a VLM. Instead we build
a model of the *same architecture* (same classes, same token layout, same processor) from a tiny config
with random weights, and a byte-level BPE tokenizer trained here on robot-instruction text plus the
family's special tokens. :func:`save_tiny_backbone` writes model and processor (tokenizer, image
processor, processor config) with ``save_pretrained`` so that ``from_pretrained(local_dir)`` loads it
exactly like a hub id; the VLA code path is therefore identical for the tiny model and a hub model.

Tiny families (``tiny:<family>``): ``qwen3_vl`` (default, the paper's architecture), ``qwen2_5_vl`` and
``smolvlm`` (adapter paths); ``paligemma``, ``llava``, ``gemma3``, ``internvl`` and ``qwen3_5`` (generic,
processor-driven path). ``random:qwen3_vl_2b`` is the full-size Qwen3-VL-2B-Instruct architecture with
random weights (2.1 B parameters; for GPU memory/throughput checks without a download).

The families live in :mod:`~actionprior.models.backbones.tiny_families`, the tokenizer in
:mod:`~actionprior.models.backbones.tiny_tokenizer`, the full-size builds in
:mod:`~actionprior.models.backbones.random_backbones`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, PreTrainedModel

from actionprior.models.backbones.tiny_families import FAMILIES
from actionprior.models.backbones.tiny_tokenizer import build_tiny_tokenizer


def build_tiny_backbone(kind: str = "qwen3_vl", seed: int = 0) -> tuple[PreTrainedModel, Any, Any, Any]:
    """``(model, tokenizer, image_processor, processor or None)`` for a tiny random-weight ``kind``."""
    if kind not in FAMILIES:
        raise ValueError(f"unknown tiny backbone '{kind}'; available: {sorted(FAMILIES)}")
    family = FAMILIES[kind]
    tokenizer = build_tiny_tokenizer(
        family.special_tokens,
        family.pad_token,
        family.eos_token,
        bos_token=family.bos_token,
        named_tokens=family.named_tokens,
    )
    image_processor = family.build_image_processor()
    processor = family.build_processor(image_processor, tokenizer) if family.build_processor else None
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in family.special_tokens}
    config = family.build_config(ids, len(tokenizer))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # AutoModel gives the base model (no LM head): the VLA only needs hidden states.
        model = AutoModel.from_config(config)
    return model, tokenizer, image_processor, processor


def save_tiny_backbone(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny backbone so that ``AutoModel/AutoTokenizer/AutoImageProcessor.from_pretrained(out_dir)``
    (and the processor, where the family has one) load it like a hub checkpoint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, image_processor, processor = build_tiny_backbone(kind, seed)
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    else:
        tokenizer.save_pretrained(out)
        image_processor.save_pretrained(out)
    return out


__all__ = ["FAMILIES", "build_tiny_backbone", "build_tiny_tokenizer", "save_tiny_backbone"]
