"""``actionprior data export lerobot DATASET --out DIR``: a dataset of ours in another project's format.

The counterpart of :mod:`actionprior.data.importers`: ``data import lerobot`` of an export gives back the
same states and actions (bit-exact) and, with ``--frames images``, the same frames. Used to train LeRobot's
policies on exactly the data ours train on (benchmarks/peers/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Nothing heavy at import: the video encoder's worker process imports this package (see video.py), and the
# exporter itself pulls in the shard readers (webdataset, torch); it is imported when a command runs.
from actionprior.data.exporters.video import FRAME_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actionprior data export", description="Write a dataset in another project's format."
    )
    sub = parser.add_subparsers(dest="format", required=True)
    p = sub.add_parser(
        "lerobot",
        help="a LeRobot v3.0 dataset (one embodiment per dataset)",
        description="Write one embodiment of DATASET as a LeRobot v3.0 dataset (LeRobot 0.4.4's layout).",
    )
    p.add_argument("dataset", type=Path, help="dataset folder (manifest.json, traj-*.tar, obs-*.tar)")
    p.add_argument("--out", required=True, type=Path, help="LeRobot dataset folder to create (new or empty)")
    p.add_argument(
        "--embodiment",
        default=None,
        help="the embodiment to export (required when the dataset holds several)",
    )
    p.add_argument(
        "--split-by-embodiment",
        action="store_true",
        help="write every embodiment, each to OUT/<embodiment>/",
    )
    p.add_argument(
        "--frames",
        choices=FRAME_MODES,
        default="video",
        help="cameras as AV1 mp4 like LeRobot records them (video, lossy) or PNG bytes in the parquet "
        "(images, lossless); default: %(default)s",
    )
    p.add_argument(
        "--split",
        choices=("all", "train", "val"),
        default="all",
        help="episodes of this split only (ours train on 'train' with --val-fraction 0.1); default: all",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.0, help="held-out fraction defining the split (e.g. 0.1)"
    )
    return parser


def cli_main(argv: Sequence[str]) -> int:
    from rich.console import Console

    from actionprior.data.exporters.lerobot import export

    args = build_parser().parse_args(list(argv))
    console = Console() if sys.stdout.isatty() else Console(width=120)
    start = time.perf_counter()
    # An ExportError (or DataError) goes up to the `actionprior` wrapper: one line on stderr, exit status 2.
    reports = export(
        args.dataset,
        args.out,
        embodiment=args.embodiment,
        split_by_embodiment=args.split_by_embodiment,
        frames=args.frames,
        split=args.split,
        val_fraction=args.val_fraction,
    )
    for r in reports:
        console.print(
            f"[green]exported[/green] {r.episodes} episodes, {r.frames} steps of '{r.embodiment}' "
            f"({len(r.cameras)} cameras as {r.frame_mode}, {r.tasks} tasks) to {r.out_dir}"
            + (f"; {r.encoder_restarts} hung video encodes were run again" if r.encoder_restarts else ""),
            soft_wrap=True,
            highlight=False,
        )
    console.print(f"{time.perf_counter() - start:.1f} s", highlight=False)
    return 0


__all__ = ["build_parser", "cli_main"]
