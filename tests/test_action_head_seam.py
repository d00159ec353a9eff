"""The action-head seam: a second head defined in one test file (tests/mlp_head.py) trains, checkpoints, exports
and serves through the unchanged VLAModule, checkpoint code and Policy; what it lacks is refused in one line."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from mlp_head import MLPHeadConfig, MLPRegressionHead
from policy_builders import raw_observation
from vla_builders import TINY_PRIOR, loader, make_batch, normalization, registry

from actionprior.checkpoint import CheckpointError, StoredCheckpoint
from actionprior.inference.client import PolicyClient
from actionprior.inference.execution import ExecutionConfig
from actionprior.inference.export import export_policy
from actionprior.inference.policy import Policy
from actionprior.inference.server import PolicyServer
from actionprior.models.action_head import ActionHead, can_guide, has_latent, head_type
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.vla import VLAConfig
from actionprior.training.vla_module import VLAModule

MLP = MLPHeadConfig(cond_dim=16, hidden=32)


def _module(**vla: object) -> VLAModule:
    reg = registry()
    torch.manual_seed(0)
    settings = dict(backbone="tiny:qwen3_vl", num_queries=2, head_hidden=32, head="mlp_regression")
    settings.update({"action_prior": "scratch", **vla})
    return VLAModule(
        vla=VLAConfig(**settings),  # type: ignore[arg-type]
        head=MLP,  # type: ignore[arg-type]
        chunk_len=4,
        lr=3e-3,
        lr_backbone=1e-4,
        warmup_steps=0,
        train_error_every_n_steps=0,
        camera_names=["scene", "wrist"],
        embodiments=reg.to_dicts(),
        normalization=normalization(reg),
    )


def test_both_heads_satisfy_the_protocol_with_their_own_capabilities() -> None:
    reg = registry()
    prior = ActionPrior(ActionPriorConfig(**TINY_PRIOR).bind(reg, 4))
    mlp = MLPRegressionHead(MLP.bind(reg, 4))
    assert isinstance(prior, ActionHead) and isinstance(mlp, ActionHead)
    assert (has_latent(prior), can_guide(prior)) == (True, True)
    assert (has_latent(mlp), can_guide(mlp)) == (False, False)
    assert head_type("mlp_regression").head_class is MLPRegressionHead
    with pytest.raises(ValueError, match=r"unknown action head 'fast_tokens'; registered heads: \["):
        head_type("fast_tokens")
    # A config (trusted) may name the module that registers its head; a stored config (untrusted) may not.
    assert VLAConfig(head="mlp_head:mlp_regression", action_prior="scratch").head == "mlp_regression"
    with pytest.raises(ValueError, match="names its action head by its registered name, got 'os:system'"):
        VLAConfig.from_dict({"head": "os:system"})


def test_a_second_head_trains_checkpoints_exports_and_serves(tmp_path) -> None:
    module = _module()
    assert type(module.model.head) is MLPRegressionHead and module.hparams["head"] == {
        "cond_dim": 16,
        "hidden": 32,
    }
    batch = make_batch(8, seed=1)
    with torch.no_grad():
        before = float(module.model.loss(batch, 0.0).pred)
    trainer = L.Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module, train_dataloaders=loader(size=8, batch_size=4, seed=1))
    with torch.no_grad():
        after = float(module.model.loss(batch, 0.0).pred)
    assert after < 0.5 * before, (before, after)  # it learnt the synthetic chunks

    path = tmp_path / "mlp.ckpt"
    trainer.save_checkpoint(path)
    stored = StoredCheckpoint.read(path)
    assert stored.stage == 2 and stored.head_name == "mlp_regression"
    assert (
        isinstance(stored.head_config, MLPHeadConfig)
        and stored.head_config.action_dims == registry().action_dims
    )
    with pytest.raises(CheckpointError, match="its action head is 'mlp_regression', not the action prior"):
        stored.prior_config  # noqa: B018

    options = dict(image_size=32, history_len=0, seed=4)
    policy = Policy.from_checkpoint(path, **options)
    folder = export_policy(path, tmp_path / "exported")
    exported = Policy.load(folder, **options)
    chunk = (
        module.model.to("cpu")
        .eval()
        .sample_actions(policy.build_batch(raw_observation("synth_arm4"), policy.history))
    )
    with (
        PolicyServer(Policy.from_checkpoint(path, **options), port=0) as server,
        PolicyClient(server.url) as client,
    ):
        for p in (policy, exported, client):
            p.reset()
        for step in range(6):
            obs = raw_observation("synth_arm4", seed=step)
            action = policy.act(obs)
            np.testing.assert_array_equal(exported.act(obs), action)
            np.testing.assert_array_equal(client.act(obs), action)
            if step == 0:  # the trained head's chunk, un-normalised
                first = policy.normalizer.unnormalize("synth_arm4", "action", chunk[0, 0, :4].numpy())
                np.testing.assert_allclose(action, first, rtol=1e-5, atol=1e-5)


def test_what_a_head_lacks_is_refused_in_one_line(tmp_path) -> None:
    with pytest.raises(
        ValueError,
        match=r"vla.head 'mlp_regression' is not the Stage 1 action prior: set vla.action_prior: scratch",
    ):
        _module(action_prior="stage1")
    with pytest.raises(ValueError, match=r"the history token needs an action head with a latent \(encode\)"):
        _module(use_history=True)
    with pytest.raises(ValueError, match="`prior` .* was set; give the head's settings under `head`"):
        VLAModule(vla=VLAConfig(head="mlp_regression", action_prior="scratch"), prior=ActionPriorConfig())
    module = _module()
    with pytest.raises(ValueError, match=r"has no latent \(encode\)"):
        module.model.loss(make_batch(2), aux_weight=0.5)
    path = tmp_path / "mlp.ckpt"
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(
        ValueError,
        match="MLPRegressionHead has no guided sampling \\(sample_rtc\\), which rtc execution needs",
    ):
        Policy.from_checkpoint(path, image_size=32, execution=ExecutionConfig("rtc"))
    with pytest.raises(ValueError, match="has no compiled sampler"):
        Policy.from_checkpoint(path, image_size=32, compile_decoder=True)
    checkpoint["actionprior"]["vla"]["config"]["head"] = "not_registered"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"malformed \(unknown action head 'not_registered'"):
        StoredCheckpoint.read(path)


def _as_format_2(checkpoint: dict) -> dict:
    """A checkpoint dict as the code before the head seam wrote it (format 2)."""
    old = {**checkpoint, "actionprior": dict(checkpoint["actionprior"])}
    payload = old["actionprior"]
    source = payload.pop("prior_source")
    if "vla" in payload:
        payload["vla"] = {**payload["vla"], "prior_source": source}
        payload["vla"].pop("image")
        payload["vla"]["config"] = {k: v for k, v in payload["vla"]["config"].items() if k != "head"}
        old["state_dict"] = {
            k.replace("model.head.", "model.prior."): v for k, v in old["state_dict"].items()
        }
    else:
        payload["init_from"] = source
    payload["format_version"] = 2
    return old


def test_format_2_checkpoints_load_act_and_resume_as_before(tmp_path) -> None:
    from policy_builders import write_tiny_checkpoint

    new = write_tiny_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(new, weights_only=True)
    checkpoint["actionprior"]["prior_source"] = "runs/stage1/last.ckpt"
    torch.save(checkpoint, new)
    old = tmp_path / "old.ckpt"
    torch.save(_as_format_2(checkpoint), old)
    assert any(k.startswith("model.prior.") for k in torch.load(old, weights_only=True)["state_dict"])
    stored = StoredCheckpoint.read(old)
    assert stored.payload["format_version"] == 3 and stored.prior_source == "runs/stage1/last.ckpt"
    assert (
        stored.head_name == "action_prior" and stored.prior_config == StoredCheckpoint.read(new).prior_config
    )
    a, b = (Policy.from_checkpoint(p, image_size=32, history_len=3, seed=2) for p in (new, old))
    for p in (a, b):
        p.reset()
    for step in range(5):
        obs = raw_observation("synth_arm7", seed=step)
        np.testing.assert_array_equal(a.act(obs), b.act(obs))
    # Resuming: the module's checkpoint hook upgrades the dict before Lightning loads its weights.
    resumed = torch.load(old, weights_only=True)
    module = VLAModule(
        vla=VLAConfig(backbone="tiny:qwen3_vl", head_hidden=32, use_history=True),
        prior=ActionPriorConfig(**TINY_PRIOR),
        chunk_len=4,
        camera_names=["scene", "wrist"],
        embodiments=stored.registry.to_dicts(),
        normalization=stored.normalizer.to_dict(),
    )
    module.on_load_checkpoint(resumed)
    module.load_state_dict(resumed["state_dict"])
    assert module.prior_source == "runs/stage1/last.ckpt"
    # A Stage 1 checkpoint of format 2 recorded --init_from as init_from.
    stage1 = {"state_dict": {}, "actionprior": {**checkpoint["actionprior"], "prior_source": "base.ckpt"}}
    stage1["actionprior"].pop("vla")
    legacy = _as_format_2(stage1)
    assert legacy["actionprior"]["init_from"] == "base.ckpt"
    assert StoredCheckpoint.from_dict(legacy, "legacy").prior_source == "base.ckpt"


def test_the_cli_trains_a_head_named_by_its_module(tmp_path) -> None:
    """`actionprior fit` with vla.head mlp_head:mlp_regression and the head's settings under model.init_args.head."""
    from actionprior.data.synthetic import write_synthetic_dataset
    from actionprior.training.lightning_cli import run

    data, root = tmp_path / "data", tmp_path / "s2"
    write_synthetic_dataset(data, episodes_per_embodiment=2, image_size=32)
    stage2 = Path(__file__).resolve().parents[1] / "configs" / "stage2.yaml"
    run(["fit", "-c", str(stage2), "--data.datasets", f"[{{path: {data}}}]", "--data.chunk_len", "4",
         "--data.history_len", "2", "--data.batch_size", "2", "--data.num_workers", "0", "--data.val_fraction", "0",
         "--data.image_size", "32", "--data.shuffle_buffer", "8", "--trainer.max_steps", "2",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
         "--trainer.logger.init_args.save_dir", str(root), "--model.init_args.vla.head", "mlp_head:mlp_regression",
         "--model.init_args.vla.action_prior", "scratch", "--model.init_args.vla.num_queries", "1",
         "--model.init_args.vla.head_hidden", "16", "--model.init_args.head", "{cond_dim: 8, hidden: 16}"])  # fmt: skip
    stored = StoredCheckpoint.read(root / "checkpoints" / "last.ckpt")
    assert stored.head_name == "mlp_regression" and (
        stored.head_config.cond_dim,
        stored.head_config.hidden,
    ) == (8, 16)
    assert stored.vla_settings["image"] == {
        "size": 32,
        "resize": "pad",
        "interpolation": "area",
        "source_sizes": {},
    }
    policy = Policy.from_stored(stored)  # image size and history length come from the checkpoint
    policy.reset()
    assert policy.act(raw_observation("synth_arm8")).shape == (8,)
