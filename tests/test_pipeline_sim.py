"""The whole main job in miniature, through the real command line: collect demonstrations in the
simulators -> `data check` -> Stage 1 fit -> Stage 2 fit on the Stage 1 prior -> closed-loop `eval` of the
trained Stage 2 checkpoint (what `make demo` does at full size)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from actionprior.cli import main as actionprior

pytestmark = [pytest.mark.sim, pytest.mark.slow]
pytest.importorskip("metaworld")
pytest.importorskip("robosuite")

TASKS = ["metaworld_sawyer/drawer-open", "robosuite_panda_osc/lift"]
# A tiny prior, set in Stage 1 only: Stage 2 reads it from the Stage 1 checkpoint.
PRIOR = ["--model.init_args.prior.width=32", "--model.init_args.prior.depth=1", "--model.init_args.prior.heads=2",
         "--model.init_args.prior.latent_dim=16", "--model.init_args.prior.sample_steps=3"]  # fmt: skip
DATA = ["--data.chunk_len=4", "--data.history_len=2", "--data.batch_size=4", "--data.num_workers=0",
        "--data.val_fraction=0", "--data.shuffle_buffer=32", "--trainer.enable_progress_bar=false"]  # fmt: skip


def _fit(config: str, data, run, steps: int, *extra: str) -> None:
    argv = ["fit", "-c", config, f"--data.datasets=[{{path: {data}}}]", f"--trainer.default_root_dir={run}",
            f"--trainer.logger.init_args.save_dir={run}", f"--trainer.max_steps={steps}",
            f"--data.batches_per_epoch={steps}", *DATA, *extra]  # fmt: skip
    assert actionprior(argv) == 0


def test_collect_train_both_stages_then_evaluate_in_closed_loop(tmp_path) -> None:
    data = tmp_path / "data"
    only = ["--only", *TASKS]
    assert actionprior(["data", "collect", "--out", str(data), "--episodes-per-task", "1", "--workers", "1",
                        "--image-size", "32", *only]) == 0  # fmt: skip
    assert actionprior(["data", "check", str(data)]) == 0

    _fit("configs/stage1.yaml", data, tmp_path / "s1", 6, "--checkpoint.every_n_train_steps=100", *PRIOR)
    stage1_ckpt = tmp_path / "s1" / "checkpoints" / "last.ckpt"
    _fit("configs/stage2.yaml", data, tmp_path / "s2", 4, f"--stage1_ckpt={stage1_ckpt}",
         "--data.image_size=32", "--model.init_args.vla.num_queries=1", "--model.init_args.vla.head_hidden=32")  # fmt: skip
    stage2_ckpt = tmp_path / "s2" / "checkpoints" / "last.ckpt"

    checkpoint = torch.load(stage2_ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert (
        checkpoint["hyper_parameters"]["prior"]["latent_dim"] == 16
        and checkpoint["hyper_parameters"]["prior"]["sample_steps"] == 3
    )
    settings = checkpoint["actionprior"]["vla"]
    assert settings["image_size"] == 32 and settings["camera_names"] == ["scene", "wrist"]
    # Stage 2 trained from the prior: the decoder moved away from the Stage 1 weights it was loaded with.
    stage1 = torch.load(stage1_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    key = next(k for k in stage1 if k.startswith("model.decoder.") and k.endswith("weight"))
    stage2_key = "model.head." + key.removeprefix("model.")
    assert not torch.equal(stage1[key], checkpoint["state_dict"][stage2_key])

    out = tmp_path / "eval"
    assert actionprior(["eval", "--ckpt", str(stage2_ckpt), *only, "--episodes-per-task", "1", "--max-steps",
                        "8", "--workers", "0", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["episodes"] == 2
    assert {(r["embodiment"], r["task"]) for r in report["per_task"]} == {tuple(t.split("/")) for t in TASKS}
    assert all(e["steps"] >= 1 for e in report["episodes"])
    videos = sorted((out / "videos").glob("*.gif"))
    assert len(videos) == 2
    for video in videos:  # rendered scenes of a moving robot, not blank canvases
        with Image.open(video) as gif:
            frames = np.stack(
                [np.asarray(f.convert("RGB"), dtype=np.float32) for f in ImageSequence.Iterator(gif)]
            )
        assert 20 < frames.mean() < 235 and frames.std() > 15
        assert np.abs(np.diff(frames, axis=0)).mean() > 0.1
