"""Submit a training stage as a Lightning AI job (multi-machine when --nodes > 1), built on lightning-sdk.

    python -m lightning_apps.lightning_ai --stage 1 --nodes 4 --gpus 8 --machine H100_X_8 \\
        --studio my-studio --teamspace owner/teamspace [--dry-run] -- --trainer.max_steps 5000

``--dry-run`` prints the job specification as JSON and needs neither lightning-sdk nor credentials.
Submitting needs ``pip install '.[cloud]'`` and ``lightning login`` (or LIGHTNING_USER_ID / LIGHTNING_API_KEY).

The JSON's ``lightning_cli`` entry is the same job as a ``lightning job run ... --num-machines N`` line for
lightning-sdk's own CLI (checked against the SDK's command parser in tests/test_cluster_launchers.py), for
those who submit from a shell or a Studio terminal.

On a multi-machine job the platform starts the command once per machine and sets MASTER_ADDR / MASTER_PORT /
NODE_RANK; Lightning's default environment reads them and starts one process per GPU, so the command is the
plain ``actionprior fit`` with ``--trainer.num_nodes`` = number of machines and ``--trainer.devices`` = GPUs each.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_apps.command import (
    LaunchError,
    TrainCommand,
    add_train_arguments,
    command_from_args,
    format_command,
    split_passthrough,
)


@dataclass(frozen=True)
class LightningJobSpec:
    """Everything ``lightning_sdk.Job.run`` receives; printable without the SDK."""

    name: str
    command: str
    machine: str
    num_machines: int
    studio: str | None = None
    image: str | None = None
    teamspace: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    interruptible: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gpus_of_machine(machine: str) -> int:
    """GPUs per machine implied by a Lightning machine name: CPU* -> 0, *_X_<n> -> n, other GPU names -> 1."""
    name = machine.upper()
    if name.startswith("CPU"):
        return 0
    match = re.search(r"_X_(\d+)$", name)
    return int(match.group(1)) if match else 1


def build_spec(
    cmd: TrainCommand,
    name: str,
    machine: str,
    studio: str | None = None,
    image: str | None = None,
    teamspace: str | None = None,
    env: dict[str, str] | None = None,
    interruptible: bool = False,
    workdir: str | None = None,
) -> LightningJobSpec:
    if studio and image:
        raise LaunchError(
            "pass either --studio (reuse a Studio's environment) or --image (a container), not both"
        )
    implied = gpus_of_machine(machine)
    if implied != cmd.gpus:
        raise LaunchError(
            f"--machine {machine} has {implied} GPU(s) per machine but --gpus {cmd.gpus} was requested; "
            "make them match so trainer.devices equals the GPUs each machine really has"
        )
    line = format_command(cmd.argv())
    if workdir:
        line = f"cd {shlex.quote(workdir)} && {line}"
    return LightningJobSpec(
        name=name,
        command=line,
        machine=machine,
        num_machines=cmd.nodes,
        studio=studio,
        image=image,
        teamspace=teamspace,
        env=dict(env or {}),
        interruptible=interruptible,
    )


def cli_argv(spec: LightningJobSpec) -> list[str]:
    """The same job as lightning-sdk's CLI command: ``lightning job run --name ... --num-machines N ...``.

    Option names are those of ``lightning_sdk.cli.job.run.run_job`` (lightning-sdk 2026.10); submitting
    this line gives ``Job.run`` the same name, machine, command, environment, studio/image, teamspace,
    machine count and interruptible flag as :func:`submit` does.
    """
    argv = ["lightning", "job", "run", "--name", spec.name, "--machine", spec.machine]
    argv += ["--num-machines", str(spec.num_machines), "--command", spec.command]
    for option, value in (
        ("--studio", spec.studio),
        ("--image", spec.image),
        ("--teamspace", spec.teamspace),
    ):
        if value:
            argv += [option, value]
    for key, value in spec.env.items():
        argv += ["--env", f"{key}={value}"]
    if spec.interruptible:
        argv.append("--interruptible")
    return argv


def submit(spec: LightningJobSpec) -> Any:
    """Submit with lightning-sdk (imported only here). Returns the SDK's job object."""
    try:
        from lightning_sdk import Job, Machine
    except ImportError as err:
        raise LaunchError(
            "submitting a Lightning AI job needs lightning-sdk: pip install '.[cloud]' (or use --dry-run)"
        ) from err
    machine = (
        Machine.from_str(spec.machine) if hasattr(Machine, "from_str") else getattr(Machine, spec.machine)
    )
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "command": spec.command,
        "machine": machine,
        "interruptible": spec.interruptible,
    }
    for key in ("studio", "image", "teamspace"):
        if getattr(spec, key):
            kwargs[key] = getattr(spec, key)
    if spec.env:
        kwargs["env"] = spec.env
    if spec.num_machines == 1:
        return Job.run(**kwargs)
    # Newer SDKs run multi-machine jobs through Job.run(num_machines=...); older ones only through MMT.run.
    if "num_machines" in inspect.signature(Job.run).parameters:
        return Job.run(num_machines=spec.num_machines, **kwargs)
    from lightning_sdk import MMT

    return MMT.run(num_machines=spec.num_machines, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m lightning_apps.lightning_ai", description=__doc__.split("\n")[0]
    )
    add_train_arguments(parser)
    parser.add_argument(
        "--machine", required=True, help="Lightning machine type, e.g. H100_X_8, A100_X_8, L4, CPU"
    )
    parser.add_argument("--name", default=None, help="job name (default: actionprior-stage<N>)")
    parser.add_argument("--studio", default=None, help="Studio whose environment the job reuses")
    parser.add_argument("--image", default=None, help="container image instead of a Studio")
    parser.add_argument("--teamspace", default=None, help="owner/teamspace")
    parser.add_argument(
        "--workdir", default=None, help="repository root inside the job, if not the start dir"
    )
    parser.add_argument("--python", default="python", help="interpreter inside the job")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--interruptible", action="store_true", help="cheaper spot machines (may be pre-empted)"
    )
    ns = parser.parse_args(own)
    try:
        env = {}
        for item in ns.env:
            key, sep, value = item.partition("=")
            if not sep or not key.isidentifier():
                raise LaunchError(f"--env expects KEY=VALUE, got {item!r}")
            env[key] = value
        cmd = command_from_args(ns, extra, python=ns.python)
        spec = build_spec(
            cmd,
            name=ns.name or f"actionprior-stage{ns.stage}",
            machine=ns.machine,
            studio=ns.studio,
            image=ns.image,
            teamspace=ns.teamspace,
            env=env,
            interruptible=ns.interruptible,
            workdir=ns.workdir,
        )
        shown = {**spec.to_dict(), "lightning_cli": shlex.join(cli_argv(spec))}
        print(json.dumps(shown, indent=2), flush=True)
        if ns.dry_run:
            return 0
        job = submit(spec)
    except LaunchError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"submitted: {getattr(job, 'link', None) or getattr(job, 'name', job)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
