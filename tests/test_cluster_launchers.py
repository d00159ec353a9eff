"""Dry-run tests of the launchers: the exact commands / scripts / job specs they would run."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lightning_apps.command import LaunchError, TrainCommand
from lightning_apps.launch import plan_launch
from lightning_apps.lightning_ai import build_spec, gpus_of_machine, submit
from lightning_apps.slurm import SbatchOptions, render_sbatch, srun_in_allocation
from lightning_apps.torchrun import Rendezvous, torchrun_argv

REPO = Path(__file__).resolve().parents[1]
PY = "/venv/bin/python"


def _trainer_flags(argv: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The launcher-owned --trainer.* flags and their values; they must come last so configs cannot override."""
    tail = list(argv[-6:])
    return dict(zip(tail[::2], tail[1::2], strict=True))


def test_single_node_is_a_direct_actionprior_fit() -> None:
    cmd = TrainCommand(stage=1, python=PY, extra_args=("--trainer.max_steps", "10"))
    plan = plan_launch(cmd, env={})
    assert plan.launcher == "direct"
    assert plan.commands == (
        (
            PY, "-m", "actionprior.cli", "fit", "-c", "configs/stage1.yaml", "--trainer.max_steps", "10",
            "--trainer.accelerator", "cpu", "--trainer.num_nodes", "1", "--trainer.devices", "1",
        ),
    )  # fmt: skip


def test_inside_slurm_uses_srun_with_one_task_per_gpu() -> None:
    cmd = TrainCommand(stage=2, nodes=8, gpus=8, python=PY)
    plan = plan_launch(cmd, env={"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "8", "SLURM_JOB_NAME": "train"})
    assert plan.launcher == "srun"
    (argv,) = plan.commands
    assert argv[:4] == ("srun", "--nodes=8", "--ntasks-per-node=8", "--kill-on-bad-exit=1")
    assert argv[4:10] == (PY, "-m", "actionprior.cli", "fit", "-c", "configs/stage2.yaml")
    assert _trainer_flags(argv) == {
        "--trainer.accelerator": "gpu",
        "--trainer.num_nodes": "8",
        "--trainer.devices": "8",
    }


def test_slurm_refuses_a_layout_the_allocation_does_not_have() -> None:
    with pytest.raises(LaunchError, match="NODES=8 but SLURM job 42 has 4 node"):
        srun_in_allocation(
            TrainCommand(stage=1, nodes=8, gpus=8), {"SLURM_JOB_ID": "42", "SLURM_NNODES": "4"}
        )
    with pytest.raises(LaunchError, match="--ntasks-per-node=4.*GPUS=4"):
        srun_in_allocation(
            TrainCommand(stage=1, nodes=1, gpus=8),
            {"SLURM_JOB_ID": "42", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "4"},
        )


def test_interactive_allocation_names_the_step_so_lightning_sees_slurm() -> None:
    argv = srun_in_allocation(
        TrainCommand(stage=1, nodes=1, gpus=2), {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "bash"}
    )
    assert "--job-name=actionprior-stage1" in argv


def test_multi_node_outside_slurm_uses_torchrun_with_the_users_rendezvous() -> None:
    cmd = TrainCommand(stage=1, nodes=2, gpus=8, python=PY)
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29511", "NODE_RANK": "1"}
    plan = plan_launch(cmd, env)
    assert plan.launcher == "torchrun"
    (argv,) = plan.commands
    assert argv[:8] == (
        PY, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=8", "--node-rank=1",
        "--master-addr=10.0.0.1", "--master-port=29511",
    )  # fmt: skip
    assert argv[8:12] == ("-m", "actionprior.cli", "fit", "-c")
    assert _trainer_flags(argv) == {
        "--trainer.accelerator": "gpu",
        "--trainer.num_nodes": "2",
        "--trainer.devices": "8",
    }


def test_multi_node_without_rendezvous_variables_says_which_are_missing() -> None:
    with pytest.raises(LaunchError, match="needs MASTER_ADDR and NODE_RANK"):
        plan_launch(TrainCommand(stage=1, nodes=2, gpus=8), env={})
    with pytest.raises(LaunchError, match="NODE_RANK=2 is outside 0..1"):
        Rendezvous.from_env({"MASTER_ADDR": "h", "NODE_RANK": "2"}, nodes=2)


def test_simulated_nodes_run_one_torchrun_agent_per_node_rank_on_loopback() -> None:
    cmd = TrainCommand(stage=1, nodes=2, gpus=0, python=PY)
    plan = plan_launch(cmd, env={"MASTER_PORT": "29600"}, simulate_nodes=True)
    assert [c[5] for c in plan.commands] == ["--node-rank=0", "--node-rank=1"]
    assert all("--master-addr=127.0.0.1" in c and "--master-port=29600" in c for c in plan.commands)


@pytest.mark.parametrize(
    "extra", [("--trainer.devices", "4"), ("--trainer.num_nodes=2",), ("--trainer.accelerator", "gpu")]
)
def test_args_cannot_contradict_the_launcher(extra: tuple[str, ...]) -> None:
    with pytest.raises(LaunchError, match="set by the launcher"):
        TrainCommand(stage=1, extra_args=extra)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "deepspeed_zero2"},
        {"strategy": "fsdp"},
        {"extra_args": ("-c", "configs/cluster/deepspeed_zero3.yaml")},
        {"extra_args": ("--trainer.strategy", "fsdp")},
    ],
)
def test_cuda_only_strategies_are_refused_for_cpu_runs_before_launch(kwargs: dict) -> None:
    with pytest.raises(LaunchError, match="needs CUDA GPUs but GPUS=0"):
        TrainCommand(stage=1, gpus=0, **kwargs)


