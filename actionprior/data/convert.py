"""``actionprior data convert DATASET --frames video|png --out DIR``: the same dataset with its frames stored
another way (one video member per camera and episode, or one PNG per frame).

Episodes are read as training reads them (checksums and the checks of ``data check``), shard by shard, and
written with the same shard names, episode order, collection records and import record (plus a
``converted_from`` entry) into ``DIR.partial``, renamed to ``DIR`` once the statistics are written: an
interrupted conversion leaves nothing that looks like a dataset, and re-running it resumes after the shards
already written. Trajectories are copied unchanged, so Stage 1 sees the same data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from actionprior.data.importers.common import PARTIAL_SUFFIX, SPEC_FILE
from actionprior.data.reader import dataset_views, load_manifest
from actionprior.data.schema import DataError
from actionprior.data.shards import iter_episodes
from actionprior.data.video_frames import VideoSettings, add_frame_arguments, video_settings_from_args
from actionprior.data.writer import DatasetWriter
from actionprior.embodiments import EmbodimentRegistry
from actionprior.progress import progress_bar


def convert(
    source: str | Path, out: str | Path, video: VideoSettings | None, console: Console | None = None
) -> tuple[int, float]:
    """Write the dataset at ``source`` to ``out`` with frames as ``video`` (None: PNG); ``(episodes, seconds)``."""
    start = time.perf_counter()
    console = console or Console()
    source, out = Path(source), Path(out)
    manifest = load_manifest(source)
    if "observation" not in dataset_views(manifest):
        raise DataError(
            f"{source}: a trajectory-only dataset (collected with --no-images) has no frames to convert"
        )
    if source.resolve() == out.resolve():
        raise DataError(f"--out {out} is the dataset itself; write the converted dataset elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not empty; choose another --out or delete it")
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    registry = EmbodimentRegistry.from_dicts(manifest["embodiments"].values())
    writer = DatasetWriter(partial, registry, name=manifest.get("name"), video=video)
    origin = {"source": str(source.resolve()), "frames": manifest.get("frames") or {"storage": "png"}}
    if writer.manifest.get("converted_from", origin) != origin:
        raise DataError(
            f"{partial} is an interrupted conversion of another dataset; delete it or use another --out"
        )
    writer.manifest["converted_from"] = origin
    if "import" in manifest:
        writer.manifest["import"] = manifest["import"]
    todo = [s for s in manifest["shards"] if not writer.has_shard(s["name"])]
    collection = manifest.get("collection") or {}
    episodes_written = 0
    with progress_bar(console, "episodes") as progress:
        bar = progress.add_task(f"convert {source.name}", total=sum(s["num_episodes"] for s in todo))
        for shard in todo:
            episodes = list(iter_episodes(source, registry, with_frames=True, shards=[shard["name"]]))
            writer.add_shard(shard["name"], episodes, collection=collection.get(shard["name"]))
            episodes_written += len(episodes)
            progress.update(bar, advance=len(episodes))
    writer.finalize()
    if (source / SPEC_FILE).is_file():
        shutil.copyfile(source / SPEC_FILE, partial / SPEC_FILE)
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(partial, out)
    return episodes_written, time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="actionprior data convert",
        description="Write a dataset again with its camera frames stored as video or as PNGs.",
    )
    p.add_argument("dataset", type=Path, help="dataset directory (holds manifest.json)")
    p.add_argument("--out", required=True, type=Path, help="directory to create (re-running resumes)")
    add_frame_arguments(p)
    return p


def cli_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    console = Console() if sys.stdout.isatty() else Console(width=120)
    try:
        video = video_settings_from_args(args)
        count, seconds = convert(args.dataset, args.out, video, console)
    except DataError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        return 2
    before = sum(p.stat().st_size for p in args.dataset.glob("obs-*.tar"))
    after = sum(p.stat().st_size for p in args.out.glob("obs-*.tar"))
    console.print(
        f"[green]converted[/green] {count} episodes into {args.out} ({seconds:.1f} s); observation shards "
        f"{before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB",
        soft_wrap=True,
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
