"""The LightningCLI Stage 1 run: configs/stage1.yaml trains, logs, checkpoints and resumes with --ckpt_path last."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from actionprior.checkpoint import load_action_prior
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.training import ActionPriorModule
from actionprior.training.lightning_cli import run
from actionprior.training.optim import warmup_cosine

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stage1.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1") / "synth"
    write_synthetic_dataset(out, episodes_per_embodiment=6, with_frames=False)
    return out


def _argv(dataset: Path, root: Path, max_steps: int, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(CONFIG),
        "--data.datasets", f"[{{path: {dataset}}}]",
        "--data.chunk_len", "4", "--data.history_len", "2", "--data.batch_size", "8", "--data.num_workers", "0",
        "--data.batches_per_epoch", "3", "--data.val_batches", "1", "--data.val_fraction", "0.3",
        "--data.shuffle_buffer", "16",
        "--model.init_args.prior.width", "32", "--model.init_args.prior.depth", "1", "--model.init_args.prior.heads", "2",
        "--model.init_args.prior.latent_dim", "8", "--model.init_args.prior.sample_steps", "2",
        "--model.init_args.warmup_steps", "2",
        "--trainer.max_steps", str(max_steps), "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root), "--trainer.log_every_n_steps", "1",
        "--trainer.val_check_interval", "2", "--checkpoint.every_n_train_steps", "2",
        *extra,
    ]  # fmt: skip


def _scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(event_dir)).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_fit_then_resume_with_ckpt_path_last(dataset, tmp_path):
    root = tmp_path / "run"
    # Stops at step 3, between two periodic saves (every 2 steps): last.ckpt must still hold step 3.
    run(_argv(dataset, root, 3))
    last = root / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 3
    assert first["optimizer_states"][0]["state"][0]["step"].item() == 3

    run(_argv(dataset, root, 6, "--ckpt_path", "last"))
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 6
    # AdamW and the LR scheduler were restored, not rebuilt: their step counts continue from 3.
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == 6
    assert resumed["lr_schedulers"][0]["last_epoch"] == 6

    # The resumed run (its own TensorBoard version) logged only steps 3..5. The schedule's horizon is the
    # new max_steps from the restored step on (a fresh scheduler would be back in warmup: lr 5e-4).
    logs = _scalars(root / "tensorboard" / "version_1")
    assert [s for s, _ in logs["train/flow_loss"]] == [3, 4, 5]
    lr, schedule = dict(logs["train/lr"]), warmup_cosine(2, 6, 0.05)
    assert lr[4] == pytest.approx(1e-3 * schedule(4), rel=1e-4)
    for tag in ("train/grad_norm", "train/z_std", "train/z_norm", "val/flow_loss", "val/mae_ratio"):
        assert tag in logs, f"{tag} not logged; got {sorted(logs)}"
    # Per-embodiment errors for the embodiments the validation batches held (units differ per robot).
    seen = [tag.removeprefix("val/mae/") for tag in logs if tag.startswith("val/mae/")]
    assert seen and set(seen) <= {"synth_arm4", "synth_arm7", "synth_arm8"}
    for name in seen:
        ratio = logs[f"val/mae/{name}"][-1][1] / logs[f"val/baseline_mae/{name}"][-1][1]
        assert logs[f"val/mae_ratio/{name}"][-1][1] == pytest.approx(ratio, rel=1e-4)

    # The checkpoint rebuilds the model without the dataset, both as a LightningModule and as a plain prior.
    module = ActionPriorModule.load_from_checkpoint(last, weights_only=True)
    prior, registry, _, config = load_action_prior(last)
    assert registry.names == ["synth_arm4", "synth_arm7", "synth_arm8"]
    assert config.chunk_len == 4 and config == module.config


def test_stage1_ckpt_needs_a_callback_that_takes_it(dataset, tmp_path):
    fake = tmp_path / "s1.ckpt"
    fake.write_bytes(b"")
    with pytest.raises(ValueError, match="no trainer callback takes it"):
        run(_argv(dataset, tmp_path / "run", 1, "--stage1_ckpt", str(fake)))
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        run(_argv(dataset, tmp_path / "run", 1, "--stage1_ckpt", str(tmp_path / "missing.ckpt")))
