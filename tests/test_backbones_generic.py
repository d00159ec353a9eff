"""The processor-driven (generic) backbone path: five families beyond the adapters, trained a few steps,
checkpointed and rebuilt offline into a Policy; token placement proven against the Qwen3-VL adapter;
models that cannot work refused at construction; the full-size random Qwen3-VL-2B config."""

from __future__ import annotations

import shutil

import lightning as L
import numpy as np
import pytest
import torch
from policy_builders import HISTORY, IMAGE, raw_observation
from vla_builders import loader, make_batch, module_kwargs

from actionprior.inference.policy import Policy
from actionprior.models.backbones import ADAPTERS, UnsupportedBackbone, VLMBackbone
from actionprior.models.backbones.random_backbones import QWEN3_VL_2B, qwen3_vl_2b_config
from actionprior.models.backbones.tiny import FAMILIES, build_tiny_tokenizer, save_tiny_backbone
from actionprior.training.vla_module import VLAModule

NEW_FAMILIES = ("paligemma", "llava", "gemma3", "internvl", "qwen3_5")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_tiny_family_runs_and_a_masked_extra_token_is_left_out(family):
    """Each family's path; "no history token" (extra_mask False) equals calling without that token."""
    bb = VLMBackbone.from_pretrained(f"tiny:{family}")
    assert bb.path == ("adapter" if family in ADAPTERS else "generic")
    batch = make_batch(2)
    images, cameras, text = batch["images"], batch["camera_mask"], batch["instruction"]
    extra = torch.randn(2, 3, 64)
    no_history = torch.tensor([[False, True, True], [False, True, True]])
    with torch.no_grad():
        masked = bb(images, cameras, text, extra, no_history)
        without = bb(images, cameras, text, extra[:, 1:])
        with_history = bb(images, cameras, text, extra)
    assert masked.shape == (2, 3, 64) and torch.isfinite(masked).all()
    torch.testing.assert_close(masked[:, 1:], without, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(with_history[:, 1:], without, atol=1e-4)  # the history token is seen


@pytest.mark.slow  # 8-30 s each on the shared 2-core machine (Lightning fit + checkpoint + Policy rebuild)
@pytest.mark.parametrize("family", NEW_FAMILIES + tuple(sorted(set(FAMILIES) - set(NEW_FAMILIES))))
def test_family_trains_checkpoints_and_acts_offline(tmp_path, monkeypatch, family):
    """A local save_pretrained folder, exactly as a hub model: Stage 2 steps, checkpoint, offline Policy."""
    folder = save_tiny_backbone(family, tmp_path / family, seed=1)
    torch.manual_seed(0)
    module = VLAModule(
        **module_kwargs(backbone=str(folder), use_history=True, action_prior="scratch", lr_backbone=1e-2)
    )
    backbone = module.model.backbone
    path = "adapter" if family in ADAPTERS else "generic"
    assert backbone.path == path and backbone.model.config.model_type == family
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader(size=8, batch_size=4))
    after = backbone.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # The text tower and the vision tower both learned: gradients reached the image tokens too.
    vision = [k for k in changed if "vision" in k or "visual" in k]
    assert vision and len(vision) < len(changed)
    ckpt = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(ckpt)

    shutil.rmtree(folder)  # the checkpoint alone must rebuild the backbone, with no hub access
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    policy = Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY)
    rebuilt = policy.model.backbone
    assert rebuilt.path == path and type(rebuilt.model) is type(backbone.model)
    for key, value in module.model.state_dict().items():
        torch.testing.assert_close(
            policy.model.state_dict()[key], value.to(policy.model.state_dict()[key].device)
        )
    actions = [policy.act(raw_observation("synth_arm7", seed=s)) for s in range(3)]
    assert all(a.shape == (7,) and np.isfinite(a).all() for a in actions)


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen2_5_vl"])
def test_generic_path_places_tokens_like_the_adapter(kind):
    """Same weights, same inputs: the processor-driven path gives the adapter's tokens and hidden states."""
    adapter = VLMBackbone.from_pretrained(f"tiny:{kind}", tiny_seed=2)
    generic = VLMBackbone.from_pretrained(f"generic:tiny:{kind}", tiny_seed=2)
    assert (adapter.path, generic.path) == ("adapter", "generic")
    batch = make_batch(3)
    images, cameras, text = batch["images"], batch["camera_mask"], batch["instruction"]
    assert cameras.sum(1).tolist() == [2, 1, 2]  # one sample with a camera missing
    extra_mask = torch.tensor([[True, True, True], [False, True, True], [True, True, True]])
    a = adapter.prepare(images, cameras, text, 3, extra_mask).model_inputs
    g = generic.prepare(images, cameras, text, 3, extra_mask)
    for b in range(3):  # real tokens of each row; the masked extra is hidden there and absent here
        ids_a = a["input_ids"][b][a["attention_mask"][b].bool()].tolist()
        ids_g = g.model_inputs["input_ids"][b][g.model_inputs["attention_mask"][b].bool()].tolist()
        assert ids_a == ids_g
    assert g.extra_present.tolist() == extra_mask.tolist()
    extra = torch.randn(3, 3, 64)
    with torch.no_grad():
        ha = adapter(images, cameras, text, extra, extra_mask)
        hg = generic(images, cameras, text, extra, extra_mask)
    torch.testing.assert_close(hg[extra_mask], ha[extra_mask], atol=1e-5, rtol=1e-4)
    assert torch.equal(hg[~extra_mask], torch.zeros_like(hg[~extra_mask]))
    # Gradients reach the extra embeddings through the generic path's scatter.
    extra.requires_grad_(True)
    generic(images, cameras, text, extra, extra_mask).sum().backward()
    assert extra.grad[extra_mask].abs().sum() > 0 and extra.grad[~extra_mask].abs().sum() == 0


