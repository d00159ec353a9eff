"""SLURM: the ``srun`` line inside an allocation, and an sbatch script generator.

Generate and submit a batch job::

    python -m lightning_apps.slurm --stage 1 --nodes 8 --gpus 8 --partition gpu --time 24:00:00 \\
        -- --trainer.max_steps 5000 > stage1.sbatch
    sbatch stage1.sbatch

The script starts one task per device (``--ntasks-per-node`` = GPUs) with ``srun``; Lightning's
``SLURMEnvironment`` turns the SLURM variables into ranks. ``--signal=SIGUSR1@90`` plus ``--requeue`` let
Lightning save a checkpoint and requeue the job before a time limit or pre-emption; the requeued job resumes
from that checkpoint on its own.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from lightning_apps.command import (
    LaunchError,
    TrainCommand,
    add_train_arguments,
    command_from_args,
    format_command,
    split_passthrough,
)

TEMPLATE = Path(__file__).with_name("templates") / "train.sbatch"

# Lightning does not treat these job names as batch jobs (it assumes an interactive shell and ignores SLURM).
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")


def srun_argv(cmd: TrainCommand, job_name: str | None = None) -> list[str]:
    """``srun`` starting one task per device on every node, each running the training command."""
    argv = [
        "srun",
        f"--nodes={cmd.nodes}",
        f"--ntasks-per-node={cmd.devices}",
        # If one rank dies, kill the step instead of leaving the others blocked in a collective.
        "--kill-on-bad-exit=1",
    ]
    if job_name:
        argv.append(f"--job-name={job_name}")
    return argv + cmd.argv()


def srun_in_allocation(cmd: TrainCommand, env: Mapping[str, str]) -> list[str]:
    """The srun line for the allocation described by ``env``, refusing layouts the allocation cannot hold."""
    allocated = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    if allocated is not None and int(allocated) != cmd.nodes:
        raise LaunchError(
            f"NODES={cmd.nodes} but SLURM job {env.get('SLURM_JOB_ID')} has {allocated} node(s); "
            f"use NODES={allocated} or allocate {cmd.nodes} nodes"
        )
    per_node = env.get("SLURM_NTASKS_PER_NODE")
    if per_node is not None and per_node.isdigit() and int(per_node) != cmd.devices:
        raise LaunchError(
            f"the allocation has --ntasks-per-node={per_node} but the run wants {cmd.devices} device(s) per node; "
            f"use GPUS={per_node} (or allocate with --ntasks-per-node={cmd.devices})"
        )
    job_name = None
    if env.get("SLURM_JOB_NAME") in _INTERACTIVE_JOB_NAMES:
        # salloc/srun --pty shells are named "bash"/"interactive"; Lightning then ignores SLURM and every task
        # would think it is rank 0. Naming the step makes SLURMEnvironment detect the step's tasks.
        job_name = f"actionprior-stage{cmd.stage}"
    return srun_argv(cmd, job_name=job_name)


@dataclass(frozen=True)
class SbatchOptions:
    """The scheduler-side settings of a batch job (resources come from the TrainCommand)."""

    job_name: str
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int = 8
    mem: str | None = None
    log_dir: str = "runs/slurm"
    workdir: str = field(default_factory=lambda: str(Path.cwd()))
    exports: tuple[str, ...] = ()  # KEY=VALUE
    extra_directives: tuple[str, ...] = ()  # raw "--constraint=h100" etc.


def render_sbatch(cmd: TrainCommand, opts: SbatchOptions, generator: str = "lightning_apps.slurm") -> str:
    directives = []
    if cmd.gpus > 0:
        directives.append(f"#SBATCH --gres=gpu:{cmd.gpus}")
    for key, value in (
        ("partition", opts.partition),
        ("account", opts.account),
        ("qos", opts.qos),
        ("mem", opts.mem),
    ):
        if value:
            directives.append(f"#SBATCH --{key}={value}")
    for raw in opts.extra_directives:
        directives.append(f"#SBATCH {raw if raw.startswith('-') else '--' + raw}")
    exports = ["export PYTHONUNBUFFERED=1"]
    for item in opts.exports:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise LaunchError(f"--env expects KEY=VALUE, got {item!r}")
        exports.append(f"export {key}={shlex.quote(value)}")
    return Template(TEMPLATE.read_text()).substitute(
        generator=generator,
        job_name=opts.job_name,
        nodes=cmd.nodes,
        tasks_per_node=cmd.devices,
        cpus_per_task=opts.cpus_per_task,
        time=opts.time,
        output=f"{opts.log_dir}/%x-%j.out",
        extra_directives="\n".join(directives),
        workdir=shlex.quote(opts.workdir),
        log_dir=shlex.quote(opts.log_dir),
        exports="\n".join(exports),
        srun_command=format_command(srun_argv(cmd)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m lightning_apps.slurm",
        description="Write an sbatch script for a training stage to stdout.",
    )
    add_train_arguments(parser)
    parser.add_argument("--job-name", default=None, help="default: actionprior-stage<N>")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--qos", default=None)
    parser.add_argument("--cpus-per-task", type=int, default=8, help="data-loader workers + 1, per device")
    parser.add_argument("--mem", default=None, help="memory per node, e.g. 400G")
    parser.add_argument("--log-dir", default="runs/slurm")
    parser.add_argument(
        "--workdir", default=None, help="repository root on the cluster (default: current dir)"
    )
    parser.add_argument("--python", default=None, help="interpreter on the compute nodes (default: this one)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="export in the job")
    parser.add_argument(
        "--directive", action="append", default=[], help="extra #SBATCH option, e.g. constraint=h100"
    )
    ns = parser.parse_args(own)
    try:
        cmd = command_from_args(ns, extra, python=ns.python)
        opts = SbatchOptions(
            job_name=ns.job_name or f"actionprior-stage{ns.stage}",
            time=ns.time,
            partition=ns.partition,
            account=ns.account,
            qos=ns.qos,
            cpus_per_task=ns.cpus_per_task,
            mem=ns.mem,
            log_dir=ns.log_dir,
            workdir=ns.workdir or str(Path.cwd()),
            exports=tuple(ns.env),
            extra_directives=tuple(ns.directive),
        )
        script = render_sbatch(
            cmd, opts, generator=format_command(["python", "-m", "lightning_apps.slurm", *own, "--", *extra])
        )
    except LaunchError as err:
        parser.exit(2, f"error: {err}\n")
    sys.stdout.write(script)
    return 0


if __name__ == "__main__":
    sys.exit(main())
