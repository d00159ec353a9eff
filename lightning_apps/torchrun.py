"""Multi-node training without a scheduler: one ``torchrun`` per machine, static rendezvous.

Run the same command on every machine, changing only ``NODE_RANK``::

    MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NODE_RANK=0 python -m lightning_apps.torchrun --stage 1 --nodes 2 --gpus 8
    MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NODE_RANK=1 python -m lightning_apps.torchrun --stage 1 --nodes 2 --gpus 8

torchrun starts ``--nproc-per-node`` workers and sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; Lightning detects
that (TorchElasticEnvironment), does not spawn processes itself, and checks that ``num_nodes * devices`` equals
``WORLD_SIZE`` -- which holds because both come from the same :class:`TrainCommand`.
"""

from __future__ import annotations

import argparse
import os
import sys
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

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Rendezvous:
    """Where the workers of all machines meet: rank 0's address and port, and this machine's rank."""

    master_addr: str
    master_port: int = DEFAULT_MASTER_PORT
    node_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str], nodes: int) -> Rendezvous:
        """Read MASTER_ADDR / MASTER_PORT / NODE_RANK; multi-node runs must name the first two explicitly."""
        if nodes > 1:
            missing = [k for k in ("MASTER_ADDR", "NODE_RANK") if not env.get(k)]
            if missing:
                raise LaunchError(
                    f"a {nodes}-node launch outside SLURM needs {' and '.join(missing)} in the environment "
                    "of every machine: MASTER_ADDR = address of the rank-0 machine reachable from all others, "
                    "NODE_RANK = 0..NODES-1 (different on each machine), MASTER_PORT = a free port "
                    f"(default {DEFAULT_MASTER_PORT})"
                )
        try:
            port = int(env.get("MASTER_PORT") or DEFAULT_MASTER_PORT)
            node_rank = int(env.get("NODE_RANK") or 0)
        except ValueError as err:
            raise LaunchError(f"MASTER_PORT and NODE_RANK must be integers ({err})") from err
        rdzv = cls(master_addr=env.get("MASTER_ADDR") or "127.0.0.1", master_port=port, node_rank=node_rank)
        rdzv.validate(nodes)
        return rdzv

    def validate(self, nodes: int) -> None:
        if not 0 <= self.node_rank < nodes:
            raise LaunchError(f"NODE_RANK={self.node_rank} is outside 0..{nodes - 1} for NODES={nodes}")
        if not 0 < self.master_port < 65536:
            raise LaunchError(f"MASTER_PORT={self.master_port} is not a valid port")


def torchrun_argv(cmd: TrainCommand, rdzv: Rendezvous) -> list[str]:
    """``python -m torch.distributed.run`` (= torchrun, from the same interpreter) for this machine."""
    return [
        cmd.python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={cmd.nodes}",
        f"--nproc-per-node={cmd.devices}",
        f"--node-rank={rdzv.node_rank}",
        f"--master-addr={rdzv.master_addr}",
        f"--master-port={rdzv.master_port}",
        "-m",
        "actionprior.cli",
        *cmd.cli_args(),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m lightning_apps.torchrun", description=__doc__.split("\n")[0]
    )
    add_train_arguments(parser)
    parser.add_argument("--master-addr", default=None, help="overrides MASTER_ADDR")
    parser.add_argument("--master-port", type=int, default=None, help="overrides MASTER_PORT")
    parser.add_argument("--node-rank", type=int, default=None, help="overrides NODE_RANK")
    ns = parser.parse_args(own)
    env = dict(os.environ)
    for key, value in (
        ("MASTER_ADDR", ns.master_addr),
        ("MASTER_PORT", ns.master_port),
        ("NODE_RANK", ns.node_rank),
    ):
        if value is not None:
            env[key] = str(value)
    try:
        cmd = command_from_args(ns, extra)
        rdzv = Rendezvous.from_env(env, cmd.nodes)
        if not ns.dry_run:
            cmd.check_files_exist()
    except LaunchError as err:
        parser.exit(2, f"error: {err}\n")
    line = torchrun_argv(cmd, rdzv)
    print(format_command(line), flush=True)
    if ns.dry_run:
        return 0
    os.execv(line[0], line)  # replace this process so signals reach torchrun directly
    return 0  # unreachable


if __name__ == "__main__":
    sys.exit(main())
