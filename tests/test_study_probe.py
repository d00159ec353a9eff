"""The early-training probe (L_pred alone and its gradient norms) and the z' head's stage1_mean start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.training.lightning_cli import run
from actionprior.training.transfer import ActionPriorTransfer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DATA = ["--data.chunk_len", "4", "--data.history_len", "2", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.batches_per_epoch", "3", "--data.val_fraction", "0", "--data.shuffle_buffer", "16",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]  # fmt: skip
TINY = ["--model.init_args.prior.width", "32", "--model.init_args.prior.depth", "1",
        "--model.init_args.prior.heads", "2", "--model.init_args.prior.latent_dim", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probe")
    data = root / "synth"
    write_synthetic_dataset(data, episodes_per_embodiment=4, image_size=32)
    run(["fit", "-c", str(CONFIGS / "stage1.yaml"), "--data.datasets", f"[{{path: {data}}}]", *DATA, *TINY,
         "--trainer.max_steps", "2", "--trainer.default_root_dir", str(root / "s1"),
         "--trainer.logger.init_args.save_dir", str(root / "s1")])  # fmt: skip
    return data, root / "s1" / "checkpoints" / "last.ckpt"


def _stage2(data: Path, root: Path, zhead_init: str, prior: Path | None) -> dict:
    callbacks = root / "callbacks.yaml"
    transfer = {"class_path": "actionprior.training.transfer.ActionPriorTransfer",
                "init_args": {"decay_steps": 5000, "zhead_init": zhead_init}}  # fmt: skip
    probe = {"class_path": "actionprior.study.probe.EarlyTrainingProbe",
             "init_args": {"out": str(root / "probe.json"), "steps": 3}}  # fmt: skip
    root.mkdir(parents=True)
    callbacks.write_text(json.dumps({"trainer": {"callbacks": [transfer, probe]}}))  # JSON is YAML
    extra = (
        ["--stage1_ckpt", str(prior)]
        if prior
        else ["-c", str(CONFIGS / "ablations" / "no_prior.yaml"), *TINY]
    )
    run(["fit", "-c", str(CONFIGS / "stage2.yaml"), "-c", str(callbacks), "--data.datasets", f"[{{path: {data}}}]",
         *DATA, "--data.image_size", "32", "--model.init_args.vla.num_queries", "1",
         "--model.init_args.vla.head_hidden", "16", "--model.init_args.warmup_steps", "0",
         "--trainer.max_steps", "3", "--trainer.default_root_dir", str(root),
         "--trainer.logger.init_args.save_dir", str(root), *extra])  # fmt: skip
    return json.loads((root / "probe.json").read_text())


def test_probe_records_pred_loss_and_separate_gradient_norms(stage1, tmp_path):
    data, ckpt = stage1
    prior = _stage2(data, tmp_path / "prior", "default", ckpt)
    scratch = _stage2(data, tmp_path / "scratch", "default", None)
    assert prior["steps"] == scratch["steps"] == [0, 1, 2]
    assert all(v > 0 for v in prior["pred_loss"] + prior["grad_action"] + prior["grad_backbone"])
    # The scratch decoder is adaLN-zero: its output layer starts at zero, so at step 0 no L_pred gradient
    # reaches z' and the backbone (0 exactly), while the decoder's own output layer does get one.
    assert scratch["grad_backbone"][0] == 0.0
    assert scratch["grad_action"][0] > 0 and scratch["pred_loss"][0] > 0
    assert prior["pred_loss"][0] != pytest.approx(scratch["pred_loss"][0])


def test_stage1_mean_start_puts_every_z_prime_at_the_mean_latent(stage1, tmp_path):
    data, ckpt = stage1
    rec = _stage2(data, tmp_path / "mean", "stage1_mean", ckpt)
    # Last layer weight 0: L_pred cannot reach the backbone at step 0; the head itself still learns.
    assert rec["grad_backbone"][0] == 0.0
    assert rec["grad_action"][0] > 0
    assert rec["grad_backbone"][1] > 0


def test_zhead_init_is_validated():
    with pytest.raises(ValueError, match="zhead_init must be one of"):
        ActionPriorTransfer(zhead_init="zeros")


def test_probe_of_a_resumed_run_keeps_its_record(tmp_path):
    from actionprior.study.probe import EarlyTrainingProbe

    out = tmp_path / "probe.json"
    record = {
        "steps": [0, 1],
        "pred_loss": [2.0, 1.9],
        "grad_backbone": [0.0, 0.1],
        "grad_action": [3.0, 2.0],
    }
    out.write_text(json.dumps(record))
    probe = EarlyTrainingProbe(str(out), steps=5)
    assert probe.record == record
    probe.on_train_end(None, None)  # nothing new recorded: the file keeps both steps
    assert json.loads(out.read_text()) == record
