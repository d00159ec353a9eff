"""A 2-process DDP run (CPU, gloo) over a dataset whose shard count does not divide across ranks and
workers completes its epochs, with the same number of batches on both ranks and different windows on each.

Lightning runs in a subprocess in its own session: a hang is killed after TIMEOUT_S and fails the test.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from processes import run_or_fail_on_hang

from actionprior.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    import torch
    from actionprior.data.datamodule import ActionPriorDataModule

    class Tiny(L.LightningModule):
        def __init__(self, state_dim, action_dim):
            super().__init__()
            self.net = torch.nn.Linear(state_dim, action_dim)
            self.train_keys, self.val_batches = [], 0

        def training_step(self, batch, batch_idx):
            self.train_keys.append([f"{k}@{int(t)}" for k, t in zip(batch["episode_key"], batch["timestep"])])
            err = (self.net(batch["state"]) - batch["action"]) ** 2
            return (err * batch["step_mask"][..., None]).mean()

        def validation_step(self, batch, batch_idx):
            self.val_batches += 1
            self.log("val_loss", (self.net(batch["state"]) - batch["action"]).pow(2).mean(), sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    if __name__ == "__main__":
        data, out = sys.argv[1], sys.argv[2]
        dm = ActionPriorDataModule(
            [data], chunk_len=4, history_len=2, batch_size=8, num_workers=1,
            batches_per_epoch=5, val_batches=2, val_fraction=0.3, shuffle_buffer=8,
        )
        model = Tiny(dm.registry.max_state_dim, dm.registry.max_action_dim)
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, datamodule=dm)
        record = {"rank": trainer.global_rank, "step": trainer.global_step,
                  "train": model.train_keys, "val": model.val_batches}
        with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(record, f)
    """
)


@pytest.mark.slow
def test_ddp_with_uneven_shards_completes_epochs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # 7 episodes in 3 shards of 3, 1 and 3 episodes: 3 shards over 2 ranks x 1 worker cannot split evenly.
    write_synthetic_dataset(data, episodes_per_embodiment=3, with_frames=False, shard_sizes=(3, 1, 5))
    manifest = json.loads((data / "manifest.json").read_text())
    assert len(manifest["shards"]) % 2 == 1
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run_or_fail_on_hang(
        [sys.executable, str(script), str(data), str(tmp_path)], TIMEOUT_S, tmp_path, env, "DDP run"
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["step"] == r1["step"] == 10  # 2 epochs x 5 batches on each rank
    assert len(r0["train"]) == len(r1["train"]) == 10
    assert r0["val"] == r1["val"] == 4  # 2 validation runs x 2 batches
    assert r0["train"] != r1["train"]  # rank-seeded streams: each rank reads its own windows
