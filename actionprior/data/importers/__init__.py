"""``actionprior data import lerobot|hdf5 SRC --out DIR``: other projects' datasets as actionprior shards.

Each importer plans the import from the source's metadata (checking it), then
:func:`~actionprior.data.importers.common.run_import` loads units of episodes in parallel and writes them
with the same :class:`~actionprior.data.writer.DatasetWriter` as ``data collect``. See docs/importing.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from actionprior.data.images import RESIZE_MODES
from actionprior.data.importers.common import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SHARD_EPISODES,
    SPEC_FILE,
    ImportFailure,
    remove_partial,
    run_import,
)
from actionprior.data.schema import DataError
from actionprior.data.video_frames import add_frame_arguments, video_settings_from_args
from actionprior.embodiments import EmbodimentError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actionprior data import",
        description="Import a LeRobot dataset or a robomimic HDF5 file into shards.",
    )
    sub = parser.add_subparsers(dest="format", required=True)
    from actionprior.data.importers import hdf5, lerobot

    for name, module, help_ in (
        ("lerobot", lerobot, "a local LeRobot dataset folder (v2.0, v2.1 or v3.0)"),
        ("hdf5", hdf5, "a robomimic-layout HDF5 file (robomimic, LIBERO, ...)"),
    ):
        p = sub.add_parser(name, help=help_, description=module.__doc__.splitlines()[0])
        module.add_arguments(p)
        p.add_argument(
            "--out", required=True, type=Path, help="dataset directory to create (re-running resumes)"
        )
        p.add_argument(
            "--embodiment", default=None, help="embodiment name (default: from the source metadata)"
        )
        p.add_argument("--spec", default=None, help="use this embodiment spec YAML instead of guessing one")
        p.add_argument("--control-mode", default=None, help="control_mode written into the guessed spec")
        p.add_argument("--gripper-state-dims", default=None, help="e.g. '7' or 'none' (default: from names)")
        p.add_argument("--gripper-action-dims", default=None, help="e.g. '6' or 'none' (default: from names)")
        p.add_argument(
            "--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="square frame size in pixels"
        )
        p.add_argument(
            "--resize",
            choices=RESIZE_MODES,
            default="pad",
            help="non-square cameras: pad (letterbox, keeps the whole view; default) or crop (centre)",
        )
        p.add_argument("--episodes", default=None, help="subset, e.g. 0:100,150 (end-exclusive ranges)")
        p.add_argument("--workers", type=int, default=2, help="parallel decoding processes (<=1: in-process)")
        p.add_argument(
            "--threads", type=int, default=None, help="decoder threads per worker (default: 1, or auto)"
        )
        p.add_argument(
            "--shard-episodes", type=int, default=DEFAULT_SHARD_EPISODES, help="episodes per shard"
        )
        p.add_argument(
            "--restart", action="store_true", help="discard an interrupted import instead of resuming"
        )
        add_frame_arguments(p)
    return parser


def cli_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    console = Console() if sys.stdout.isatty() else Console(width=120)
    from actionprior.data.importers import hdf5, lerobot

    module = lerobot if args.format == "lerobot" else hdf5
    if args.control_mode is None and args.format == "lerobot":
        args.control_mode = "unspecified"
    try:
        if args.restart:
            remove_partial(args.out)
        video = video_settings_from_args(args)
        source, units, spec, record = module.run_from_args(args)
        report = run_import(
            source, units, args.out, spec, record, workers=args.workers, console=console, video=video
        )
    except (ImportFailure, EmbodimentError, DataError) as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        return 2
    if report.already_complete:
        console.print(f"{args.out}: already imported ({report.episodes} episodes); nothing to do")
        return 0
    rate = report.frames / report.seconds if report.seconds else float("nan")
    console.print(
        f"[green]imported[/green] {report.episodes} episodes, {report.frames} steps of embodiment '{spec.name}' "
        f"into {args.out} ({report.units_run} shards written, {report.units_skipped} resumed; "
        f"{report.seconds:.1f} s, {rate:.0f} steps/s); spec: {args.out / SPEC_FILE}",
        soft_wrap=True,
        highlight=False,
    )
    return 0


__all__ = ["build_parser", "cli_main"]
