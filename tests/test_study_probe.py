"""The early-training probe (L_pred alone and its gradient norms) and the z' head's stage1_mean start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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


def _stage2(data: Path, root: Path, latent_head_init: str, prior: Path | None) -> dict:
    callbacks = root / "callbacks.yaml"
    transfer = {"class_path": "actionprior.training.transfer.ActionPriorTransfer",
                "init_args": {"decay_steps": 5000, "latent_head_init": latent_head_init}}  # fmt: skip
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


def test_latent_head_init_is_validated_and_its_old_name_still_accepted(caplog):
    with pytest.raises(ValueError, match="latent_head_init must be one of"):
        ActionPriorTransfer(latent_head_init="zeros")
    with caplog.at_level("WARNING", logger="actionprior.training.transfer"):
        old = ActionPriorTransfer(zhead_init="stage1_mean", zhead_init_batches=2)
    assert (old.latent_head_init, old.latent_head_init_batches) == ("stage1_mean", 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "ActionPriorTransfer: zhead_init is deprecated, use latent_head_init (same meaning)",
        "ActionPriorTransfer: zhead_init_batches is deprecated, use latent_head_init_batches (same meaning)",
    ]


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


def test_initial_loss_scores_stage2_mixture_on_batches_the_mean_latent_did_not_see(tmp_path, monkeypatch):
    """The step-0 table reads Stage 2's batches (mixture weights = transitions, as the study's fits), averages over
    the training seeds, and scores every variant on batches after those the mean latent was estimated on."""
    from actionprior.data.synthetic import SYNTHETIC_CAMERAS, synthetic_registry
    from actionprior.study import initial_loss
    from actionprior.study.plan import INITIAL_LOSS_VARIANTS

    names = [spec.name for spec in synthetic_registry(SYNTHETIC_CAMERAS)]
    rich, scarce = tmp_path / "rich", tmp_path / "scarce"
    write_synthetic_dataset(rich, episodes_per_embodiment=20, image_size=32, embodiments=names[:1], seed=0)
    write_synthetic_dataset(scarce, episodes_per_embodiment=10, image_size=32, embodiments=names[1:2], seed=1)
    run(["fit", "-c", str(CONFIGS / "stage1.yaml"), "--data.datasets", f"[{{path: {rich}}}, {{path: {scarce}}}]",
         *TINY, "--data.batch_size", "4", "--data.num_workers", "0", "--data.val_fraction", "0",
         "--data.shuffle_buffer", "16", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path / "s1"), "--trainer.logger.init_args.save_dir", str(tmp_path / "s1")])  # fmt: skip
    scored: list[list[dict]] = []
    real = initial_loss._pred_loss

    def recording(module, batches, oracle=False):
        scored.append(batches)
        return real(module, batches, oracle)

    monkeypatch.setattr(initial_loss, "_pred_loss", recording)
    data = [str(rich), str(scarce)]
    out = initial_loss.measure(
        str(tmp_path / "s1" / "checkpoints" / "last.ckpt"), data, seeds=[0, 1], batches=2
    )

    transitions = [json.loads((d / "manifest.json").read_text())["num_transitions"] for d in (rich, scarce)]
    assert out["mixture"] == {str(rich): transitions[0], str(scarce): transitions[1]}
    assert [s.weight for s in initial_loss.stage2_datamodule(data, 0).sources] == transitions
    for variant in INITIAL_LOSS_VARIANTS:
        assert len(out["per_seed"][variant]) == 2
        assert out[variant] == pytest.approx(sum(out["per_seed"][variant]) / 2)
    # seed 0's five variants were scored on its stream's batches 2 and 3; the mean latent read batches 0 and 1
    stream = initial_loss._batches(initial_loss.stage2_datamodule(data, 0), 0, 4)
    assert len(scored) == 10 and all(len(b) == 2 for b in scored)
    for got, want in zip(scored[0], stream[2:], strict=True):
        assert torch.equal(got["action"], want["action"])
    assert not any(torch.equal(scored[0][0]["action"], b["action"]) for b in stream[:2])
