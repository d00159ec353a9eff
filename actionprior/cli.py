"""The ``actionprior`` command.

Training subcommands (``fit``, ``validate``, ``test``, ``predict``) go to the LightningCLI, so every
hyperparameter is a YAML key and a command-line override. Tool subcommands (``data``, ``eval``, ``serve``,
``demo``) are small programs of their own; each module is imported only when its subcommand runs, so that
``actionprior data check`` does not pay for importing transformers or the simulators.
"""

from __future__ import annotations

import importlib
import sys

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# subcommand path -> (module, function, one-line help)
TOOLS: dict[tuple[str, ...], tuple[str, str, str]] = {
    ("data", "collect"): (
        "actionprior.sim.collect",
        "cli_main",
        "collect scripted-expert demonstrations into shards",
    ),
    ("data", "import"): (
        "actionprior.data.importers",
        "cli_main",
        "import a LeRobot dataset (lerobot) or a robomimic HDF5 file (hdf5)",
    ),
    ("data", "check"): (
        "actionprior.data.check",
        "cli_main",
        "validate a dataset; non-zero exit on problems",
    ),
    ("data", "stats"): ("actionprior.data.summary", "cli_main", "per-embodiment summary of a dataset"),
    ("eval",): (
        "actionprior.evaluation.evaluate",
        "cli_main",
        "closed-loop evaluation of a checkpoint in simulation",
    ),
    ("serve",): ("actionprior.inference.server", "cli_main", "serve a checkpoint over websockets"),
    ("export",): (
        "actionprior.inference.export",
        "cli_main",
        "write a Stage 2 checkpoint as a shareable folder (safetensors + JSON)",
    ),
    ("demo",): ("actionprior.demo", "cli_main", "the whole pipeline on the embedded CPU defaults"),
}


def _usage() -> str:
    lines = [
        "usage: actionprior <command> [args]",
        "",
        "training (LightningCLI; see `actionprior fit --help`):",
    ]
    lines += [f"  {name}" for name in LIGHTNING_SUBCOMMANDS]
    lines += ["", "tools:"]
    lines += [f"  {' '.join(path):<14} {help_}" for path, (_, _, help_) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in LIGHTNING_SUBCOMMANDS:
        from actionprior.resources import ResourceError, expand_config_args

        try:
            expanded = expand_config_args(argv)  # -c actionprior:stage1.yaml names a shipped config
        except ResourceError as exc:
            print(f"actionprior: {exc}", file=sys.stderr)
            return 2
        if argv == sys.argv[1:]:
            sys.argv[1:] = expanded  # LightningCLI (and a DDP relaunch) read the process's own argv
        from actionprior.training.lightning_cli import run
        from actionprior.training.strategies import StrategyError

        try:
            run(expanded)
        except StrategyError as exc:
            print(f"actionprior: {exc}", file=sys.stderr)
            return 2
        return 0
    for path, (module, function, _) in TOOLS.items():
        if tuple(argv[: len(path)]) == path:
            entry = getattr(importlib.import_module(module), function)
            return int(entry(argv[len(path) :]) or 0)
    print(f"actionprior: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
