"""`actionprior fit -c configs/stage2.yaml -c configs/finetune/lora.yaml`: exact resume, and `--init_policy` from an
exported policy with a robot new to it, through the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch

from actionprior.checkpoint import CheckpointMismatchError, StoredCheckpoint
from actionprior.cli import main
from actionprior.data.importers import cli_main as import_main
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.data.writer import load_stats
from actionprior.training.lightning_cli import run

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot" / "v3_single_arm_video"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DATA = ["--data.chunk_len", "4", "--data.history_len", "2", "--data.batch_size", "2", "--data.num_workers", "0",
        "--data.batches_per_epoch", "2", "--data.val_fraction", "0", "--data.shuffle_buffer", "16",
        "--trainer.enable_progress_bar", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Synthetic robots with frames, a LeRobot-imported robot (franka_sim), a 1-step Stage 1 prior on the first."""
    root = tmp_path_factory.mktemp("lora_cli")
    synth, franka = root / "synth", root / "franka"
    write_synthetic_dataset(synth, episodes_per_embodiment=3, image_size=32)
    assert (
        import_main(["lerobot", str(FIXTURE), "--out", str(franka), "--image-size", "32", "--workers", "1"])
        == 0
    )
    run(["fit", "-c", str(CONFIGS / "stage1.yaml"), "--data.datasets", f"[{{path: {synth}}}]", *DATA,
         "--model.init_args.prior.width", "32", "--model.init_args.prior.depth", "1", "--model.init_args.prior.heads", "2",
         "--model.init_args.prior.latent_dim", "8", "--model.init_args.prior.sample_steps", "2", "--trainer.max_steps", "1",
         "--trainer.default_root_dir", str(root / "s1"), "--trainer.logger.init_args.save_dir", str(root / "s1")])  # fmt: skip
    return synth, franka, root / "s1" / "checkpoints" / "last.ckpt"


def _lora(datasets: list[Path], root: Path, steps: int, *extra: str) -> list[str]:
    mixture = "[" + ", ".join(f"{{path: {d}}}" for d in datasets) + "]"
    return ["fit", "-c", str(CONFIGS / "stage2.yaml"), "-c", str(CONFIGS / "finetune" / "lora.yaml"),
            "--data.datasets", mixture, *DATA, "--data.image_size", "32", "--model.init_args.vla.num_queries", "1",
            "--model.init_args.vla.head_hidden", "16", "--model.init_args.vla.lora.rank", "4",
            "--model.init_args.warmup_steps", "0", "--model.init_args.train_error_every_n_steps", "0",
            "--trainer.max_steps", str(steps), "--checkpoint.every_n_train_steps", "2",
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), *extra]  # fmt: skip


class StopAfter(L.Callback):
    """Ends a run after ``step`` optimizer steps, as a kill would, without changing its schedule (max_steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _state(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow  # five tiny Stage 2 runs through the CLI: ~50 s on 2 busy CPU cores
def test_lora_run_resumes_exactly_and_starts_a_new_run_from_its_exported_policy(data, tmp_path, caplog):
    synth, franka, stage1 = data
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(_lora([synth], whole, 4, "--stage1_ckpt", str(stage1)))
    stop = "--trainer.callbacks+={class_path: test_lora_cli.StopAfter, init_args: {step: 2}}"
    run(_lora([synth], split, 4, "--stage1_ckpt", str(stage1), stop))
    assert torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    run(_lora([synth], split, 4, "--ckpt_path", "last"))
    a, b = _state(whole), _state(split)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not any("base_layer" in k for k in a) and any(
        ".lora_B" in k for k in a
    )  # adapters, no frozen base
    stored = StoredCheckpoint.read(whole / "checkpoints" / "last.ckpt")
    assert (
        stored.vla_settings["config"]["lora"]["rank"] == 4 and stored.vla_settings["lora_base"]["omitted"] > 0
    )

    # Export (adapters merged) and start a new LoRA run from it on the old robots plus franka_sim.
    policy = tmp_path / "policy"
    assert main(["export", "--ckpt", str(whole / "checkpoints" / "last.ckpt"), "--out", str(policy)]) == 0
    caplog.set_level(logging.INFO)
    fresh = tmp_path / "fresh"
    run(_lora([synth, franka], fresh, 1, "--init_policy", str(policy)))
    assert f"Stage 2: initialised from the policy {policy}" in caplog.text
    assert "embodiments ['franka_sim'] are new to the policy" in caplog.text
    assert "statistics of ['synth_arm4', 'synth_arm7', 'synth_arm8'] kept from" in caplog.text
    started = StoredCheckpoint.read(fresh / "checkpoints" / "last.ckpt")
    assert started.vla_settings["init_policy"] == str(policy)
    assert started.vla_settings["lora_base"]["init_policy"] == str(policy)
    assert started.normalizer.stats["franka_sim"] == load_stats(franka)["franka_sim"]
    assert all(started.normalizer.stats[n] == stored.normalizer.stats[n] for n in stored.registry.names)
    # Its base is the policy's weights: rebuilt from the folder for inference, refused on resume without it.
    started.build_vla()
    with pytest.raises(CheckpointMismatchError, match=f"pass --init_policy {policy} to resume it"):
        run(_lora([synth, franka], fresh, 2, "--ckpt_path", "last"))
    run(_lora([synth, franka], fresh, 2, "--ckpt_path", "last", "--init_policy", str(policy)))
    assert torch.load(fresh / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_init_policy_refusals(data, tmp_path):
    synth, _, stage1 = data
    with pytest.raises(ValueError, match="--init_policy and --stage1_ckpt were both given"):
        run(_lora([synth], tmp_path / "a", 1, "--init_policy", str(stage1), "--stage1_ckpt", str(stage1)))
    with pytest.raises(Exception, match="--init_policy: .*Stage 1 .*checkpoint, not a Stage 2"):
        run(_lora([synth], tmp_path / "b", 1, "--init_policy", str(stage1)))
