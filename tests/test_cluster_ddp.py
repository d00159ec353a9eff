"""Real distributed runs on CPU (gloo), started through the launchers exactly as `make stage1` starts them.

* 2-process DDP on one node: replicas end with identical weights, each rank reads its own windows.
* 2-node rehearsal: two torchrun agents (--nnodes=2, node ranks 0 and 1) on 127.0.0.1 train Stage 1 and write
  one set of checkpoints; a 1-process run resumes from it (different world size) and continues.

Each run is a subprocess in its own session with a timeout: a hang kills the process group and fails the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

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


def _tiny_stage1_args(data: Path, run: Path, probe: Path, max_steps: int) -> list[str]:
    probe_cb = f'{{"class_path": "test_cluster_ddp.ReplicaProbe", "init_args": {{"out_dir": "{probe}"}}}}'
    return [
        "--data.datasets", f"[{{path: {data}, weight: 1.0}}]",
        "--data.batch_size", "4", "--data.batches_per_epoch", "3", "--data.num_workers", "0",
        "--data.shuffle_buffer", "4", "--data.chunk_len", "4", "--data.history_len", "2",
        "--model.init_args.width", "16", "--model.init_args.depth", "1", "--model.init_args.heads", "2",
        "--model.init_args.latent_dim", "8", "--model.init_args.warmup_steps", "1",
        "--trainer.max_steps", str(max_steps), "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
        "--checkpoint.every_n_train_steps", "2",
        f"--trainer.callbacks+={probe_cb}",
    ]  # fmt: skip


def _launch(launcher_args: list[str], train_args: list[str], env_extra: dict[str, str]) -> str:
    """Run `python -m lightning_apps.launch ...`; kill the whole process tree if it outlives TIMEOUT_S."""
    env = {**os.environ, **env_extra, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    cmd = [sys.executable, "-m", "lightning_apps.launch", "--stage", "1", *launcher_args, "--", *train_args]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"distributed run hung for {TIMEOUT_S} s and was killed:\n{out[-3000:]}")
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from actionprior.data.synthetic import write_synthetic_dataset

    path = tmp_path_factory.mktemp("cluster") / "data"
    write_synthetic_dataset(path, episodes_per_embodiment=4, with_frames=False)
    return path


def _load_probes(probe: Path, world_size: int) -> list[dict]:
    records = [torch.load(probe / f"rank{r}.pt") for r in range(world_size)]
    assert sorted(probe.iterdir()) == [probe / f"rank{r}.pt" for r in range(world_size)]
    return records


@pytest.mark.slow
def test_two_process_ddp_keeps_replicas_identical_and_splits_the_data(dataset: Path, tmp_path: Path) -> None:
    run, probe = tmp_path / "run", tmp_path / "probe"
    out = _launch(
        ["--nodes", "1", "--gpus", "0", "--cpu-processes", "2"],
        _tiny_stage1_args(dataset, run, probe, max_steps=3),
        {"MASTER_PORT": str(_free_port())},
    )
    assert "launcher: direct" in out
    r0, r1 = _load_probes(probe, 2)
    assert (r0["world_size"], r1["world_size"]) == (2, 2)
    assert r0["global_step"] == r1["global_step"] == 3
    assert len(r0["windows"]) == len(r1["windows"]) == 3  # the same number of batches: no rank waits
    # DDP all-reduces gradients: after training both replicas hold exactly the same weights ...
    assert torch.equal(r0["params"], r1["params"])
    # ... while each rank trained on its own windows (rank-seeded streams), not a copy of rank 0's.
    assert all(b0 != b1 for b0, b1 in zip(r0["windows"], r1["windows"], strict=True))
    assert not set(sum(r0["windows"], [])) >= set(sum(r1["windows"], []))
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_two_node_torchrun_rehearsal_then_resume_on_one_process(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    port = str(_free_port())
    out = _launch(
        ["--nodes", "2", "--gpus", "0", "--simulate-nodes"],
        _tiny_stage1_args(dataset, run, tmp_path / "probe2", max_steps=4),
        {"MASTER_PORT": port},
    )
    commands = [line for line in out.splitlines() if "torch.distributed.run" in line]
    assert len(commands) == 2
    assert all(f"--master-addr=127.0.0.1 --master-port={port}" in c and "--nnodes=2" in c for c in commands)
    assert ["--node-rank=0" in commands[0], "--node-rank=1" in commands[1]] == [True, True]

    n0, n1 = _load_probes(tmp_path / "probe2", 2)
    assert (n0["num_nodes"], n0["world_size"], n1["rank"]) == (2, 2, 1)
    assert torch.equal(n0["params"], n1["params"])
    # One run, one set of checkpoints (only global rank 0 writes), however many nodes trained it.
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4

    # Resume the 2-node run in a single process: a different world size.
    _launch(
        ["--nodes", "1", "--gpus", "0"],
        [*_tiny_stage1_args(dataset, run, tmp_path / "probe1", max_steps=6), "--ckpt_path", "last"],
        {"MASTER_PORT": str(_free_port())},
    )
    (solo,) = _load_probes(tmp_path / "probe1", 1)
    assert (solo["world_size"], solo["start_step"], solo["global_step"]) == (1, 4, 6)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6
    assert not torch.equal(solo["params"], n0["params"])  # it kept training from the restored weights
