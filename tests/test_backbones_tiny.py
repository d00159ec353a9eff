"""Tiny Qwen3-VL / Qwen2.5-VL / SmolVLM backbones: offline build, local from_pretrained, a short fit."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from vla_builders import loader, make_batch, module_kwargs

from actionprior.models.backbones import VLMBackbone, frames_per_sample, pick_attn_implementation
from actionprior.models.backbones.tiny import save_tiny_backbone
from actionprior.training.vla_module import VLAModule

KINDS = ("qwen3_vl", "qwen2_5_vl", "smolvlm")


def test_attention_falls_back_to_sdpa_without_cuda():
    if not torch.cuda.is_available():
        assert pick_attn_implementation("auto") == "sdpa"
    assert pick_attn_implementation("eager") == "eager"


@pytest.mark.parametrize("kind", ["qwen3_vl", "smolvlm"])
def test_from_pretrained_local_directory_matches_the_saved_model(tmp_path, kind):
    save_tiny_backbone(kind, tmp_path / kind, seed=3)
    assert (tmp_path / kind / "config.json").is_file() and (tmp_path / kind / "tokenizer.json").is_file()
    a = VLMBackbone.from_pretrained(f"tiny:{kind}", tiny_seed=3)
    b = VLMBackbone.from_pretrained(str(tmp_path / kind))
    assert type(a.model) is type(b.model) and a.hidden_size == b.hidden_size == 64
    batch = make_batch(2)
    extra = torch.randn(2, 3, 64)
    with torch.no_grad():
        ha = a(batch["images"], batch["camera_mask"], batch["instruction"], extra)
        hb = b(batch["images"], batch["camera_mask"], batch["instruction"], extra)
    torch.testing.assert_close(ha, hb)  # same weights, tokenizer and image processing after the round trip


def test_extra_tokens_see_the_image_and_the_instruction():
    bb = VLMBackbone.from_pretrained("tiny:qwen3_vl")
    batch = make_batch(2)
    extra = torch.randn(2, 1, 64)
    with torch.no_grad():
        base = bb(batch["images"], batch["camera_mask"], batch["instruction"], extra)
        other_text = bb(batch["images"], batch["camera_mask"], ["wipe the table", "lift"], extra)
        other_img = bb(255 - batch["images"], batch["camera_mask"], batch["instruction"], extra)
    assert not torch.allclose(base, other_text) and not torch.allclose(base, other_img)


@pytest.mark.parametrize(("kind", "size"), [("qwen3_vl", 64), ("qwen2_5_vl", 56)])
def test_qwen_tensor_preprocessing_equals_the_image_processor(kind, size):
    """Frames already at the processor's size skip PIL: same pixel values, grid and token blocks."""
    adapter = VLMBackbone.from_pretrained(f"tiny:{kind}").adapter
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 2, 3, size, size), dtype=torch.uint8, generator=g)
    mask = torch.tensor([[True, True], [False, True], [True, False]])
    assert adapter.tensor_path_applies(size, size)
    pixels, blocks = adapter.preprocess(images, mask)
    reference = adapter.image_processor(images=frames_per_sample(images, mask), return_tensors="pt")
    torch.testing.assert_close(pixels["pixel_values"], reference["pixel_values"], atol=1e-5, rtol=0)
    assert torch.equal(pixels["image_grid_thw"], reference["image_grid_thw"])
    assert [len(b) for b in blocks] == [2, 1, 1]


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen2_5_vl"])
def test_qwen_layout_tensors_are_the_models_own_and_computed_once_per_layout(kind):
    bb = VLMBackbone.from_pretrained(f"tiny:{kind}")
    calls = []
    compute = bb.adapter._get_rope_index
    bb.adapter._get_rope_index = lambda *a, **k: calls.append(1) or compute(*a, **k)
    batch = make_batch(2)
    inputs = bb.build_inputs(batch["images"], batch["camera_mask"], batch["instruction"], 2)
    assert inputs["position_ids"].shape == (3, 2, inputs["input_ids"].shape[1])
    # Qwen3-VL also gets the vision tower's geometry precomputed (image_* kwargs).
    assert any(k.startswith("image_") and k != "image_grid_thw" for k in inputs) == (kind == "qwen3_vl")
    model_computes = {
        k: v
        for k, v in inputs.items()
        if k == "image_grid_thw" or not k.startswith(("position_ids", "image_"))
    }
    with torch.no_grad():
        ours = bb.model(**inputs).last_hidden_state
        theirs = bb.model(**model_computes).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    again = bb.build_inputs(batch["images"], batch["camera_mask"], batch["instruction"], 2)
    assert torch.equal(again["position_ids"], inputs["position_ids"]) and len(calls) == 1
    other = bb.build_inputs(batch["images"], batch["camera_mask"], ["open the drawer", "lift"], 2)
    assert len(calls) == 2 and other["position_ids"].shape[-1] == other["input_ids"].shape[1]
    # What a policy runs in; a training step must then be able to reuse what was remembered (backward).
    extra = torch.randn(2, 2, 64, requires_grad=True)
    bb.adapter.layout_cache.clear()
    with torch.inference_mode():
        bb(batch["images"], batch["camera_mask"], ["push the puck", "lift"], extra.detach())
    bb(batch["images"], batch["camera_mask"], ["push the puck", "lift"], extra).sum().backward()
    assert extra.grad is not None and extra.grad.abs().sum() > 0
    assert any(p.grad is not None for p in bb.model.visual.parameters())


def test_qwen_frames_that_need_resizing_go_through_the_image_processor():
    adapter = VLMBackbone.from_pretrained("tiny:qwen2_5_vl").adapter  # 14 px patches: 64 px resizes to 56
    images = torch.randint(0, 256, (1, 1, 3, 64, 64), dtype=torch.uint8)
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert not adapter.tensor_path_applies(64, 64)
    pixels, _ = adapter.preprocess(images, mask)
    reference = adapter.image_processor(images=frames_per_sample(images, mask), return_tensors="pt")
    assert torch.equal(pixels["pixel_values"], reference["pixel_values"])
    assert pixels["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_unknown_tiny_family_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown tiny backbone 'llama9'"):
        VLMBackbone.from_pretrained("tiny:llama9")
    bb = VLMBackbone.from_pretrained("tiny:qwen3_vl")
    batch = make_batch(2)
    with pytest.raises(ValueError, match=r"extra_embeds must be \[B, E, 64\]"):
        bb(batch["images"], batch["camera_mask"], batch["instruction"], torch.randn(2, 1, 32))


def _fixed_loss(module: VLAModule) -> float:
    """L_pred on a fixed batch with fixed flow noise: a low-variance before/after comparison."""
    batch = make_batch(6)
    values = []
    with torch.no_grad(), torch.random.fork_rng():
        for seed in range(3):
            torch.manual_seed(seed)
            values.append(float(module.model.loss(batch, 0.0).pred))
    return sum(values) / len(values)


@pytest.mark.slow  # ~15 s of CPU each on 2 cores
@pytest.mark.parametrize("kind", KINDS)
def test_short_fit_loss_falls(kind):
    torch.manual_seed(0)
    # The no-prior configuration: this test is about the backbone learning, not about a Stage 1 prior.
    module = VLAModule(
        **module_kwargs(backbone=f"tiny:{kind}", action_prior="scratch", lr=3e-3, lr_backbone=1e-3)
    )
    before = _fixed_loss(module)
    trainer = L.Trainer(
        max_steps=15,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, loader(size=12, batch_size=6))
    after = _fixed_loss(module)
    assert after < 0.8 * before, f"{kind}: L_pred {before:.3f} -> {after:.3f}"
