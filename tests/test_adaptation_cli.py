"""`actionprior fit --init_from`: Stage 1 adapted from a prior trained on other robots, through the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from actionprior.checkpoint import CheckpointError, CheckpointMismatchError, StoredCheckpoint
from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.importers import cli_main as import_main
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.data.writer import load_stats
from actionprior.training.lightning_cli import run

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot" / "v3_single_arm_video"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DATA = ["--data.chunk_len", "4", "--data.history_len", "2", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.batches_per_epoch", "1", "--data.val_fraction", "0", "--data.shuffle_buffer", "16",
        "--trainer.enable_progress_bar", "false", "--model.init_args.warmup_steps", "0",
        "--model.init_args.prior.width", "32", "--model.init_args.prior.depth", "1",
        "--model.init_args.prior.heads", "2", "--model.init_args.prior.latent_dim", "8"]  # fmt: skip


def _stage1(root: Path, datasets: list[Path], *extra: str) -> list[str]:
    mixture = "[" + ", ".join(f"{{path: {d}}}" for d in datasets) + "]"
    return ["fit", "-c", str(CONFIGS / "stage1.yaml"), "--data.datasets", mixture, *DATA, "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapt_cli")
    synth, franka = root / "synth", root / "franka"
    write_synthetic_dataset(synth, episodes_per_embodiment=3, image_size=16)
    argv = ["lerobot", str(FIXTURE), "--out", str(franka), "--image-size", "16", "--workers", "1"]
    assert import_main(argv) == 0
    return synth, franka


@pytest.fixture(scope="module")
def base(data, tmp_path_factory) -> dict[str, Path]:
    """1-step priors on the synthetic robots only, in both io modes."""
    root = tmp_path_factory.mktemp("base")
    out = {}
    for mode in ("projection", "padded"):
        run(_stage1(root / mode, [data[0]], "--model.init_args.prior.io_mode", mode))
        out[mode] = root / mode / "checkpoints" / "last.ckpt"
    return out


@pytest.mark.parametrize("io_mode", ["projection", "padded"])
def test_init_from_adds_the_new_robot_and_resume_keeps_the_statistics(data, base, io_mode, tmp_path, caplog):
    synth, franka = data
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "adapted"
    argv = _stage1(run_dir, [synth, franka], "--model.init_args.prior.io_mode", io_mode)
    run([*argv, "--init_from", str(base[io_mode])])
    assert "statistics of ['synth_arm4', 'synth_arm7', 'synth_arm8'] kept from" in caplog.text
    assert "new embodiments ['franka_sim'] start from a fresh projection" in caplog.text
    adapted, prior = (
        StoredCheckpoint.read(run_dir / "checkpoints" / "last.ckpt"),
        StoredCheckpoint.read(base[io_mode]),
    )
    assert adapted.payload["prior_source"] == str(base[io_mode])
    assert adapted.normalizer.stats["franka_sim"] == load_stats(franka)["franka_sim"]
    assert all(adapted.normalizer.stats[n] == prior.normalizer.stats[n] for n in prior.registry.names)
    # franka (8/7 dims) fits the synthetic robots' max dims (11/8): the padded layers keep their size.
    assert adapted.prior_config.max_state_dim == prior.prior_config.max_state_dim == 11
    # Resuming without --init_from: the statistics come from the checkpoint being resumed, not the data.
    run([*argv, "--ckpt_path", "last", "--trainer.max_steps", "2"])
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2
    assert resumed["actionprior"]["normalization_fingerprint"] == adapted.normalizer.fingerprint


def test_data_module_keeps_the_checkpoint_statistics_only_for_robots_it_knows(data, base, tmp_path):
    synth, franka = data
    plain = ActionPriorDataModule([str(synth), str(franka)], chunk_len=4, val_fraction=0)
    kept = ActionPriorDataModule(
        [str(synth), str(franka)], chunk_len=4, val_fraction=0, stats_from=str(base["padded"])
    )
    prior = StoredCheckpoint.read(base["padded"])
    assert kept.stats_origin == {"franka_sim": "data"} | dict.fromkeys(
        prior.registry.names, str(base["padded"])
    )
    assert kept.normalizer.stats["franka_sim"] == plain.normalizer.stats["franka_sim"]
    with pytest.raises(
        ValueError, match="statistics are for normalization 'quantile' but data.normalization is"
    ):
        ActionPriorDataModule(
            [str(franka)], val_fraction=0, normalization="meanstd", stats_from=str(base["padded"])
        )


def test_init_from_refuses_other_architectures_stages_and_stage2(data, base, tmp_path):
    synth, franka = data
    argv = _stage1(tmp_path / "x", [synth, franka], "--init_from", str(base["projection"]))
    with pytest.raises(
        CheckpointMismatchError, match="io_mode is 'projection' in the checkpoint but 'padded' here"
    ):
        run([*argv, "--model.init_args.prior.io_mode", "padded"])
    with pytest.raises(CheckpointMismatchError, match="latent_dim is 8 in the checkpoint but 16 here"):
        run([*argv, "--model.init_args.prior.latent_dim", "16"])
    with pytest.raises(FileNotFoundError, match="--init_from: no checkpoint file at"):
        run(_stage1(tmp_path / "y", [franka], "--init_from", str(tmp_path / "missing.ckpt")))
    stage2 = ["fit", "-c", str(CONFIGS / "stage2.yaml"), "--data.datasets", f"[{{path: {franka}}}]",
              "--init_from", str(base["projection"])]  # fmt: skip
    with pytest.raises(ValueError, match="--init_from is for Stage 1"):
        run(stage2)
    fake_stage2 = tmp_path / "s2.ckpt"
    checkpoint = torch.load(base["projection"], weights_only=True)
    checkpoint["actionprior"]["vla"] = {}
    torch.save(checkpoint, fake_stage2)
    with pytest.raises(CheckpointError, match=r"--init_from: .* is a Stage 2 \(VLA\) checkpoint"):
        run(_stage1(tmp_path / "z", [synth, franka], "--init_from", str(fake_stage2)))
