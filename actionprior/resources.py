"""Where the shipped configuration files are, in a checkout and in an installed wheel.

The repository's top-level ``configs/`` holds the files users edit (stage configs, embodiment specs, suites,
cluster and ablation layers). A wheel ships the same folder as ``actionprior/configs`` (pyproject.toml maps
the ``actionprior.configs`` package onto it), so a non-editable install needs no checkout. A checkout, used
through an editable install or PYTHONPATH, has no ``actionprior/configs``: its own ``configs/`` is read, so
an edit there takes effect without reinstalling.

On a command line a path stays a path (relative to the working directory); a shipped config is named with
the ``actionprior:`` prefix, e.g. ``actionprior fit -c actionprior:stage1.yaml``, which the ``actionprior``
command resolves to the file before LightningCLI reads it.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

PACKAGE_PREFIX = "actionprior:"
_CONFIG_FLAGS = ("-c", "--config")


class ResourceError(ValueError):
    """A shipped config that does not exist, or an installation without its configs."""


def configs_dir() -> Path:
    """The folder of shipped configs: the wheel's ``actionprior/configs``, else the checkout's ``configs/``."""
    packaged = importlib.resources.files("actionprior") / "configs"
    # A wheel is installed unpacked, so the package is a real folder; a zipped install is not supported.
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if checkout.is_dir():
        return checkout
    raise ResourceError(
        f"actionprior's configs are missing: neither {packaged} (an installed wheel) nor {checkout} "
        "(a checkout) exists; reinstall actionprior"
    )


def embodiment_dir() -> Path:
    """The embodiment specs (``configs/embodiments/``)."""
    return configs_dir() / "embodiments"


def suite_dir() -> Path:
    """The demonstration suites (``configs/suites/``)."""
    return configs_dir() / "suites"


def config_path(name: str) -> Path:
    """A shipped config by its path under ``configs/``, e.g. ``stage1.yaml`` or ``cluster/ddp.yaml``."""
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise ResourceError(
            f"{name!r} is not a config name: expected a path under configs/, e.g. stage1.yaml"
        )
    root = configs_dir()
    path = root.joinpath(*rel.parts)
    if not path.is_file():
        folder = path.parent if path.parent.is_dir() else root
        available = sorted(p.relative_to(root).as_posix() for p in folder.glob("*.yaml"))
        raise ResourceError(f"no shipped config {name!r} in {root}; available there: {available}")
    return path


def resolve_config_arg(value: str) -> str:
    """``actionprior:<name>`` -> the shipped file's path; any other value (a user's path) unchanged."""
    if value.startswith(PACKAGE_PREFIX):
        return str(config_path(value[len(PACKAGE_PREFIX) :]))
    return value


def expand_config_args(argv: Sequence[str]) -> list[str]:
    """Resolve the ``actionprior:`` values of ``-c``/``--config`` in a LightningCLI command line.

    jsonargparse would otherwise read ``actionprior:stage1.yaml`` as an inline YAML mapping.
    """
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in _CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = resolve_config_arg(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_arg(arg.split("=", 1)[1])
    return out


def default_config_arg(name: str, cwd: Path | None = None) -> str:
    """The ``-c`` value for a default config: ``configs/<name>`` when the working directory has that file
    (a checkout, or the user's own copy of configs/), else ``actionprior:<name>``.

    A reference rather than an absolute path, so a command written here (an sbatch script, a Lightning AI
    job) is resolved by the ``actionprior`` that runs it, wherever it is installed.
    """
    local = PurePosixPath("configs", name)
    if ((cwd or Path.cwd()) / local).is_file():
        return local.as_posix()
    config_path(name)  # fail here, naming what exists, rather than in the launched job
    return PACKAGE_PREFIX + name


def local_config_file(value: str) -> Path:
    """The file a ``-c`` value denotes on this machine (for reading it before launching)."""
    return Path(resolve_config_arg(value))