def test_cluster_config_is_layered_after_the_stage_config() -> None:
    args = TrainCommand(stage=1, gpus=8, strategy="fsdp").cli_args()
    assert args[:5] == ["fit", "-c", "configs/stage1.yaml", "-c", "configs/cluster/fsdp.yaml"]


def test_launch_module_dry_run_prints_the_command_and_runs_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_apps.launch", "--stage", "2", "--nodes", "1", "--gpus", "0",
         "--dry-run", "--", "--trainer.max_steps", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (line,) = out.stdout.strip().splitlines()
    argv = shlex.split(line)
    assert argv[1:] == [
        "-m", "actionprior.cli", "fit", "-c", "configs/stage2.yaml", "--trainer.max_steps", "3",
        "--trainer.accelerator", "cpu", "--trainer.num_nodes", "1", "--trainer.devices", "1",
    ]  # fmt: skip
    assert "launcher: direct" in out.stderr


def test_launch_module_reports_errors_without_a_traceback() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_apps.launch", "--stage", "1", "--nodes", "3", "--dry-run", "--"],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "MASTER_ADDR" in out.stderr


def test_sbatch_script_requeues_on_sigusr1_and_matches_the_srun_layout() -> None:
    cmd = TrainCommand(stage=1, nodes=8, gpus=8, python=PY, extra_args=("--trainer.max_steps", "5000"))
    script = render_sbatch(
        cmd, SbatchOptions(job_name="ap1", partition="gpu", workdir="/repo", time="12:00:00")
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in (
        "#SBATCH --job-name=ap1",
        "#SBATCH --nodes=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gres=gpu:8",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        "#SBATCH --time=12:00:00",
        "#SBATCH --partition=gpu",
    ):
        assert directive in lines
    srun = shlex.split(lines[-1])
    assert srun[:4] == ["srun", "--nodes=8", "--ntasks-per-node=8", "--kill-on-bad-exit=1"]
    assert _trainer_flags(srun)["--trainer.num_nodes"] == "8"
    assert _trainer_flags(srun)["--trainer.devices"] == "8"
    assert "cd /repo" in lines
    # srun does not inherit --cpus-per-task from sbatch since Slurm 22.05
    assert "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK}" in lines
    assert "$" not in script.replace("${SLURM", "").replace("$(date", "")  # every placeholder substituted


def test_slurm_module_writes_the_script_to_stdout() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_apps.slurm", "--stage", "2", "--nodes", "2", "--gpus", "4",
         "--workdir", "/repo", "--env", "HF_HOME=/scratch/hf", "--", "--trainer.max_steps", "50000"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "#SBATCH --ntasks-per-node=4" in out.stdout
    assert "export HF_HOME=/scratch/hf" in out.stdout
    assert "--trainer.max_steps 50000" in out.stdout.splitlines()[-1]


def test_lightning_ai_spec_is_a_multi_machine_job_with_matching_devices() -> None:
    cmd = TrainCommand(stage=2, nodes=4, gpus=8, python="python")
    spec = build_spec(cmd, name="ap2", machine="H100_X_8", studio="s", teamspace="me/ts", env={"A": "1"})
    assert spec.num_machines == 4
    assert shlex.split(spec.command)[-6:] == [
        "--trainer.accelerator", "gpu", "--trainer.num_nodes", "4", "--trainer.devices", "8",
    ]  # fmt: skip
    with pytest.raises(LaunchError, match="H100_X_8 has 8 GPU"):
        build_spec(TrainCommand(stage=2, nodes=4, gpus=4), name="x", machine="H100_X_8")
    assert (gpus_of_machine("CPU"), gpus_of_machine("L4"), gpus_of_machine("a100_x_4")) == (0, 1, 4)


def test_lightning_ai_dry_run_needs_neither_sdk_nor_credentials() -> None:
    code = (
        "import sys, runpy; sys.argv = ['x', '--stage', '1', '--nodes', '2', '--gpus', '8', '--machine', "
        "'H100_X_8', '--studio', 'st', '--dry-run', '--', '--trainer.max_steps', '7'];\n"
        "try:\n    runpy.run_module('lightning_apps.lightning_ai', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'lightning_sdk' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin"},
    )
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)
    assert spec["num_machines"] == 2 and spec["machine"] == "H100_X_8" and spec["studio"] == "st"
    assert spec["command"].startswith(
        "python -m actionprior.cli fit -c configs/stage1.yaml --trainer.max_steps 7"
    )


