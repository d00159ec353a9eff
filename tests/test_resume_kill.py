"""Exact resume after SIGKILL: a Stage 1 run killed at a random step and resumed with ``--ckpt_path last`` ends
with parameters bit-identical (torch.equal) to an uninterrupted run; the killed run's leftovers are cleaned."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from processes import run_or_fail_on_hang

from actionprior.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "stage1.yaml"
MAX_STEPS = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "synth"
    write_synthetic_dataset(out, episodes_per_embodiment=6, with_frames=False)
    return out


def _cmd(dataset: Path, root: Path, workers: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "actionprior.cli", "fit", "-c", str(CONFIG),
        "--data.datasets", f"[{{path: {dataset}}}]",
        "--data.chunk_len", "4", "--data.history_len", "2", "--data.batch_size", "8",
        "--data.num_workers", str(workers),
        # 5 batches an epoch: kills land mid-epoch and at epoch ends; validation every 4 steps.
        "--data.batches_per_epoch", "5", "--data.val_batches", "1", "--data.val_fraction", "0.3",
        "--data.shuffle_buffer", "16",
        "--model.init_args.prior.width", "32", "--model.init_args.prior.depth", "1",
        "--model.init_args.prior.heads", "2", "--model.init_args.prior.latent_dim", "8",
        "--model.init_args.prior.sample_steps", "2", "--model.init_args.prior.dropout", "0.1",
        "--model.init_args.warmup_steps", "2",
        "--trainer.max_steps", str(MAX_STEPS), "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.val_check_interval", "4", "--checkpoint.every_n_train_steps", "1",
        *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _weights(root: Path, steps: int = MAX_STEPS) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == steps
    return checkpoint["state_dict"]


def _kill_at_step(cmd: list[str], root: Path, step: int, timeout_s: float = 120) -> None:
    """Start ``cmd`` and SIGKILL its process group as soon as the checkpoint of ``step`` exists."""
    marker = root / "checkpoints" / f"step{step:07d}.ckpt"
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run to be killed exited ({proc.returncode}) before step {step}")
            if time.monotonic() > deadline:
                pytest.fail(f"step {step} not reached in {timeout_s} s")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_kill_at_random_step_then_resume_is_bit_identical(dataset, tmp_path, workers):
    step = random.Random(1234 + workers).randrange(2, MAX_STEPS - 2)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_or_fail_on_hang(_cmd(dataset, whole, workers), 240, REPO, _env(), "uninterrupted run")

    _kill_at_step(_cmd(dataset, killed, workers), killed, step)
    stopped = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    # The kill can fall between the periodic save of `step` and the refresh of last.ckpt that follows it.
    assert step - 1 <= stopped < MAX_STEPS, f"killed at step {stopped}"
    # What a kill can leave: a save cut short, and a periodic checkpoint newer than last.ckpt.
    (killed / "checkpoints" / f".step{stopped + 1:07d}.ckpt.partial-99999").write_bytes(b"\0" * 1000)
    newer = killed / "checkpoints" / f"step{stopped + 1:07d}.ckpt"
    orphan = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    orphan["global_step"] = stopped + 1
    torch.save(orphan, newer)

    out = run_or_fail_on_hang(
        _cmd(dataset, killed, workers, "--ckpt_path", "last"), 240, REPO, _env(), "resumed run"
    )
    assert "not resumable" not in out
    assert "interrupted" in out and "newer than the checkpoint resumed from" in out, out[-3000:]
    leftovers = [p.name for p in (killed / "checkpoints").iterdir() if "partial" in p.name or "-v" in p.name]
    assert leftovers == []

    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"killed at step {stopped}: {len(different)} tensors differ, e.g. {different[:3]}"


def _stage2_cmd(data: Path, stage1: Path, root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "actionprior.cli", "fit", "-c", str(REPO / "configs" / "stage2.yaml"),
        "--data.datasets", f"[{{path: {data}}}]", "--data.chunk_len", "4", "--data.history_len", "2",
        "--data.batch_size", "4", "--data.num_workers", "0", "--data.batches_per_epoch", "5",
        "--data.val_fraction", "0.3", "--data.val_batches", "1", "--data.shuffle_buffer", "16",
        "--data.image_size", "32", "--model.init_args.vla.num_queries", "1", "--model.init_args.vla.head_hidden", "16",
        "--model.init_args.vla.use_history", "true", "--model.init_args.warmup_steps", "2",
        "--trainer.val_check_interval", "4", "--checkpoint.every_n_train_steps", "1", "--stage1_ckpt", str(stage1),
        "--trainer.max_steps", "12", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), *extra,
    ]  # fmt: skip


@pytest.mark.slow  # three Stage 2 runs (tiny:qwen3_vl, observation view): ~90 s on 2 CPU cores
def test_stage2_kill_then_resume_is_bit_identical(tmp_path):
    data = tmp_path / "synth"
    write_synthetic_dataset(data, episodes_per_embodiment=4, image_size=32)
    stage1 = tmp_path / "s1"
    run_or_fail_on_hang(_cmd(data, stage1, 0, "--trainer.max_steps", "2"), 240, REPO, _env(), "Stage 1 run")
    stage1_ckpt = stage1 / "checkpoints" / "last.ckpt"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_or_fail_on_hang(_stage2_cmd(data, stage1_ckpt, whole), 300, REPO, _env(), "uninterrupted Stage 2 run")
    _kill_at_step(_stage2_cmd(data, stage1_ckpt, killed), killed, 6)
    run_or_fail_on_hang(
        _stage2_cmd(data, stage1_ckpt, killed, "--ckpt_path", "last"),
        300,
        REPO,
        _env(),
        "resumed Stage 2 run",
    )
    a, b = _weights(whole, 12), _weights(killed, 12)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


_WRITER = """
import sys, torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from actionprior.training.checkpoint_files import AtomicCheckpointIO
io = AtomicCheckpointIO() if sys.argv[1] == "atomic" else TorchCheckpointIO()
state = {"w": torch.zeros(16, 2**20)}  # 64 MB: the write takes long enough to be killed in the middle
while True:
    io.save_checkpoint(state, sys.argv[2])
