"""`make bench-train ARGS=--memory`: the analytic memory model of full fine-tuning vs LoRA vs frozen backbone."""

from __future__ import annotations

import pytest

from benchmarks.train_memory import Architecture, analytic_table, markdown, mode_overrides, token_layout
from benchmarks.train_throughput import registry_and_normalization, stage2_kwargs


@pytest.fixture(scope="module")
def arch() -> Architecture:
    from benchmarks.train_throughput import RunSpec

    registry, normalization = registry_and_normalization()
    stage2 = stage2_kwargs(RunSpec(backbone="random:qwen3_vl_2b"), registry, normalization)
    stage2["vla"] = {**stage2["vla"], **mode_overrides("lora")["vla"]}
    return Architecture.of("random:qwen3_vl_2b", stage2)


def test_parameter_counts_of_the_2b_architecture(arch):
    assert 2.0e9 < arch.backbone_params < 2.3e9  # Qwen3-VL-2B: 2.1 B
    # rank 16 on q, k, v, o, gate, up, down of 28 layers (width 2048, key/value 1024, MLP 6144)
    per_layer = (2048 + 2048) * 2 + (2048 + 1024) * 2 + (2048 + 6144) * 3
    assert arch.lora_params == 28 * 16 * per_layer
    assert arch.trainable("full") == arch.backbone_params + arch.action_params
    assert arch.trainable("lora") == arch.lora_params + arch.action_params
    assert arch.trainable("frozen") == arch.action_params


def test_the_analytic_figures_order_the_modes_and_scale_with_dtype(arch):
    tokens, patches = token_layout(256, 2, 4)
    assert patches == 2 * 16 * 16 and tokens > patches // 4
    full = arch.analytic("full", "fp32", 32, tokens, patches, False)
    # fp32 AdamW: weights + gradients + two moments = 16 bytes per trainable parameter, plus activations
    assert full["weights_gb"] + full["grads_gb"] + full["optimizer_gb"] == pytest.approx(
        16 * arch.trainable("full") / 1e9
    )
    for dtype in ("bf16", "bf16-mixed", "fp32"):
        for ckpt in (False, True):
            f, lo, fr = (
                arch.analytic(m, dtype, 32, tokens, patches, ckpt)["total_gb"]
                for m in ("full", "lora", "frozen")
            )
            assert f > lo > fr
    off = arch.analytic("lora", "bf16", 32, tokens, patches, False)["activations_gb"]
    on = arch.analytic("lora", "bf16", 32, tokens, patches, True)["activations_gb"]
    assert on < off / 5  # checkpointing keeps one layer's activations, not 28
    assert arch.analytic("lora", "fp32", 1, tokens, patches, False)["activations_gb"] == pytest.approx(
        2 * arch.analytic("lora", "bf16", 1, tokens, patches, False)["activations_gb"]
    )
    rows = analytic_table(arch, tokens, patches, (1, 32))
    assert len(rows) == 2 * 2 * 3 * 3
    text = markdown({"backbone": "random:qwen3_vl_2b", "lora_rank": 16, "image_size": 256, "cameras": 2,
                     "tokens": tokens, "patches": patches, "architecture": arch.__dict__, "analytic": rows})  # fmt: skip
    assert text.count("\n| full |") == 12 and "LoRA adapters 17.4 M" in text
