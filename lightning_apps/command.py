"""The training command every launcher runs, built in one place.

SLURM, torchrun, Lightning AI jobs and the plain single-node path all end in the same
``python -m actionprior.cli fit -c configs/stageN.yaml ... --trainer.num_nodes N --trainer.devices D`` call.
Building it here, from the same numbers the launcher uses for its own process layout, is what keeps
``trainer.num_nodes`` / ``trainer.devices`` from ever disagreeing with the launcher.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from actionprior.resources import ResourceError, default_config_arg, local_config_file

# Names under configs/. A command uses ./configs/<name> when the working directory has it (a checkout),
# else actionprior:<name>, the copy shipped in the package, which `actionprior fit` resolves where it runs.
STAGE_CONFIGS = {1: "stage1.yaml", 2: "stage2.yaml"}
CLUSTER_CONFIG_DIR = "cluster"
TRAINER_SUBCOMMANDS = ("fit", "validate", "test")

# Keys the launcher owns: a user override would make Lightning disagree with the process layout.
_LAUNCHER_OWNED = {
    "--trainer.num_nodes": "--nodes (NODES=)",
    "--trainer.devices": "--gpus (GPUS=) or --cpu-processes",
    "--trainer.accelerator": "--gpus (GPUS=0 means CPU)",
}

# Strategy names / class paths that only run on CUDA GPUs.
_CUDA_ONLY_STRATEGY_MARKERS = ("fsdp", "deepspeed")


class LaunchError(ValueError):
    """A launch request that cannot work; the message says what to change."""


@dataclass(frozen=True)
class TrainCommand:
    """One training run: which stage, how many nodes and devices per node, and the extra CLI arguments."""

    stage: int
    nodes: int = 1
    gpus: int = 0  # per node; 0 means CPU
    cpu_processes: int = 1  # processes per node when gpus == 0 (a CPU DDP rehearsal uses 2)
    strategy: str | None = None  # a file stem under configs/cluster/, e.g. "fsdp"
    extra_args: tuple[str, ...] = ()
    subcommand: str = "fit"
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        if self.stage not in STAGE_CONFIGS:
            raise LaunchError(f"--stage must be one of {sorted(STAGE_CONFIGS)}, got {self.stage}")
        if self.nodes < 1:
            raise LaunchError(f"--nodes (NODES=) must be >= 1, got {self.nodes}")
        if self.gpus < 0:
            raise LaunchError(f"--gpus (GPUS=) must be >= 0 (0 = CPU), got {self.gpus}")
        if self.cpu_processes < 1:
            raise LaunchError(f"--cpu-processes must be >= 1, got {self.cpu_processes}")
        if self.subcommand not in TRAINER_SUBCOMMANDS:
            raise LaunchError(f"subcommand must be one of {TRAINER_SUBCOMMANDS}, got {self.subcommand!r}")
        for arg in self.extra_args:
            key = arg.split("=", 1)[0]
            if key in _LAUNCHER_OWNED:
                raise LaunchError(
                    f"{key} is set by the launcher so that it always matches the process layout; "
                    f"remove it from ARGS and use {_LAUNCHER_OWNED[key]} instead"
                )
        if self.gpus == 0:
            cuda_only = self.cuda_only_strategy()
            if cuda_only is not None:
                raise LaunchError(
                    f"strategy {cuda_only!r} needs CUDA GPUs but GPUS=0 (CPU) was requested; "
                    "use GPUS=<n> on a GPU machine, or configs/cluster/ddp.yaml on CPU"
                )

    @property
    def devices(self) -> int:
        return self.gpus if self.gpus > 0 else self.cpu_processes

    @property
    def accelerator(self) -> str:
        return "gpu" if self.gpus > 0 else "cpu"

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices

    @property
    def stage_config(self) -> str:
        return _default_config(STAGE_CONFIGS[self.stage])

    @property
    def cluster_config(self) -> str | None:
        strategy = self.strategy
        # Stage 2 skips the auxiliary branch (and the encoder) once lambda reaches 0, which Lightning's
        # default DDP (find_unused_parameters=False) rejects mid-run; ddp.yaml allows it.
        multi_gpu_stage2 = self.stage == 2 and self.gpus > 0 and self.world_size > 1
        if strategy is None and multi_gpu_stage2 and not self._strategy_chosen_in_args():
            strategy = "ddp"
        return None if strategy is None else _default_config(f"{CLUSTER_CONFIG_DIR}/{strategy}.yaml")

    def _strategy_chosen_in_args(self) -> bool:
        args = list(self.extra_args)
        if any(a == "--trainer.strategy" or a.startswith("--trainer.strategy=") for a in args):
            return True
        configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-c", "--config")]
        configs += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
        return any(_strategy_in_config(c) for c in configs)

    def config_files(self) -> list[str]:
        """Every ``-c`` file of the run, in order: stage config, cluster config, then those in ARGS."""
        files = [self.stage_config]
        if self.cluster_config:
            files.append(self.cluster_config)
        args = list(self.extra_args)
        for i, arg in enumerate(args):
            if arg in ("-c", "--config") and i + 1 < len(args):
                files.append(args[i + 1])
            elif arg.startswith("--config="):
                files.append(arg.split("=", 1)[1])
        return files

    def cuda_only_strategy(self) -> str | None:
        """The CUDA-only strategy this run selects (from a ``-c`` file or ``--trainer.strategy``), if any."""
        specs: list[str] = []
        for path in self.config_files():
            strategy = _strategy_in_config(path)
            if strategy:
                specs.append(strategy)
            elif path == self.cluster_config:
                specs.append(str(self.strategy))  # the name says it even before the file is read
        args = list(self.extra_args)
        for i, arg in enumerate(args):
            if arg == "--trainer.strategy" and i + 1 < len(args):
                specs.append(args[i + 1])
            elif arg.startswith("--trainer.strategy="):
                specs.append(arg.split("=", 1)[1])
        # The last one wins, as in jsonargparse.
        if specs and any(marker in specs[-1].lower() for marker in _CUDA_ONLY_STRATEGY_MARKERS):
            return specs[-1]
        return None

    def cli_args(self) -> list[str]:
        """Arguments after ``actionprior``; the launcher-owned keys come last so no config file overrides them."""
        args = [self.subcommand, "-c", self.stage_config]
        if self.cluster_config:
            args += ["-c", self.cluster_config]
        args += list(self.extra_args)
        args += [
            "--trainer.accelerator",
            self.accelerator,
            "--trainer.num_nodes",
            str(self.nodes),
            "--trainer.devices",
            str(self.devices),
        ]
        return args

    def argv(self) -> list[str]:
        """The whole command for one process (or for one Lightning-managed node)."""
        return [self.python, "-m", "actionprior.cli", *self.cli_args()]

    def check_files_exist(self, root: Path = Path(".")) -> None:
        missing = [p for p in self.config_files() if not (root / _local_file(p)).is_file()]
        if missing:
            raise LaunchError(
                f"config file(s) not found: {', '.join(missing)} (relative to {root.resolve()}); "
                "a path is relative to the working directory, actionprior:<name> names a shipped config"
            )


def _default_config(name: str) -> str:
    try:
        return default_config_arg(name)
    except ResourceError as err:
        raise LaunchError(str(err)) from err


def _local_file(value: str) -> Path:
    """The file a -c value denotes here (actionprior:<name> is resolved through the package)."""
    try:
        return local_config_file(value)
    except ResourceError as err:
        raise LaunchError(str(err)) from err


def _strategy_in_config(value: str) -> str | None:
    """``trainer.strategy`` of a YAML config as a string (a name or a class_path); None if unset/unreadable."""
    path = _local_file(value)
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LaunchError(f"{path}: not valid YAML ({err})") from err
    strategy = (data.get("trainer") or {}).get("strategy") if isinstance(data, dict) else None
    if isinstance(strategy, dict):
        return str(strategy.get("class_path", ""))
    return None if strategy is None else str(strategy)


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``[launcher options] -- [training ARGS]``; ARGS go to ``actionprior fit`` untouched."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def format_command(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """A copy-pasteable shell line, with the environment assignments it needs in front."""
    prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return " ".join(prefix + [shlex.quote(a) for a in argv])


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every launcher shares (the Makefile passes --stage/--nodes/--gpus)."""
    parser.add_argument("--stage", type=int, required=True, choices=sorted(STAGE_CONFIGS))
    parser.add_argument("--nodes", type=int, default=1, help="number of machines (NODES=)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per machine; 0 = CPU (GPUS=)")
    parser.add_argument(
        "--cpu-processes", type=int, default=1, help="processes per machine when --gpus 0 (CPU rehearsals)"
    )
    parser.add_argument(
        "--strategy",
        default=None,
        help=f"a config under configs/{CLUSTER_CONFIG_DIR}/ (ddp, fsdp, deepspeed_zero2, deepspeed_zero3), layered on the stage config",
    )
    parser.add_argument("--subcommand", default="fit", choices=TRAINER_SUBCOMMANDS)
    parser.add_argument("--dry-run", action="store_true", help="print the exact commands and exit")


def command_from_args(
    ns: argparse.Namespace, extra: Sequence[str], python: str | None = None
) -> TrainCommand:
    return TrainCommand(
        stage=ns.stage,
        nodes=ns.nodes,
        gpus=ns.gpus,
        cpu_processes=ns.cpu_processes,
        strategy=ns.strategy,
        extra_args=tuple(extra),
        subcommand=ns.subcommand,
        python=python or sys.executable,
    )
