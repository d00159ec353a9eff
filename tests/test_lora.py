"""LoRA on the VLA backbone (vla.lora, peft): what trains, what checkpoints hold, merging on export, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from policy_builders import raw_observation
from safetensors.torch import load_file
from vla_builders import loader, make_batch, module_kwargs, registry

from actionprior.checkpoint import CheckpointMismatchError, StoredCheckpoint
from actionprior.inference.export import export_policy
from actionprior.inference.policy import Policy
from actionprior.models.lora import LoRAConfig, has_adapters
from actionprior.models.vla import VLAConfig
from actionprior.training.lightning_cli import read_stage_config
from actionprior.training.vla_module import VLAModule

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
LORA = LoRAConfig(rank=4, alpha=8.0, dropout=0.0)


def _module(backbone: str = "tiny:qwen3_vl", lora: LoRAConfig | None = LORA, **kw: Any) -> VLAModule:
    torch.manual_seed(0)
    module = VLAModule(**module_kwargs(backbone=backbone, lora=lora, **kw))
    module.prior_source = "test"  # as if ActionPriorTransfer had loaded a prior
    return module


def _fit(module: VLAModule, steps: int) -> None:
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader(size=8))


def _save(module: VLAModule, path: Path) -> Path:
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("backbone", ["tiny:qwen3_vl", "tiny:paligemma"])  # the adapter and the generic path
def test_a_lora_step_changes_only_the_adapters_and_the_action_module(backbone):
    module = _module(backbone)
    assert module.model.backbone.path == ("adapter" if "qwen" in backbone else "generic")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    in_backbone = {n for n in trainable if n.startswith("model.backbone.")}
    assert in_backbone and all(".lora_" in n for n in in_backbone)
    assert {n for n in trainable if not n.startswith("model.backbone.")} == {
        n for n, _ in module.named_parameters() if not n.startswith("model.backbone.")
    }  # the action module, query tokens and latent head train fully
    # Adapters on the language model's 7 projections per layer, none on the vision tower.
    layers = module.model.backbone.model.get_decoder().config.num_hidden_layers
    adapted = {n.split(".lora_")[0] for n in in_backbone}
    assert len(adapted) == 7 * layers and not any("vision" in n or "visual" in n for n in adapted)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _fit(module, 3)
    after = module.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    base = [k for k in after if k.startswith("model.backbone.") and ".lora_" not in k]
    assert base and not changed & set(base)  # every base backbone weight bit-identical
    assert any(".lora_B" in k for k in changed) and "model.queries" in changed
    assert any(k.startswith("model.head.") for k in changed)


def test_the_vision_tower_switch_adapts_its_linear_layers():
    module = _module(lora=LoRAConfig(rank=2, target_modules=["q_proj"], vision_tower=True))
    adapted = {
        n.split(".lora_")[0] for n, p in module.named_parameters() if p.requires_grad and ".lora_" in n
    }
    assert any(".visual." in n for n in adapted) and any("language_model" in n for n in adapted)
    assert all(n.endswith("q_proj") for n in adapted if "language_model" in n)


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"\['w_nope', 'fc_gone'\] do not exist in the language model"):
        _module(lora=LoRAConfig(target_modules=["q_proj", "w_nope", "fc_gone"]))
    with pytest.raises(ValueError, match="freeze_backbone and vla.lora are both set"):
        _module(freeze_backbone=True)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="unknown keys"):
        VLAConfig.from_dict({"lora": {"rank": 4, "ranks": 2}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_qlora_is_refused_on_cpu_in_one_line():
    config = read_stage_config(CONFIGS / "stage2.yaml", CONFIGS / "finetune" / "qlora.yaml")
    vla = VLAConfig.from_dict(config["model"]["init_args"]["vla"])
    assert vla.lora is not None and vla.lora.quantize == "nf4"
    with pytest.raises(RuntimeError, match="CUDA GPUs only") as info:
        _module(lora=vla.lora)
    assert "\n" not in str(info.value)


def test_the_lora_config_file_parses_into_the_model_config():
    config = read_stage_config(CONFIGS / "stage2.yaml", CONFIGS / "finetune" / "lora.yaml")
    lora = VLAConfig.from_dict(config["model"]["init_args"]["vla"]).lora
    assert lora == LoRAConfig(rank=16, alpha=32.0, dropout=0.05)
    assert config["model"]["init_args"]["vla"]["backbone"] == "tiny:qwen3_vl"


def test_a_lora_checkpoint_holds_what_changed_and_rebuilds_on_its_base(tmp_path):
    module = _module()
    _fit(module, 2)
    ckpt = torch.load(_save(module, tmp_path / "lora.ckpt"), weights_only=True)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    params = {n for n, _ in module.named_parameters()}
    assert {k for k in ckpt["state_dict"] if k in params} == trainable  # no frozen base weight
    base = ckpt["actionprior"]["vla"]["lora_base"]
    assert base["backbone"] == "tiny:qwen3_vl" and base["omitted"] > 0 and len(base["fingerprint"]) == 16
    full = sum(v.numel() for v in module.state_dict().values())
    assert sum(v.numel() for v in ckpt["state_dict"].values()) < full / 2
    # Rebuilt from the checkpoint: the base from its source, checked by fingerprint, plus the trained weights.
    vla = StoredCheckpoint.read(tmp_path / "lora.ckpt").build_vla()
    mine = {k[len("model.") :]: v for k, v in module.state_dict().items()}
    assert [k for k, v in vla.state_dict().items() if not torch.equal(v, mine[k])] == []
    # Other base weights than the adapters were trained on: refused, naming both fingerprints.
    ckpt["actionprior"]["vla"]["lora_base"]["fingerprint"] = "0" * 16
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointMismatchError, match="trained on base weights with fingerprint 0000"):
        StoredCheckpoint.read(tmp_path / "other.ckpt").build_vla()
    resumed = _module()
    with pytest.raises(CheckpointMismatchError, match="LoRA adapters were trained on other base weights"):
        resumed.on_load_checkpoint(ckpt)


def _perturb_adapters(module: VLAModule, seed: int = 1) -> None:
    """Non-zero adapters (lora_B starts at 0), large enough to change every action."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.model.backbone.named_parameters():
            if ".lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_export_merges_the_adapters_and_the_policy_acts_the_same(tmp_path):
    module = _module(use_history=False)
    _perturb_adapters(module)
    ckpt = _save(module, tmp_path / "lora.ckpt")
    merged = export_policy(ckpt, tmp_path / "merged")
    kept = export_policy(ckpt, tmp_path / "kept", keep_adapters=True)
    merged_meta = json.loads((merged / "actionprior.json").read_text())
    assert merged_meta["payload"]["vla"]["config"]["lora"] is None and merged_meta["lora_merged_layers"] == 14
    assert not any(".lora_" in k or "base_layer" in k for k in load_file(merged / "model.safetensors"))
    assert any(".lora_B" in k for k in load_file(kept / "model.safetensors"))
    kw = dict(image_size=32, history_len=3, seed=3)
    a, b, c = Policy.from_checkpoint(ckpt, **kw), Policy.load(merged, **kw), Policy.load(kept, **kw)
    assert not has_adapters(b.model) and has_adapters(c.model)
    for step in range(3):
        obs = raw_observation("synth_arm8", seed=step)
        acts = [p.act(obs) for p in (a, b, c)]
        np.testing.assert_array_equal(acts[0], acts[2])
        np.testing.assert_allclose(acts[1], acts[0], rtol=1e-4, atol=1e-4)
    # The latent z' the action head is conditioned on (the untrained head's adaLN-zero conditioning hides it
    # from the actions): equal with the adapters merged or apart, and the adapters do change it.
    batch = make_batch(4)
    with torch.no_grad():
        z = [p.model.predict_latent(batch) for p in (a, b, c)]
        z_base = export_policy(_save(_module(use_history=False), tmp_path / "base.ckpt"), tmp_path / "base")
        z_base = Policy.load(z_base, **kw).model.predict_latent(batch)
    torch.testing.assert_close(z[2], z[0], rtol=0, atol=0)
    torch.testing.assert_close(z[1], z[0], rtol=1e-4, atol=1e-5)
    assert (z_base - z[0]).abs().max() > 1e-2


