"""``make stage1`` / ``make stage2``: pick the launch path and run (or print) the exact commands.

    python -m lightning_apps.launch --stage 1 --nodes N --gpus G [--dry-run] -- [ARGS for actionprior fit]

Paths, chosen automatically (``--launcher`` forces one):

* inside a SLURM allocation (``SLURM_JOB_ID`` set): ``srun`` with one task per device; Lightning's
  ``SLURMEnvironment`` reads the ranks and handles SIGUSR1 requeue (see ``lightning_apps.slurm``);
* several nodes without SLURM: ``torchrun`` on this machine with MASTER_ADDR / MASTER_PORT / NODE_RANK from the
  environment -- run the same command on every machine with its own NODE_RANK;
* one node: ``actionprior fit`` directly; Lightning starts one process per device itself.

``--simulate-nodes`` runs all NODES torchrun agents on this machine over 127.0.0.1: a multi-node rehearsal.
``--trainer.num_nodes``, ``--trainer.devices`` and ``--trainer.accelerator`` are always appended from
--nodes/--gpus, so Lightning and the launcher agree on the process layout.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lightning_apps.command import (
    LaunchError,
    TrainCommand,
    add_train_arguments,
    command_from_args,
    format_command,
    split_passthrough,
)
from lightning_apps.slurm import srun_in_allocation
from lightning_apps.torchrun import Rendezvous, torchrun_argv

LAUNCHERS = ("auto", "direct", "srun", "torchrun")


@dataclass(frozen=True)
class LaunchPlan:
    """What will run on this machine: one command, or one per simulated node."""

    launcher: str
    commands: tuple[tuple[str, ...], ...]
    why: str


def choose_launcher(cmd: TrainCommand, env: Mapping[str, str]) -> tuple[str, str]:
    if env.get("SLURM_JOB_ID"):
        return "srun", f"inside SLURM job {env['SLURM_JOB_ID']}"
    if cmd.nodes > 1:
        return "torchrun", f"{cmd.nodes} nodes outside SLURM"
    return "direct", "single node"


def plan_launch(
    cmd: TrainCommand, env: Mapping[str, str], launcher: str = "auto", simulate_nodes: bool = False
) -> LaunchPlan:
    """Decide the commands for ``cmd`` given the environment; raises LaunchError for impossible requests."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if simulate_nodes:
        if launcher not in ("auto", "torchrun"):
            raise LaunchError("--simulate-nodes uses torchrun; drop --launcher or set it to torchrun")
        if cmd.gpus > 0:
            raise LaunchError("--simulate-nodes is a CPU rehearsal on one machine; use --gpus 0")
        port = int(env.get("MASTER_PORT") or 29500)
        commands = tuple(
            tuple(torchrun_argv(cmd, Rendezvous("127.0.0.1", port, rank))) for rank in range(cmd.nodes)
        )
        return LaunchPlan("torchrun", commands, f"{cmd.nodes} simulated nodes on 127.0.0.1:{port}")

    why = "forced with --launcher"
    if launcher == "auto":
        launcher, why = choose_launcher(cmd, env)
    if launcher == "srun":
        return LaunchPlan("srun", (tuple(srun_in_allocation(cmd, env)),), why)
    if launcher == "torchrun":
        rdzv = Rendezvous.from_env(env, cmd.nodes)
        return LaunchPlan("torchrun", (tuple(torchrun_argv(cmd, rdzv)),), why)
    # direct: Lightning's own launcher. On several nodes (e.g. Lightning AI jobs) it reads the same
    # MASTER_ADDR / NODE_RANK variables, so require them just as torchrun does.
    if cmd.nodes > 1:
        Rendezvous.from_env(env, cmd.nodes)
    return LaunchPlan("direct", (tuple(cmd.argv()),), why)


def _run_all(commands: Sequence[Sequence[str]]) -> int:
    """Run simulated nodes side by side; if one fails, stop the others instead of letting them wait forever."""
    procs = [subprocess.Popen(list(c)) for c in commands]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c is not None for c in codes):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        failed = [130]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c != 0), 0) if not failed else failed[0]


def main(argv: Sequence[str] | None = None) -> int:
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m lightning_apps.launch", description=__doc__.split("\n")[0]
    )
    add_train_arguments(parser)
    parser.add_argument("--launcher", default="auto", choices=LAUNCHERS)
    parser.add_argument(
        "--simulate-nodes",
        action="store_true",
        help="run all NODES as torchrun agents on 127.0.0.1 (CPU rehearsal)",
    )
    ns = parser.parse_args(own)
    try:
        cmd = command_from_args(ns, extra)
        plan = plan_launch(cmd, os.environ, launcher=ns.launcher, simulate_nodes=ns.simulate_nodes)
        if not ns.dry_run:
            cmd.check_files_exist()
    except LaunchError as err:
        parser.exit(2, f"error: {err}\n")

    print(
        f"# launcher: {plan.launcher} ({plan.why}); world size {cmd.world_size} = "
        f"{cmd.nodes} node(s) x {cmd.devices} {cmd.accelerator} device(s)",
        file=sys.stderr,
    )
    for command in plan.commands:
        print(format_command(command), flush=True)
    if ns.dry_run:
        return 0
    if len(plan.commands) == 1:
        exe = plan.commands[0][0]
        # Replace this process so signals (Ctrl-C, SLURM's SIGTERM) reach the launcher directly.
        os.execvp(exe, list(plan.commands[0]))
    return _run_all(plan.commands)


if __name__ == "__main__":
    sys.exit(main())
