"""The LightningCLI Stage 2 run reads the action prior's settings from --stage1_ckpt (written once, in Stage 1)."""

from pathlib import Path

import pytest
import torch

from actionprior.checkpoint import CheckpointError, CheckpointMismatchError, StoredCheckpoint
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.models.action_prior import ActionPriorConfig
from actionprior.training.configs import settings_dict
from actionprior.training.lightning_cli import run

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DATA = ["--data.chunk_len", "4", "--data.history_len", "2", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.batches_per_epoch", "2", "--data.val_fraction", "0", "--data.shuffle_buffer", "16",
        "--trainer.enable_progress_bar", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic dataset with frames and a 1-step Stage 1 checkpoint of a tiny, non-default prior."""
    root = tmp_path_factory.mktemp("stage2_cli")
    data = root / "synth"
    write_synthetic_dataset(data, episodes_per_embodiment=4, image_size=32)
    run(["fit", "-c", str(CONFIGS / "stage1.yaml"), "--data.datasets", f"[{{path: {data}}}]", *DATA,
         "--model.init_args.prior.width", "32", "--model.init_args.prior.depth", "1", "--model.init_args.prior.heads", "2",
         "--model.init_args.prior.latent_dim", "8", "--model.init_args.prior.sample_steps", "3",
         "--model.init_args.prior.flow_alpha", "2.0", "--trainer.max_steps", "1",
         "--trainer.default_root_dir", str(root / "s1"), "--trainer.logger.init_args.save_dir", str(root / "s1")])  # fmt: skip
    return data, root / "s1" / "checkpoints" / "last.ckpt"


def _stage2(data: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "-c", str(CONFIGS / "stage2.yaml"), "--data.datasets", f"[{{path: {data}}}]", *DATA,
            "--data.image_size", "32", "--model.init_args.vla.num_queries", "1", "--model.init_args.vla.head_hidden", "16",
            "--model.init_args.warmup_steps", "0", "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), *extra]  # fmt: skip


def test_stage2_takes_the_prior_settings_from_the_stage1_checkpoint(stage1, tmp_path):
    data, ckpt = stage1
    run(_stage2(data, tmp_path / "s2", "--stage1_ckpt", str(ckpt)))
    hparams = torch.load(tmp_path / "s2" / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    stored = settings_dict(StoredCheckpoint.read(ckpt).prior_config)
    assert stored["width"] == 32 and stored["latent_dim"] == 8 and stored["flow_alpha"] == 2.0
    assert hparams["prior"] == stored  # what Policy.from_checkpoint rebuilds the VLA with
    # The dataset's own stats.json is accepted as the expected statistics of the trained policy (issue 12).
    from actionprior.inference.policy import Policy

    last = tmp_path / "s2" / "checkpoints" / "last.ckpt"
    assert Policy.from_checkpoint(last, expected_stats=data / "stats.json").normalizer.fingerprint
    # Resuming without --stage1_ckpt takes them from the checkpoint being resumed.
    run(_stage2(data, tmp_path / "s2", "--ckpt_path", "last", "--trainer.max_steps", "2"))
    resumed = torch.load(tmp_path / "s2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 and resumed["hyper_parameters"]["prior"]["latent_dim"] == 8


def test_stage2_refuses_a_prior_that_differs_from_the_checkpoint_and_checkpoints_of_the_wrong_stage(
    stage1, tmp_path
):
    data, ckpt = stage1
    with pytest.raises(CheckpointMismatchError, match="latent_dim is 8 in the checkpoint but 16 here"):
        run(
            _stage2(
                data, tmp_path / "b", "--stage1_ckpt", str(ckpt), "--model.init_args.prior.latent_dim", "16"
            )
        )
    run(_stage2(data, tmp_path / "s2", "--stage1_ckpt", str(ckpt)))
    stage2_ckpt = tmp_path / "s2" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"--stage1_ckpt: .*last.ckpt is a Stage 2 \(VLA\) checkpoint"):
        run(_stage2(data, tmp_path / "c", "--stage1_ckpt", str(stage2_ckpt)))
    # --ckpt_path of a Stage 1 checkpoint under a Stage 2 config: refused, not silently trained as Stage 1.
    with pytest.raises(CheckpointError, match=r"is a Stage 1 \(action prior\) checkpoint"):
        run(_stage2(data, tmp_path / "d", "--ckpt_path", str(ckpt)))


def test_stage2_without_a_stage1_checkpoint_names_what_is_missing(stage1, tmp_path):
    data, ckpt = stage1
    with pytest.raises(ValueError, match=r"action prior's settings are not set.*Pass --stage1_ckpt"):
        run(_stage2(data, tmp_path / "c"))
    # The no-prior baseline is the model's choice: it needs no checkpoint and refuses one.
    baseline = [
        "-c",
        str(CONFIGS / "ablations" / "no_prior.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path / "d"),
    ]
    run(_stage2(data, tmp_path / "d", *baseline))
    hparams = torch.load(tmp_path / "d" / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["vla"]["action_prior"] == "scratch" and hparams["prior"] == settings_dict(
        ActionPriorConfig()
    )
    with pytest.raises(ValueError, match="no-prior baseline was configured"):
        run(_stage2(data, tmp_path / "e", *baseline[:2], "--stage1_ckpt", str(ckpt)))


def test_code_reads_stage_configs_through_the_cli_parser() -> None:
    """read_stage_config: the CLI's own parsing (defaults, links, overlays, unknown keys refused), nothing run."""
    import random

    from jsonargparse import ArgumentError

    from actionprior.training.lightning_cli import read_stage_config

    state, py_state = torch.random.get_rng_state(), random.getstate()
    config = read_stage_config("actionprior:stage2.yaml", args=["--data.chunk_len=8"])
    assert torch.equal(state, torch.random.get_rng_state()) and py_state == random.getstate()  # not reseeded
    init = config["model"]["init_args"]
    assert config["model"]["class_path"] == "actionprior.training.vla_module.VLAModule"
    assert init["chunk_len"] == 8  # linked from data.chunk_len, as in a run
    assert init["vla"]["head"] == "action_prior" and init["vla"]["backbone"] == "tiny:qwen3_vl"
    assert config["trainer"]["callbacks"][0]["init_args"]["decay_steps"] == 5000
    baseline = read_stage_config("actionprior:stage2.yaml", "actionprior:ablations/no_prior.yaml")
    assert baseline["model"]["init_args"]["vla"]["action_prior"] == "scratch"
    with pytest.raises(ArgumentError, match="data.imagesize"):
        read_stage_config("actionprior:stage2.yaml", args=["--data.imagesize=32"])
