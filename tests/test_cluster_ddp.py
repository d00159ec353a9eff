"""Real distributed runs on CPU (gloo), started through the launchers exactly as `make stage1` starts them.

* Stage 1, 2-node rehearsal: two torchrun agents (--nnodes=2, node ranks 0 and 1) on 127.0.0.1 train with
  DDP; replicas end with identical weights, each rank reads its own windows, one set of checkpoints is
  written; a 1-process run resumes from it (a different world size) and continues.
* Stage 2, 2-process DDP on one node (Lightning starts the processes) with configs/cluster/ddp.yaml: the
  same replica and data checks.

Each run is a subprocess in its own session with a timeout: a hang kills the process group and fails the test.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from processes import run_or_fail_on_hang

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240


class ReplicaProbe(Callback):
    """Saves, per rank, the final flat parameters, the windows it trained on and the steps it ran."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.windows: list[list[str]] = []
        self.start_step = -1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.windows.append(
            [f"{k}@{int(t)}" for k, t in zip(batch["episode_key"], batch["timestep"], strict=True)]
        )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        params = torch.cat([p.detach().flatten().cpu() for p in pl_module.parameters()])
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "start_step": self.start_step,
            "global_step": trainer.global_step,
            "params": params,
            "windows": self.windows,
        }
        torch.save(record, self.out_dir / f"rank{trainer.global_rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_args(data: Path, run: Path, probe: Path, max_steps: int) -> list[str]:
    """A few-step run of a tiny model (either stage) writing checkpoints every 2 steps into ``run``."""
    probe_cb = f'{{"class_path": "test_cluster_ddp.ReplicaProbe", "init_args": {{"out_dir": "{probe}"}}}}'
    return [
        "--data.datasets", f"[{{path: {data}, weight: 1.0}}]",
        "--data.batch_size", "4", "--data.batches_per_epoch", "3", "--data.num_workers", "0",
        "--data.shuffle_buffer", "4", "--data.chunk_len", "4", "--data.history_len", "2",
        "--model.init_args.prior.width", "16", "--model.init_args.prior.depth", "1", "--model.init_args.prior.heads", "2",
        "--model.init_args.prior.latent_dim", "8", "--model.init_args.warmup_steps", "1",
        "--trainer.max_steps", str(max_steps), "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
        "--checkpoint.every_n_train_steps", "2",
        f"--trainer.callbacks+={probe_cb}",
    ]  # fmt: skip


def _launch(stage: int, launcher_args: list[str], train_args: list[str], env_extra: dict[str, str]) -> str:
    """Run `python -m lightning_apps.launch ...`; kill the whole process tree if it outlives TIMEOUT_S."""
    env = {**os.environ, **env_extra, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    cmd = [
        sys.executable,
        "-m",
        "lightning_apps.launch",
        "--stage",
        str(stage),
        *launcher_args,
        "--",
        *train_args,
    ]
    return run_or_fail_on_hang(cmd, TIMEOUT_S, REPO, env, "distributed run")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic episodes with frames: the trajectory view (Stage 1) and the observation view (Stage 2)."""
    from actionprior.data.synthetic import write_synthetic_dataset

    path = tmp_path_factory.mktemp("cluster") / "data"
    write_synthetic_dataset(path, episodes_per_embodiment=3, image_size=32)
    return path


def _load_probes(probe: Path, world_size: int) -> list[dict]:
    records = [torch.load(probe / f"rank{r}.pt") for r in range(world_size)]
    assert sorted(probe.iterdir()) == [probe / f"rank{r}.pt" for r in range(world_size)]
    return records


def _assert_replicas_in_step(r0: dict, r1: dict, steps: int) -> None:
    assert (r0["rank"], r1["rank"], r0["world_size"], r1["world_size"]) == (0, 1, 2, 2)
    assert r0["global_step"] == r1["global_step"] == steps
    assert len(r0["windows"]) == len(r1["windows"]) == steps  # the same number of batches: no rank waits
    # DDP all-reduces gradients: after training both replicas hold exactly the same weights ...
    assert torch.equal(r0["params"], r1["params"])
    # ... while each rank trained on its own windows (rank-seeded streams), not a copy of rank 0's.
    assert all(b0 != b1 for b0, b1 in zip(r0["windows"], r1["windows"], strict=True))
    assert set(sum(r0["windows"], [])) != set(sum(r1["windows"], []))


@pytest.mark.slow
def test_stage2_two_process_ddp_keeps_replicas_identical(dataset: Path, tmp_path: Path) -> None:
    """Lightning's own launcher (the single-node path) starts 2 gloo processes; no prior, so lambda = 0 and the
    action encoder gets no gradient: configs/cluster/ddp.yaml must cope with that."""
    run, probe = tmp_path / "run", tmp_path / "probe"
    args = [*_tiny_args(dataset, run, probe, max_steps=2), "--model.init_args.vla.head_hidden", "16"]
    args = ["-c", "configs/ablations/no_prior.yaml", *args]
    out = _launch(
        2,
        ["--nodes", "1", "--gpus", "0", "--cpu-processes", "2", "--strategy", "ddp"],
        [*args, "--trainer.precision", "32-true"],
        {"MASTER_PORT": str(_free_port())},
    )
    assert "launcher: direct" in out
    _assert_replicas_in_step(*_load_probes(probe, 2), steps=2)
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_two_node_torchrun_rehearsal_then_resume_on_one_process(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    port = str(_free_port())
    out = _launch(
        1,
        ["--nodes", "2", "--gpus", "0", "--simulate-nodes"],
        _tiny_args(dataset, run, tmp_path / "probe2", max_steps=4),
        {"MASTER_PORT": port},
    )
    commands = [line for line in out.splitlines() if "torch.distributed.run" in line]
    assert len(commands) == 2
    assert all(f"--master-addr=127.0.0.1 --master-port={port}" in c and "--nnodes=2" in c for c in commands)
    assert ["--node-rank=0" in commands[0], "--node-rank=1" in commands[1]] == [True, True]

    n0, n1 = _load_probes(tmp_path / "probe2", 2)
    assert (n0["num_nodes"], n1["num_nodes"]) == (2, 2)
    _assert_replicas_in_step(n0, n1, steps=4)
    # One run, one set of checkpoints (only global rank 0 writes), however many nodes trained it.
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4

    # Resume the 2-node run in a single process: a different world size.
    _launch(
        1,
        ["--nodes", "1", "--gpus", "0"],
        [*_tiny_args(dataset, run, tmp_path / "probe1", max_steps=6), "--ckpt_path", "last"],
        {"MASTER_PORT": str(_free_port())},
    )
    (solo,) = _load_probes(tmp_path / "probe1", 1)
    assert (solo["world_size"], solo["start_step"], solo["global_step"]) == (1, 4, 6)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6
    assert not torch.equal(solo["params"], n0["params"])  # it kept training from the restored weights
