"""Open-loop action error callback: exact numbers with a fixed-chunk model, and inside a real Trainer run."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from policy_builders import CAMERAS, tiny_stats
from vla_builders import TINY_PRIOR

from actionprior.data.normalization import Normalizer
from actionprior.data.schema import Episode
from actionprior.data.synthetic import synthetic_registry
from actionprior.evaluation.callbacks import OpenLoopActionError
from actionprior.models.action_prior import ActionPriorConfig
from actionprior.models.vla import VLAConfig

CHUNK = 4


class FixedChunkModel(torch.nn.Module):
    def __init__(self, chunk: torch.Tensor):
        super().__init__()
        self.chunk = chunk
        self.chunk_len = chunk.shape[1]
        self.batches: list[dict] = []

    def sample_actions(self, batch, steps=None, generator=None):
        self.batches.append(batch)
        return self.chunk.clone()


def _episode(reg, name: str, length: int, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    spec = reg[name]
    return Episode(
        key=f"{name}-{seed}",
        embodiment=name,
        task="reach",
        instruction="reach",
        state=rng.normal(size=(length, spec.state_dim)),
        action=rng.normal(size=(length, spec.action_dim)),
        success=True,
        control_rate_hz=20.0,
        # stored at 16 px; the callback resizes to the policy's 8 px
        frames={"scene": rng.integers(0, 255, (length, 16, 16, 3), dtype=np.uint8)},
    )


def test_open_loop_error_in_raw_units_against_hand_computed_values() -> None:
    reg = synthetic_registry()
    norm = Normalizer(tiny_stats(reg), reg)
    chunk = torch.zeros(1, CHUNK, reg.max_action_dim)  # normalised zero = the per-dim centre in raw units
    model = FixedChunkModel(chunk)
    module = SimpleNamespace(
        model=model, normalizer=norm, camera_names=list(CAMERAS), device=torch.device("cpu")
    )
    episodes = [_episode(reg, "synth_arm4", 10, 0), _episode(reg, "synth_arm7", 6, 1)]
    out = OpenLoopActionError(stride=3).evaluate(module, episodes, history_len=2, image_size=8)
    for ep in episodes:
        centre = norm.unnormalize(ep.embodiment, "action", np.zeros(ep.action.shape[1], np.float32))
        mean = np.asarray(norm.stats[ep.embodiment]["action"]["mean"], np.float32)
        errs, base = [], []
        for t in range(0, len(ep), 3):  # chunks start at 0, 3, 6, 9; the last ones are cut at the end
            target = ep.action[t : t + CHUNK]
            errs.append(np.abs(centre - target).ravel())
            base.append(np.abs(mean - target).ravel())
        assert out[f"mae/{ep.embodiment}"] == pytest.approx(np.concatenate(errs).mean(), rel=1e-5)
        assert out[f"baseline_mae/{ep.embodiment}"] == pytest.approx(np.concatenate(base).mean(), rel=1e-5)
    assert "mae/synth_arm8" not in out  # no held-out episode of it: left out, not reported as 0
    assert out["mae_ratio"] == pytest.approx((out["mae_ratio/synth_arm4"] + out["mae_ratio/synth_arm7"]) / 2)
    # 4 + 2 chunks; ground-truth history (normalised) right-aligned, the wrist camera masked out
    assert len(model.batches) == 6
    b = model.batches[1]  # synth_arm4 at t=3: history = steps 1, 2
    np.testing.assert_allclose(
        b["history_action"][0, :, :4].numpy(),
        norm.normalize("synth_arm4", "action", episodes[0].action[1:3]),
        rtol=1e-5,
    )
    assert b["camera_mask"].tolist() == [[True, False]] and b["images"].shape[-1] == 8
    assert model.batches[0]["history_mask"].tolist() == [[False, False]]


def test_callback_logs_metrics_during_validation(tmp_path) -> None:
    from actionprior.data.datamodule import ActionPriorDataModule
    from actionprior.data.synthetic import write_synthetic_dataset
    from actionprior.training.vla_module import VLAModule

    write_synthetic_dataset(tmp_path / "data", episodes_per_embodiment=3, length_range=(8, 12), image_size=16)
    dm = ActionPriorDataModule(
        [str(tmp_path / "data")],
        view="observation",
        chunk_len=CHUNK,
        history_len=2,
        batch_size=2,
        num_workers=0,
        batches_per_epoch=1,
        val_batches=1,
        val_fraction=0.5,
        image_size=16,
    )
    module = VLAModule(
        vla=VLAConfig(backbone="tiny:qwen3_vl", head_hidden=32),
        prior=ActionPriorConfig(**{**TINY_PRIOR, "sample_steps": 2}),
        chunk_len=CHUNK,
        camera_names=dm.camera_names,
        embodiments=dm.embodiments,
        normalization=dm.normalization,
    )
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[OpenLoopActionError(max_episodes=2)],
    )
    trainer.validate(module, datamodule=dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_openloop/")}
    assert "val_openloop/mae_ratio" in logged and any(
        k.startswith("val_openloop/mae/synth_arm") for k in logged
    )
    assert all(np.isfinite(v) and v > 0 for v in logged.values())
