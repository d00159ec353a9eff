"""ActionPriorTransfer: lambda schedule, Stage 1 loading, refusal of mismatches, resume without reload."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from vla_builders import CHUNK, TINY_PRIOR, loader, module_kwargs, normalization, registry

from actionprior.checkpoint import CheckpointMismatchError
from actionprior.data.synthetic import synthetic_registry
from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.action_prior import ActionPriorConfig
from actionprior.training import ActionPriorModule
from actionprior.training.transfer import ActionPriorTransfer, aux_weight_schedule
from actionprior.training.vla_module import VLAModule


def _trainer(max_steps: int, callbacks=(), **kw) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **kw,
    )


def _stage1(path, reg=None, norm=None, latent_dim: int = 16, seed: int = 1) -> ActionPriorModule:
    reg = reg or registry()
    torch.manual_seed(seed)
    module = ActionPriorModule(
        prior=ActionPriorConfig(**{**TINY_PRIOR, "latent_dim": latent_dim}),
        chunk_len=CHUNK,
        warmup_steps=0,
        embodiments=reg.to_dicts(),
        normalization=norm or normalization(reg),
    )
    # What Lightning writes for a Stage 1 run, minus the optimiser state the transfer never reads.
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return module


def _prior_tensors(vla_module: VLAModule) -> dict[str, torch.Tensor]:
    prior = vla_module.model.head
    return {f"encoder.{k}": v.clone() for k, v in prior.encoder.state_dict().items()} | {
        f"decoder.{k}": v.clone() for k, v in prior.decoder.state_dict().items()
    }


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_aux_weight_schedule_values():
    n = 5000
    assert aux_weight_schedule(0, n) == 1.0
    assert aux_weight_schedule(n // 2, n) == pytest.approx(0.5)
    assert aux_weight_schedule(n, n) == 0.0
    assert aux_weight_schedule(2 * n, n) == 0.0
    assert aux_weight_schedule(1, 4) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="decay_steps"):
        aux_weight_schedule(0, 0)


class _FreshTrainer:
    ckpt_path = None
    global_step = 0


def test_prior_and_baseline_must_each_be_asked_for(tmp_path):
    module = VLAModule(**module_kwargs())
    with pytest.raises(ValueError, match="no checkpoint was given: pass --stage1_ckpt"):
        ActionPriorTransfer().on_fit_start(_FreshTrainer(), module)
    # Without the callback, the model itself refuses to train a 'stage1' VLA whose prior never loaded.
    with pytest.raises(ValueError, match="action_prior is 'stage1' but no Stage 1 weights were loaded"):
        module.on_fit_start()
    baseline = VLAModule(**module_kwargs(action_prior="scratch"))
    with pytest.raises(ValueError, match="no-prior baseline was configured .* but a Stage 1 checkpoint"):
        ActionPriorTransfer(stage1_ckpt=str(tmp_path / "s1.ckpt")).on_fit_start(_FreshTrainer(), baseline)
    callback = ActionPriorTransfer(decay_steps=10)
    callback.on_fit_start(_FreshTrainer(), baseline)
    baseline.on_fit_start()
    assert (
        baseline.aux_weight == 0.0
        and callback.aux_weight(baseline, 0) == 0.0
        and baseline.prior_source is None
    )


def test_load_anneal_and_resume_without_reload(tmp_path):
    stage1 = _stage1(tmp_path / "s1.ckpt")
    s1 = {f"{k}": v for k, v in stage1.model.state_dict().items() if k.startswith(("encoder.", "decoder."))}

    module = VLAModule(**module_kwargs())
    before = _prior_tensors(module)
    callback = ActionPriorTransfer(str(tmp_path / "s1.ckpt"), decay_steps=2)
    seen: list[float] = []
    captured: dict[str, dict[str, torch.Tensor]] = {}

    class Spy(L.Callback):  # runs after ActionPriorTransfer (callback order)
        def on_train_start(self, trainer, pl_module):
            captured["at_start"] = _prior_tensors(pl_module)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module.aux_weight)

    # 3 optimizer steps: lambda 1, 0.5, 0 (decay_steps = 2), then a Stage 2 checkpoint.
    trainer = _trainer(3, [callback, Spy()])
    trainer.fit(module, loader(size=12))
    _assert_equal(captured["at_start"], s1)  # after the callback the encoder/decoder are exactly Stage 1's
    assert any(not torch.equal(before[k], s1[k]) for k in s1)
    assert seen == [1.0, 0.5, 0.0]
    trainer.save_checkpoint(tmp_path / "s2.ckpt")
    stage2 = _prior_tensors(module)
    assert any(not torch.equal(stage2[k], s1[k]) for k in stage2)  # fine-tuned away from Stage 1

    # Resume from the Stage 2 checkpoint with --stage1_ckpt still given: Stage 1 must not be reloaded.
    resumed = VLAModule(**module_kwargs())
    callback2 = ActionPriorTransfer(str(tmp_path / "s1.ckpt"), decay_steps=2)
    captured.clear()
    trainer = _trainer(4, [callback2, Spy()])
    trainer.fit(resumed, loader(size=12), ckpt_path=tmp_path / "s2.ckpt")
    _assert_equal(captured["at_start"], stage2)
    assert resumed.prior_source == str(tmp_path / "s1.ckpt")  # restored from the Stage 2 checkpoint
    assert seen[-1] == 0.0  # the schedule continues from the resumed step (3 >= decay_steps)


def test_stage1_on_a_subset_of_the_embodiments_loads_and_the_new_robot_starts_fresh(tmp_path, caplog):
    two = EmbodimentRegistry(list(synthetic_registry())[:2])  # a Stage 1 trained on two of the three robots
    stage1 = _stage1(tmp_path / "s1.ckpt", reg=two, norm=normalization(two))
    module = VLAModule(**module_kwargs())
    fresh = _prior_tensors(module)
    with caplog.at_level("INFO", logger="actionprior.training.transfer"):
        report = ActionPriorTransfer.load_into(module, str(tmp_path / "s1.ckpt"))
    assert report.kept == ["synth_arm4", "synth_arm7"] and report.added == ["synth_arm8"]
    assert "['synth_arm8'] are new to the Stage 1 prior" in caplog.text
    loaded, source = module.model.head.decoder.io, stage1.model.decoder.io
    for i in (0, 1):  # same ids in both registries here: rows copied exactly
        # The prior's max action dim was 7, the data's is 8: the extra (padded) column stays zero.
        torch.testing.assert_close(
            loaded.action_out.weight[i, :, :7], source.action_out.weight[i], rtol=0, atol=0
        )
        assert not loaded.action_out.weight[i, :, 7:].any()
        torch.testing.assert_close(loaded.embedding.weight[i], source.embedding.weight[i], rtol=0, atol=0)
    # The new robot keeps the VLA module's own (from-scratch) init.
    for key in ("decoder.io.action_out.weight", "encoder.io.state_in.weight", "decoder.io.embedding.weight"):
        torch.testing.assert_close(_prior_tensors(module)[key][2], fresh[key][2], rtol=0, atol=0)
    # The shared trunk loads exactly.
    s1 = {k: v for k, v in stage1.model.state_dict().items() if ".io." not in k}
    _assert_equal({k: v for k, v in _prior_tensors(module).items() if k in s1}, s1)
    # A checkpoint that knows a robot the Stage 2 data lacks is refused, naming it.
    _stage1(tmp_path / "s3.ckpt")
    small = VLAModule(**module_kwargs(reg=two, normalization=normalization(two)))
    with pytest.raises(CheckpointMismatchError, match=r"\['synth_arm8'\] are in the checkpoint but not in"):
        ActionPriorTransfer.load_into(small, str(tmp_path / "s3.ckpt"))


def test_refuses_stage1_with_other_dims_or_stats(tmp_path):
    _stage1(tmp_path / "s1.ckpt", latent_dim=8)
    module = VLAModule(**module_kwargs())
    with pytest.raises(CheckpointMismatchError, match="latent_dim is 8 in the checkpoint but 16 here"):
        ActionPriorTransfer.load_into(module, str(tmp_path / "s1.ckpt"))
    module = VLAModule(**module_kwargs(normalization=normalization(seed=1)))
    with pytest.raises(CheckpointMismatchError, match=r"embodiment 'synth_arm4': state statistics .* differ"):
        ActionPriorTransfer.load_into(module, str(tmp_path / "s1.ckpt"))
