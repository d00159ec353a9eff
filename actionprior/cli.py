"""The ``actionprior`` command.

Training subcommands (``fit``, ``validate``, ``test``, ``predict``) go to the LightningCLI, so every
hyperparameter is a YAML key and a command-line override. Tool subcommands (``data``, ``eval``, ``serve``,
``demo``) are small programs of their own; each module is imported only when its subcommand runs, so that
``actionprior data check`` does not pay for importing transformers or the simulators.

A refusal (bad data, config, checkpoint, ...) ends in one line ``actionprior: <message>`` and exit status 2;
``actionprior --debug ...`` or ``ACTIONPRIOR_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
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
    ("data", "export"): (
        "actionprior.data.exporters",
        "cli_main",
        "write one embodiment of a dataset as a LeRobot v3.0 dataset (lerobot)",
    ),
    ("data", "convert"): (
        "actionprior.data.convert",
        "cli_main",
        "write a dataset again with its frames stored as video or PNGs (--frames video|png)",
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
    ("eval-libero",): (
        "actionprior.evaluation.libero.evaluate",
        "cli_main",
        "a served policy on a LIBERO suite (LIBERO runs in its own venv: make libero-env)",
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
        "usage: actionprior [--debug] <command> [args]",
        "",
        "training (LightningCLI; see `actionprior fit --help`):",
    ]
    lines += [f"  {name}" for name in LIGHTNING_SUBCOMMANDS]
    lines += ["", "tools:"]
    lines += [f"  {' '.join(path):<14} {help_}" for path, (_, _, help_) in TOOLS.items()]
    return "\n".join(lines)


# Error classes whose message is the whole story for a user. Looked up only in modules already imported
# (an error can only come from a module that is loaded), so the wrapper imports nothing itself. Most
# derive from ValueError, caught anyway; they are listed so that the contract is explicit.
_KNOWN_ERRORS: dict[str, tuple[str, ...]] = {
    "actionprior.data.schema": ("DataError",),
    "actionprior.embodiments": ("EmbodimentError",),
    "actionprior.checkpoint": ("CheckpointError",),
    "actionprior.training.strategies": ("StrategyError",),
    "actionprior.inference.policy": ("PolicyCheckpointError",),
    "actionprior.inference.client": ("PolicyServerError",),
    "actionprior.inference.execution": ("ExecutionError",),
    "actionprior.sim.base": ("SimError",),
    "actionprior.evaluation.rollout": ("RolloutError",),
    "actionprior.evaluation.libero.evaluate": ("LiberoEvalError",),
}
_BUILTIN_REFUSALS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _known_errors() -> tuple[type[BaseException], ...]:
    classes: list[type[BaseException]] = list(_BUILTIN_REFUSALS)
    for module, names in _KNOWN_ERRORS.items():
        loaded = sys.modules.get(module)
        classes += [getattr(loaded, n) for n in names if loaded is not None and hasattr(loaded, n)]
    return tuple(classes)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the last line is the error
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())[:2000]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ACTIONPRIOR_DEBUG", "") not in ("", "0")
    if argv and argv[0] == "--debug":
        argv, debug = argv[1:], True
    try:
        return _dispatch(argv)
    except Exception as exc:
        if debug or not isinstance(exc, _known_errors()):
            raise
        print(f"actionprior: {_one_line(exc)}", file=sys.stderr)  # --debug shows the traceback
        return 2


def _dispatch(argv: list[str]) -> int:
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

        run(expanded)
        return 0
    for path, (module, function, _) in TOOLS.items():
        if tuple(argv[: len(path)]) == path:
            entry = getattr(importlib.import_module(module), function)
            return int(entry(argv[len(path) :]) or 0)
    print(f"actionprior: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
