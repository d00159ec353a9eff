"""Throughput of ``actionprior data import lerobot`` against decoding the videos alone.

Builds a larger LeRobot v3.0 dataset from the lerobot-written fixture (tests/fixtures/lerobot/
v3_single_arm_video): its episodes repeated ``--repeat`` times, both cameras re-encoded with PyAV as one
long AV1 file each (LeRobot's codec and defaults: libsvtav1, yuv420p, crf 30, g 2), optionally upscaled to
``--source-size`` pixels so that decoding costs something. Then it times, on the same machine:

* **decode**: PyAV decoding every frame of both videos to RGB arrays, one process per video file (2 cores);
* **import**: ``data import lerobot`` end to end with ``--workers 1`` and ``--workers 2`` (parquet reading,
  seek + decode, resize to 64x64, PNG encoding, shard writing, statistics).

Frames are camera frames (rows x cameras). The target is import time <= 2x the 2-process decode time.

    .venv/bin/python benchmarks/import_throughput.py [--repeat 20] [--source-size 64 256 480x640] [--frames video]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from actionprior.data.importers import lerobot
from actionprior.data.importers.common import run_import
from actionprior.data.video_frames import VideoSettings

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lerobot" / "v3_single_arm_video"
CAMERAS = ("observation.images.front", "observation.images.wrist")


def decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def build(out: Path, repeat: int, size: str) -> int:
    """The fixture's 3 episodes repeated ``repeat`` times as one v3.0 dataset; returns the number of rows."""
    info = json.loads((FIXTURE / "meta" / "info.json").read_text())
    data = pq.read_table(FIXTURE / "data/chunk-000/file-000.parquet")
    meta = pq.read_table(FIXTURE / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    fps = info["fps"]
    source = {key: decode_all(FIXTURE / f"videos/{key}/chunk-000/file-000.mp4") for key in CAMERAS}
    h, w = (int(x) for x in size.split("x")) if "x" in size else (int(size), int(size))
    if (h, w) != (64, 64):
        from PIL import Image

        source = {
            k: np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in v])
            for k, v in source.items()
        }
    ep_col = data["episode_index"].to_numpy()
    tables, rows, frames = [], [], {k: [] for k in CAMERAS}
    start = 0
    for n in range(3 * repeat):
        old = meta[n % 3]
        part = data.filter(pa.array(ep_col == old["episode_index"]))
        length = part.num_rows
        part = part.set_column(
            part.schema.get_field_index("episode_index"),
            "episode_index",
            pa.array(np.full(length, n), pa.int64()),
        )
        part = part.set_column(
            part.schema.get_field_index("index"),
            "index",
            pa.array(np.arange(start, start + length), pa.int64()),
        )
        tables.append(part)
        row = {
            "episode_index": n,
            "tasks": old["tasks"],
            "length": length,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": start,
            "dataset_to_index": start + length,
        }
        for key in CAMERAS:
            row.update(
                {
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": start / fps,
                    f"videos/{key}/to_timestamp": (start + length) / fps,
                }
            )
            lo, hi = old["dataset_from_index"], old["dataset_to_index"]
            frames[key].append(source[key][lo:hi])
        rows.append(row)
        start += length
    (out / "data/chunk-000").mkdir(parents=True)
    (out / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), out / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), out / "meta/episodes/chunk-000/file-000.parquet")
    shutil.copy(FIXTURE / "meta/tasks.parquet", out / "meta/tasks.parquet")
    info.update(total_episodes=3 * repeat, total_frames=start)
    for key in CAMERAS:
        info["features"][key]["shape"] = [h, w, 3]
    (out / "meta/info.json").write_text(json.dumps(info, indent=4))
    for key in CAMERAS:
        path = out / f"videos/{key}/chunk-000/file-000.mp4"
        path.parent.mkdir(parents=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libsvtav1", rate=Fraction(fps))
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "30", "g": "2", "preset": "12"}
            for img in np.concatenate(frames[key]):
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return start


def _decode_count(path: str) -> int:
    """Decode every frame to an RGB array, as fast as PyAV does it (one swscale context for all frames)."""
    from av.video.reformatter import VideoReformatter

    rgb = VideoReformatter()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return sum(
            rgb.reformat(f, format="rgb24").to_ndarray().shape[0] > 0 for f in container.decode(stream)
        )


def time_decode(src: Path) -> tuple[float, int]:
    paths = [str(src / f"videos/{key}/chunk-000/file-000.mp4") for key in CAMERAS]
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_decode_count, paths[:1])  # start-up outside the timing
        t0 = time.perf_counter()
        count = sum(pool.map(_decode_count, paths))
        return time.perf_counter() - t0, count


def time_import(
    src: Path, out: Path, workers: int, shard_episodes: int = 10, video: VideoSettings | None = None
) -> float:
    import actionprior.data.writer  # noqa: F401  (the CLI pays this once: torch via webdataset, ~1.5 s)

    source, units, spec, record = lerobot.plan(
        src, threads=0 if workers <= 1 else 1, shard_episodes=shard_episodes
    )
    t0 = time.perf_counter()
    run_import(source, units, out, spec, record, workers=workers, console=Console(quiet=True), video=video)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=40, help="copies of the fixture's 3 episodes (90 rows each)"
    )
    parser.add_argument(
        "--source-size", nargs="+", default=["64", "256", "480x640"], help="source video sizes: N or HxW"
    )
    parser.add_argument(
        "--frames", choices=("png", "video"), default="png", help="how the import stores frames (--frames)"
    )
    args = parser.parse_args()
    video = VideoSettings() if args.frames == "video" else None
    table = Table(
        title=f"data import lerobot throughput, camera frames/s (import resizes to 64x64, {args.frames} frames, 2 cores)"
    )
    for col in (
        "source",
        "frames",
        "decode only, 2 proc",
        "import, 1 worker",
        "import, 2 workers",
        "2 workers steady",
        "import/decode",
    ):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.source_size:
            label = f"{size if 'x' in size else f'{size}x{size}'} AV1"
            big, small = Path(tmp) / f"big{size}", Path(tmp) / f"small{size}"
            rows, small_rows = build(big, args.repeat, size), build(small, 1, size)
            decode_s, frames = time_decode(big)
            assert frames == 2 * rows, (frames, rows)
            one = time_import(big, Path(tmp) / f"out{size}_1", 1, video=video)
            two = time_import(big, Path(tmp) / f"out{size}_2", 2, video=video)
            # Fixed costs (spawning workers that import torch through webdataset, statistics, renaming)
            # measured on a one-copy import and taken out: the rate a long import runs at.
            two_small = time_import(
                small, Path(tmp) / f"out{size}_small", 2, shard_episodes=1, video=video
            )  # 3 units: a pool
            steady = 2 * (rows - small_rows) / (two - two_small)
            table.add_row(
                label,
                str(frames),
                f"{frames / decode_s:.0f}",
                f"{frames / one:.0f}",
                f"{frames / two:.0f}",
                f"{steady:.0f}",
                f"{frames / decode_s / steady:.2f}x",
            )
            shutil.rmtree(big)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