def test_init_from_policy_adds_a_new_robot_and_keeps_the_known_ones(tmp_path):
    from actionprior.data.synthetic import synthetic_registry
    from actionprior.embodiments import EmbodimentRegistry

    known = synthetic_registry()
    old = EmbodimentRegistry([known[n] for n in known.names[:2]])  # the policy knows two of the three
    torch.manual_seed(0)
    policy_module = VLAModule(**module_kwargs(old, lora=LORA))
    _perturb_adapters(policy_module)
    folder = export_policy(_save(policy_module, tmp_path / "p.ckpt"), tmp_path / "policy")
    # The new run's statistics for the known robots are the policy's (the CLI sets data.stats_from).
    new_norm = module_kwargs(known)["normalization"]
    old_norm = module_kwargs(old)["normalization"]
    new_norm["stats"].update({n: old_norm["stats"][n] for n in old.names})
    run = _module(normalization=new_norm)
    report = run.init_from_policy(folder)
    assert report.kept == list(old.names) and report.added == [known.names[2]]
    assert run.init_policy == str(folder)
    policy = StoredCheckpoint.read(tmp_path / "p.ckpt").build_vla()
    from actionprior.models.lora import merge_lora

    merge_lora(policy)
    theirs = policy.state_dict()
    mine = run.model.state_dict()
    for key in (
        "queries",
        "latent_head.1.weight",
        "backbone.model.language_model.layers.0.mlp.up_proj.weight",
    ):
        torch.testing.assert_close(
            mine[key.replace("up_proj.", "up_proj.base_layer.")], theirs[key], rtol=0, atol=0
        )
    assert all(torch.count_nonzero(v) == 0 for k, v in mine.items() if ".lora_B" in k)  # fresh adapters
    # A policy of another architecture is refused, naming the setting.
    other = _module(num_queries=3)
    with pytest.raises(CheckpointMismatchError, match="vla.num_queries is 2 in the policy but 3 here"):
        other.init_from_policy(folder)
    assert registry().names == known.names


def test_load_from_checkpoint_rebuilds_a_lora_module_on_its_base(tmp_path):
    module = _module()
    _fit(module, 1)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = VLAModule.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    mine = module.state_dict()
    assert [k for k, v in loaded.state_dict().items() if not torch.equal(v, mine[k])] == []