"""


def _kill_while_writing(kind: str, target: Path, tmpdir: Path) -> None:
    """SIGKILL a process that saves checkpoints to ``target`` in a loop, in the middle of its second save."""
    env = {**_env(), "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, kind, str(target)], env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not target.exists():  # the first save is complete
            assert proc.poll() is None and time.monotonic() < deadline, "the writer did not save"
            time.sleep(0.005)
        while not any(p.stat().st_size > 2**18 for p in [*tmpdir.iterdir(), *target.parent.glob(".*")]):
            assert proc.poll() is None and time.monotonic() < deadline, (
                "the writer did not start a second save"
            )
            time.sleep(0.001)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # two writer processes (~15 s each on 2 busy cores)
def test_a_kill_during_a_save_leaves_only_a_partial_file_that_the_next_start_removes(tmp_path):
    from actionprior.training.checkpoint_files import remove_partial_files

    # Lightning's own writer: the temporary file lands in $TMPDIR, outside the run, and stays there.
    tmpdir, target = tmp_path / "tmp_lightning", tmp_path / "lightning" / "last.ckpt"
    tmpdir.mkdir(), target.parent.mkdir()
    _kill_while_writing("lightning", target, tmpdir)
    leftovers = list(tmpdir.iterdir())
    assert leftovers and leftovers[0].name.startswith("tmp")

    # AtomicCheckpointIO: nothing in $TMPDIR, the target is intact, the .partial file is in the checkpoint
    # directory, and remove_partial_files (ResumableCheckpoint.setup) deletes it.
    tmpdir, target = tmp_path / "tmp_atomic", tmp_path / "atomic" / "last.ckpt"
    tmpdir.mkdir(), target.parent.mkdir()
    _kill_while_writing("atomic", target, tmpdir)
    assert list(tmpdir.iterdir()) == []
    assert torch.load(target, weights_only=True, mmap=True)["w"].shape == (16, 2**20)
    partial = [p for p in target.parent.iterdir() if p != target]
    assert len(partial) == 1 and partial[0].name.startswith(".last.ckpt.partial-")
    removed = remove_partial_files(target.parent)
    assert [p for p, _ in removed] == partial and sorted(target.parent.iterdir()) == [target]
    print(f"left by a kill: Lightning {leftovers[0].stat().st_size / 1e6:.0f} MB in $TMPDIR; "
          f"atomic {removed[0][1] / 1e6:.0f} MB .partial in the checkpoint directory (removed)")  # fmt: skip
