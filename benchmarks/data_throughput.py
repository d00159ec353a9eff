"""Throughput of the streaming DataModule, and what storing frames as PNG or as video costs and delivers.

Default: windows/s and transitions/s for both views and 0/1/2 workers. A transition is one (state, action)
step of a window's chunk, so transitions/s = windows/s x chunk_len. Each configuration runs one warm-up epoch
(worker start-up, pools, caches) and then times one epoch. The synthetic dataset is sized like the default
simulated one (a few hundred episodes of 80-200 steps, two 64x64 cameras) and is written once to
``--data-dir`` and reused.

    .venv/bin/python benchmarks/data_throughput.py [--batches 100] [--workers 0 1 2]

``--storage`` (issue 23): frames rendered by the Meta-World simulator (pick-place, two cameras) at 64x64,
224x224 and 480x640 (rendered at 640 and cut to 480 rows; fitted to 224 at load), written as observation
shards with PNG frames and with video members, and encoded the way LeRobot 0.4.4 stores them (AV1 mp4,
libsvtav1 CRF 30, GOP 2: the reference). Rates are per CPU-second of the one process doing the work
(``time.process_time``: this project's 2 shared cores run other jobs, whose time must not count; a loader
worker owns a core). Per size and storage:

* **bytes per stored frame**: the obs shards' bytes (PNG, video) or the mp4s' (LeRobot) over the frames held;
* **sampled frames/s per worker**: Stage 2's access pattern in one process: a random episode, 4 random steps
  (``windows_per_episode``), both cameras decoded and fitted to 224x224 -- for the LeRobot mp4 the same
  sampler with the same decoder;
* **stream frames/s per worker**: the real observation stream (``WindowStream``, 0 workers: reading the tars,
  decoding, fitting, collating batches of 32);
* **workers per H200**: the frames a Qwen3-VL-2B Stage 2 step consumes per second / the stream's rate per
  worker. No GPU has run ``make bench-gpu`` yet, so the step rate is the analytic FLOP count of
  ``benchmarks/flops.py`` (the VLA built on the meta device, 2 cameras at 224 px: 14x14 patches each, batch
  32, chunk 16, lambda = 1) at 40 % MFU of an H200's 989 bf16 TFLOP/s.

A GOP sweep at 224 px (``--gops``) shows the trade-off the default keyframe interval was chosen on: a sampled
frame costs ~GOP/2 decoded frames, a shorter GOP stores more key frames.

    nice -n 15 .venv/bin/python benchmarks/data_throughput.py --storage [--episodes 16] [--gops 2 4 8 16]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.data.writer import load_manifest


def ensure_dataset(directory: Path, episodes_per_embodiment: int, image_size: int) -> dict:
    if not (directory / "stats.json").exists():
        t0 = time.perf_counter()
        write_synthetic_dataset(
            directory,
            episodes_per_embodiment=episodes_per_embodiment,
            length_range=(80, 200),
            shard_sizes=(16, 9, 23, 12),
            image_size=image_size,
        )
        print(f"wrote {directory} in {time.perf_counter() - t0:.1f} s")
    return load_manifest(directory)


def time_loader(loader: Iterable[dict[str, Any]]) -> tuple[float, int, float]:
    """``(first batch s, samples in the timed epoch, timed epoch s)``: one warm-up epoch, then one timed epoch.

    The first batch pays worker start-up and pool fill; the warm-up epoch lets caches fill and every worker
    reach steady state; the stream persists across epochs, as in training. Shared with train_throughput.py.
    """
    t0 = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - t0
    for _ in iterator:
        pass
    t1 = time.perf_counter()
    samples = sum(int(batch["action"].shape[0]) for batch in loader)
    elapsed = time.perf_counter() - t1
    # StreamLoader stops its workers; a plain iterable has nothing to stop.
    with contextlib.suppress(AttributeError):
        loader.close()  # type: ignore[attr-defined]
    return first, samples, elapsed


def measure(directory: Path, view: str, workers: int, batches: int, args: argparse.Namespace) -> dict:
    dm = ActionPriorDataModule(
        datasets=[str(directory)],
        view=view,  # type: ignore[arg-type]
        chunk_len=args.chunk_len,
        history_len=args.history_len,
        batch_size=args.batch_size,
        num_workers=workers,
        batches_per_epoch=batches,
        val_fraction=0.0,
        windows_per_episode=args.windows_per_episode,
        shuffle_buffer=args.shuffle_buffer,
    )
    first, _, elapsed = time_loader(dm.train_dataloader())
    windows = batches * args.batch_size
    return {
        "first": first,
        "windows_s": windows / elapsed,
        "transitions_s": windows * args.chunk_len / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data_shards/bench-synthetic"))
    parser.add_argument("--episodes-per-embodiment", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--views", nargs="+", default=["trajectory", "observation"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=200, help="timed batches (trajectory view)")
    parser.add_argument("--obs-batches", type=int, default=30, help="timed batches (observation view)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-len", type=int, default=8)
    parser.add_argument("--history-len", type=int, default=8)
    parser.add_argument("--windows-per-episode", type=int, default=4)
    parser.add_argument("--shuffle-buffer", type=int, default=512)
    parser.add_argument("--storage", action="store_true", help="PNG vs video storage instead (module doc)")
    parser.add_argument("--frames-dir", type=Path, default=Path("data_shards/bench-frames"))
    parser.add_argument("--episodes", type=int, default=16, help="--storage: episodes per dataset")
    parser.add_argument("--gops", nargs="+", type=int, default=[2, 4, 8, 16], help="--storage: GOP sweep")
    parser.add_argument("--samples", type=int, default=60, help="--storage: episodes drawn by the sampler")
    parser.add_argument("--json", type=Path, default=None, help="--storage: also write the rows here")
    args = parser.parse_args()
    if args.storage:
        from benchmarks.frame_storage import storage_report

        storage_report(args)
        return

    manifest = ensure_dataset(args.data_dir, args.episodes_per_embodiment, args.image_size)
    console = Console()
    console.print(
        f"dataset {args.data_dir}: {manifest['num_episodes']} episodes, {manifest['num_transitions']} transitions, "
        f"{len(manifest['shards'])} shards; batch {args.batch_size}, H={args.chunk_len}, K={args.history_len}, "
        f"{args.windows_per_episode} windows/episode; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} (other processes share these cores)"
    )
    table = Table(title="DataModule throughput")
    for column in ("view", "workers", "first batch (s)", "windows/s", "transitions/s"):
        table.add_column(column, justify="right")
    for view in args.views:
        for workers in args.workers:
            batches = args.batches if view == "trajectory" else args.obs_batches
            r = measure(args.data_dir, view, workers, batches, args)
            table.add_row(
                view,
                str(workers),
                f"{r['first']:.2f}",
                f"{r['windows_s']:,.0f}",
                f"{r['transitions_s']:,.0f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