def test_generic_rows_do_not_depend_on_the_batch():
    """Right padding, extras left out when masked: a sample's features are its own, batched or alone."""
    bb = VLMBackbone.from_pretrained("tiny:gemma3")
    batch = make_batch(3)
    extra = torch.randn(3, 2, 64)
    mask = torch.tensor([[True, True], [False, True], [True, True]])
    with torch.no_grad():
        together = bb(batch["images"], batch["camera_mask"], batch["instruction"], extra, mask)
        for b in range(3):
            alone = bb(
                batch["images"][b : b + 1],
                batch["camera_mask"][b : b + 1],
                batch["instruction"][b : b + 1],
                extra[b : b + 1],
                mask[b : b + 1],
            )
            torch.testing.assert_close(together[b], alone[0], atol=1e-5, rtol=1e-4)


def _save_model_only(config, folder):
    from transformers import AutoModel

    AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


def test_models_that_cannot_work_are_refused_at_construction(tmp_path):
    from transformers import CLIPConfig, LlamaConfig

    text_only = _save_model_only(
        LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
        ),
        tmp_path / "llama",
    )
    with pytest.raises(UnsupportedBackbone, match=r"model_type 'llama'\) is a text-only model"):
        VLMBackbone.from_pretrained(text_only)

    clip = _save_model_only(
        CLIPConfig(
            text_config={
                "vocab_size": 64,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": 16,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 16,
            },
            projection_dim=16,
        ),
        tmp_path / "clip",
    )
    with pytest.raises(UnsupportedBackbone, match=r"model_type 'clip'\).*outputs carry no hidden states"):
        VLMBackbone.from_pretrained(clip)

    # An image-text model whose folder holds no image processor: no image path.
    folder = save_tiny_backbone("llava", tmp_path / "llava")
    for name in ("preprocessor_config.json", "processor_config.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(UnsupportedBackbone, match=r"model_type 'llava'.*no image processor"):
        VLMBackbone.from_pretrained(str(folder))

    # A processor that is only a tokenizer.
    tiny = VLMBackbone.from_pretrained("tiny:llava")
    tokenizer = build_tiny_tokenizer(["<pad>", "</s>"], "<pad>", "</s>")
    with pytest.raises(
        UnsupportedBackbone, match=r"model_type 'llava'.*no image processor and tokenizer pair"
    ):
        VLMBackbone(tiny.model, processor=tokenizer, path="generic")
    with pytest.raises(ValueError, match="model_type 'llava', which has no adapter"):
        VLMBackbone(tiny.model, processor=tiny.processor, path="adapter")


def test_random_qwen3_vl_2b_is_the_full_size_architecture():
    """Built on the meta device: the real config's parameter count, no 2 B allocation."""
    from transformers import AutoModel

    config = qwen3_vl_2b_config()
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        2048,
        28,
        16,
        8,
    )
    assert (vision.depth, vision.hidden_size, vision.patch_size, list(vision.deepstack_visual_indexes)) == (
        24,
        1024,
        16,
        [5, 11, 17],
    )
    assert text.vocab_size == QWEN3_VL_2B["text_config"]["vocab_size"] > config.image_token_id
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert 2.0e9 < n < 2.2e9, n
    assert model.get_input_embeddings().weight.shape == (151936, 2048)