def test_lightning_ai_submit_calls_the_sdk_with_num_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []

    class FakeJob:
        @staticmethod
        def run(name, command, machine, num_machines=1, studio=None, image=None, teamspace=None, env=None,
                interruptible=False):  # fmt: skip
            calls.append(dict(locals()))
            return types.SimpleNamespace(link="https://lightning.ai/x")

    class FakeMachine:
        @staticmethod
        def from_str(name: str) -> str:
            return f"Machine<{name}>"

    monkeypatch.setitem(sys.modules, "lightning_sdk", types.SimpleNamespace(Job=FakeJob, Machine=FakeMachine))
    spec = build_spec(
        TrainCommand(stage=1, nodes=3, gpus=8, python="python"), name="j", machine="A100_X_8", studio="s"
    )
    job = submit(spec)
    assert job.link.endswith("/x")
    (call,) = calls
    assert call["num_machines"] == 3 and call["machine"] == "Machine<A100_X_8>" and call["studio"] == "s"
    assert call["command"] == spec.command


def test_lightning_ai_submit_without_the_sdk_points_to_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightning_sdk", None)  # makes `import lightning_sdk` fail
    spec = build_spec(TrainCommand(stage=1, nodes=2, gpus=1), name="j", machine="L4")
    with pytest.raises(LaunchError, match=r"pip install '\.\[cloud\]'"):
        submit(spec)


def test_torchrun_argv_matches_torchs_own_parser() -> None:
    from torch.distributed.run import get_args_parser

    argv = torchrun_argv(TrainCommand(stage=1, nodes=2, gpus=0, cpu_processes=2), Rendezvous("h", 29555, 1))
    ns = get_args_parser().parse_args(argv[3:])
    assert (ns.nnodes, ns.nproc_per_node, ns.node_rank, ns.master_addr, ns.master_port) == (
        "2",
        "2",
        1,
        "h",
        29555,
    )
    assert ns.module and ns.training_script == "actionprior.cli"


def test_lightning_ai_dry_run_shows_the_equivalent_lightning_cli_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_apps.lightning_ai", "--stage", "2", "--nodes", "4", "--gpus", "8",
         "--machine", "H200_X_8", "--studio", "st", "--env", "HF_HOME=/teamspace/hf", "--dry-run", "--",
         "--trainer.max_steps", "50000"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    shown = json.loads(out.stdout)
    argv = shlex.split(shown["lightning_cli"])
    assert argv[:3] == ["lightning", "job", "run"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert options == {
        "--name": "actionprior-stage2",
        "--machine": "H200_X_8",
        "--num-machines": "4",
        "--command": shown["command"],
        "--studio": "st",
        "--env": "HF_HOME=/teamspace/hf",
    }


def test_lightning_cli_line_submits_the_same_job_as_the_python_submitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both paths end in lightning_sdk's ``Job.run``: the CLI line, parsed by the SDK's own click command,
    must hand it exactly what :func:`submit` hands it."""
    lightning_sdk = pytest.importorskip("lightning_sdk")
    from lightning_sdk.cli.job import run as cli_run

    from lightning_apps.lightning_ai import cli_argv

    calls: list[dict] = []

    def fake_run(name, machine, command=None, studio=None, image=None, teamspace=None, env=None,
                 interruptible=False, num_machines=1, **rest):  # fmt: skip
        calls.append(
            dict(name=name, machine=machine, command=command, studio=studio, image=image, teamspace=teamspace,
                 env=env or {}, interruptible=interruptible, num_machines=num_machines, rest=rest)
        )  # fmt: skip
        return types.SimpleNamespace(link="https://lightning.ai/x", name=name, id="j1")

    monkeypatch.setattr(lightning_sdk.Job, "run", staticmethod(fake_run))
    monkeypatch.setattr(cli_run, "resolve_teamspace", lambda teamspace, org, user: teamspace)
    for spec in (
        build_spec(
            TrainCommand(stage=2, nodes=4, gpus=8, python="python", extra_args=("--trainer.max_steps", "50000")),
            name="ap2", machine="H100_X_8", studio="my studio", teamspace="me/ts",
            env={"HF_HOME": "/teamspace/a b", "X": "1=2"}, interruptible=True,
        ),
        build_spec(TrainCommand(stage=1, nodes=1, gpus=1), name="ap1", machine="L4", image="repo/img:1"),
    ):  # fmt: skip
        calls.clear()
        submit(spec)
        argv = cli_argv(spec)
        assert argv[:3] == ["lightning", "job", "run"]
        cli_run.run_job.main(argv[3:], prog_name="lightning job run", standalone_mode=False)
        python_call, cli_call = calls
        assert python_call.pop("rest") == {}
        cli_only = cli_call.pop("rest")
        assert cli_call == python_call
        assert cli_call["num_machines"] == spec.num_machines and cli_call["command"] == spec.command
        # What else the CLI passes is empty or off: nothing the Python submitter leaves out is set.
        assert {k: v for k, v in cli_only.items() if v not in (None, False, {}, [], ())} == {}
