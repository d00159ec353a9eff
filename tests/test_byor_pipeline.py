"""Bring your own robot, end to end, through the `actionprior` command (README: 'Bring your own robot').

import a LeRobot dataset -> data check -> Stage 1 fine-tuned (--init_from) from a prior trained on other
robots -> Stage 2 on the mixture (--stage1_ckpt) -> Policy.act for the imported robot, in its own units.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from actionprior.checkpoint import StoredCheckpoint
from actionprior.cli import main as actionprior_main
from actionprior.data.normalization import Normalizer
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.data.writer import load_manifest, load_stats
from actionprior.embodiments import EmbodimentRegistry
from actionprior.inference.client import PolicyClient
from actionprior.inference.policy import Policy
from actionprior.inference.server import PolicyServer

pytestmark = pytest.mark.slow  # four tiny training runs: ~30 s on 2 CPU cores

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot" / "v3_single_arm_video"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SYNTH = ["synth_arm4", "synth_arm7", "synth_arm8"]
DATA = ["--data.chunk_len", "4", "--data.history_len", "2", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.batches_per_epoch", "2", "--data.val_fraction", "0", "--data.shuffle_buffer", "16",
        "--trainer.enable_progress_bar", "false", "--model.init_args.warmup_steps", "0"]  # fmt: skip
PRIOR = ["--model.init_args.prior.width", "32", "--model.init_args.prior.depth", "1",
         "--model.init_args.prior.heads", "2", "--model.init_args.prior.latent_dim", "8",
         "--model.init_args.prior.sample_steps", "2"]  # fmt: skip


def _fit(config: str, root: Path, datasets: list[Path], *extra: str) -> Path:
    mixture = "[" + ", ".join(f"{{path: {d}, weight: 1.0}}" for d in datasets) + "]"
    argv = ["fit", "-c", str(CONFIGS / config), "--data.datasets", mixture, *DATA, "--trainer.max_steps", "2",
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), *extra]  # fmt: skip
    assert actionprior_main(argv) == 0
    return root / "checkpoints" / "last.ckpt"


def _stats(stored: StoredCheckpoint, name: str) -> dict:
    return stored.normalizer.stats[name]


def test_bring_your_own_robot(tmp_path: Path, capsys, caplog) -> None:
    # 1. import the LeRobot folder and check it
    franka = tmp_path / "franka"
    argv = [
        "data",
        "import",
        "lerobot",
        str(FIXTURE),
        "--out",
        str(franka),
        "--image-size",
        "32",
        "--workers",
        "1",
    ]
    assert actionprior_main(argv) == 0
    assert actionprior_main(["data", "check", str(franka)]) == 0
    assert "OK" in capsys.readouterr().out
    imported = EmbodimentRegistry.from_dicts(load_manifest(franka)["embodiments"].values())
    assert imported.names == ["franka_sim"] and imported["franka_sim"].cameras == ("front", "wrist")

    # 2. a prior trained on other robots
    synth = tmp_path / "synth"
    write_synthetic_dataset(synth, episodes_per_embodiment=4, image_size=32)
    base = _fit("stage1.yaml", tmp_path / "base", [synth], *PRIOR)

    # 3. Stage 1 adapted to the new robot on the mixture
    caplog.set_level(logging.INFO)
    adapted = _fit("stage1.yaml", tmp_path / "adapted", [synth, franka], *PRIOR, "--init_from", str(base))
    assert "new embodiments ['franka_sim'] start from a fresh projection" in caplog.text
    before, after = StoredCheckpoint.read(base), StoredCheckpoint.read(adapted)
    assert after.registry.names == ["franka_sim", *SYNTH]  # ids moved: franka_sim sorts first
    assert after.payload["prior_source"] == str(base)
    for name in SYNTH:  # the prior's statistics kept; the new robot's from its own data
        assert _stats(after, name) == _stats(before, name)
    assert _stats(after, "franka_sim") == load_stats(franka)["franka_sim"]

    # 4. Stage 2 on the mixture from the adapted prior, and from the base prior (a subset of the robots)
    stage2_argv = ["--data.image_size", "32", "--model.init_args.vla.num_queries", "1",
                   "--model.init_args.vla.head_hidden", "16"]  # fmt: skip
    caplog.clear()
    subset = _fit(
        "stage2.yaml", tmp_path / "s2_subset", [synth, franka], *stage2_argv, "--stage1_ckpt", str(base)
    )
    assert "['franka_sim'] are new to the Stage 1 prior" in caplog.text
    assert StoredCheckpoint.read(subset).registry.names == ["franka_sim", *SYNTH]
    vla = _fit("stage2.yaml", tmp_path / "s2", [synth, franka], *stage2_argv, "--stage1_ckpt", str(adapted))

    # 5. the policy for the imported robot: images at its camera names, actions of its dim, in its units
    policy = Policy.from_checkpoint(vla, seed=3)
    rng = np.random.default_rng(0)
    obs = {
        "embodiment": "franka_sim",
        "state": rng.normal(size=8).astype(np.float32),
        "images": {cam: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for cam in ("front", "wrist")},
        "instruction": "pick up the cube",
    }
    policy.reset()
    action = policy.act(obs)
    assert action.shape == (7,) and action.dtype == np.float32 and np.isfinite(action).all()
    # The same chunk sampled by hand and un-normalised with the imported dataset's own statistics.
    policy.reset()
    batch = policy.build_batch(obs, policy.history)
    with torch.no_grad():
        chunk = policy.model.sample_actions(batch, steps=policy.sample_steps, generator=policy._generator)
    normalised = chunk[0, :, :7].numpy()
    own_units = Normalizer(load_stats(franka), imported).unnormalize("franka_sim", "action", normalised)
    np.testing.assert_allclose(action, own_units[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(own_units[0], normalised[0])  # the statistics are not the identity

    # 6. export and serve: the exported folder and the policy server give the same actions
    exported = tmp_path / "exported"
    assert actionprior_main(["export", "--ckpt", str(vla), "--out", str(exported)]) == 0
    policy.reset()
    local = [policy.act(obs) for _ in range(2)]
    with (
        PolicyServer(Policy.load(exported, seed=3), port=0) as server,
        PolicyClient(server.url) as client,
    ):
        assert client.info()["embodiments"]["franka_sim"] == {
            "state_dim": 8,
            "action_dim": 7,
            "cameras": ["front", "wrist"],
        }
        client.reset()
        for expected in local:
            np.testing.assert_array_equal(client.act(obs), expected)
