"""PNG vs video observation shards vs LeRobot's mp4: bytes per frame and Stage 2 sampling rates (issue 23).

Run through ``benchmarks/data_throughput.py --storage``; its module doc says what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from actionprior.data.images import fit_image
from actionprior.data.schema import Episode, decode_png
from actionprior.data.video_frames import FrameCache, VideoSettings, decode_video_frames
from actionprior.data.writer import DatasetWriter

SIZES = ("64", "224", "480x640")
CAMERAS = ("scene", "wrist")
MODEL_SIZE = 224
WINDOWS_PER_EPISODE = 4
MFU = 0.40
H200_BF16_TFLOPS = 989.0


# -- frames ---------------------------------------------------------------------------------------------
def rendered_frames(directory: Path, size: str) -> dict[str, np.ndarray]:
    """One Meta-World pick-place demonstration's two cameras at ``size`` (rendered once, cached as .npz)."""
    path = directory / f"frames-{size}.npz"
    if not path.exists():
        from actionprior.sim import make_env, make_expert
        from actionprior.sim.collect import run_episode

        side = 640 if size == "480x640" else int(size)
        env = make_env("metaworld_sawyer", "pick-place", 0, image_size=side)
        arrays, _ = run_episode(env, make_expert(env), 3)
        env.close()
        frames = {cam: arrays[f"frames/{cam}"] for cam in CAMERAS}
        if size == "480x640":  # a 4:3 camera: the middle 480 rows of the 640x640 render
            frames = {cam: np.ascontiguousarray(f[:, 80:560]) for cam, f in frames.items()}
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(path, **frames)
    with np.load(path) as data:
        return {cam: data[cam] for cam in CAMERAS}


def episodes_of(frames: dict[str, np.ndarray], count: int) -> list[Episode]:
    """``count`` episodes cut from one rendered demonstration by circular shifts of its time line (distinct
    frames at each step; one cut per episode)."""
    length = len(frames[CAMERAS[0]])
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        shift = int(rng.integers(length))
        out.append(
            Episode(
                key=f"ep{i:04d}",
                embodiment="synth_arm7",
                task="pick-place",
                instruction="pick up the puck",
                state=rng.normal(size=(length, 9)).astype(np.float32),
                action=rng.normal(size=(length, 7)).astype(np.float32),
                success=True,
                control_rate_hz=10.0,
                frames={cam: np.roll(f, shift, axis=0) for cam, f in frames.items()},
            )
        )
    return out


# -- storage --------------------------------------------------------------------------------------------
def write_dataset(directory: Path, episodes: Sequence[Episode], video: VideoSettings | None) -> float:
    """The episodes as a dataset (4 episodes per shard); CPU seconds it took."""
    from actionprior.data.synthetic import synthetic_registry

    t0 = time.process_time()
    writer = DatasetWriter(directory, synthetic_registry(CAMERAS), video=video)
    for start in range(0, len(episodes), 4):
        writer.add_shard(f"{start:05d}", episodes[start : start + 4])
    writer.finalize()
    return time.process_time() - t0


def lerobot_members(episodes: Sequence[Episode], scratch: Path) -> dict[tuple[str, str], bytes]:
    """Each episode's cameras encoded as LeRobot 0.4.4 does (``exporters/video.py``: AV1, CRF 30, GOP 2)."""
    from actionprior.data.exporters.video import encode_episode

    out = {}
    for ep in episodes:
        for cam, frames in ep.frames.items():
            path = scratch / f"{ep.key}-{cam}.mp4"
            encode_episode(str(path), frames, ep.control_rate_hz)
            out[ep.key, f"{cam}.mp4"] = path.read_bytes()
    return out


# -- sampling -------------------------------------------------------------------------------------------
def sampled_rate(
    episodes: Sequence[Episode], decode: Callable[[Episode, str, np.ndarray], list[np.ndarray]], draws: int
) -> float:
    """Frames/s of Stage 2's access pattern in one process: a random episode, ``WINDOWS_PER_EPISODE`` random
    steps, every camera decoded and fitted to the model's size."""
    rng = np.random.default_rng(1)
    count = 0
    for i in range(draws + 3):
        if i == 3:  # the first draws (decoder and scaler set-up) are not timed
            count, t0 = 0, time.process_time()
        ep = episodes[int(rng.integers(len(episodes)))]
        steps = rng.integers(len(ep), size=WINDOWS_PER_EPISODE)
        for cam in CAMERAS:
            for frame in decode(ep, cam, steps):
                fit_image(frame, MODEL_SIZE)
                count += 1
    return count / (time.process_time() - t0)


def shard_members(directory: Path) -> dict[tuple[str, str], bytes]:
    """``(episode key, field) -> bytes`` of every member of the dataset's observation shards."""
    from actionprior.data.tario import iter_tar_samples

    out = {}
    for path in sorted(directory.glob("obs-*.tar")):
        for sample in iter_tar_samples(path.read_bytes(), str(path)):
            out.update({(sample["__key__"], k): v for k, v in sample.items() if not k.startswith("__")})
    return out


def png_decoder(members: dict[tuple[str, str], bytes]) -> Callable:
    return lambda ep, cam, steps: [
        decode_png(members[ep.key, f"{cam}.{int(t):05d}.png"], "png") for t in steps
    ]


def video_decoder(
    members: dict[tuple[str, str], bytes], gop: int, cache: FrameCache | None = None
) -> Callable:
    return lambda ep, cam, steps: decode_video_frames(
        members[ep.key, f"{cam}.mp4"], "video", len(ep), steps, cache, gop
    )


def stream_rate(directory: Path, batches: int = 12) -> float:
    """Frames/s (cameras x windows) the observation stream delivers in one process, after one warm-up batch."""
    from actionprior.data.datamodule import ActionPriorDataModule

    dm = ActionPriorDataModule(
        [str(directory)],
        view="observation",
        batch_size=32,
        num_workers=0,
        batches_per_epoch=batches + 1,
        val_fraction=0.0,
        windows_per_episode=WINDOWS_PER_EPISODE,
        shuffle_buffer=64,
        image_size=MODEL_SIZE,
    )
    iterator = iter(dm.train_dataloader())
    next(iterator)
    t0 = time.process_time()
    frames = sum(int(b["camera_mask"].sum()) for b in iterator)
    return frames / (time.process_time() - t0)


def _warm_up() -> None:
    """Pay the one-time costs (imports, the first DataLoader, swscale set-up) before anything is timed."""
    from actionprior.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(Path(tmp), episodes_per_embodiment=2, image_size=32, cameras=CAMERAS)
        stream_rate(Path(tmp), batches=2)


# -- the consumer ---------------------------------------------------------------------------------------
def stage2_frames_per_second(
    image_size: int = MODEL_SIZE, batch: int = 32, cameras: int = 2
) -> dict[str, float]:
    """Frames/s one H200 consumes training Qwen3-VL-2B Stage 2 at ``MFU``: the analytic FLOPs of a step
    (``benchmarks/flops.py``; the VLA built on the meta device, so no weights are allocated)."""
    import torch

    from actionprior.training.vla_module import VLAModule
    from benchmarks.flops import Layout, vla_train_flops
    from benchmarks.train_throughput import RunSpec, _accepted, registry_and_normalization, stage2_kwargs

    spec = RunSpec(backbone="random:qwen3_vl_2b", batch_size=batch, image_size=image_size, cameras=cameras)
    registry, normalization = registry_and_normalization(0)
    kwargs, _ = _accepted(VLAModule, stage2_kwargs(spec, registry, normalization))
    with torch.device("meta"):
        module = VLAModule(**kwargs)
    vla = module.model
    grid = image_size // 16  # Qwen3-VL: 16 px patches, 2x2 merged into one text position
    merged = grid * grid // 4
    queries = vla.num_queries + int(vla.use_history)
    seq_len = cameras * (merged + 2) + 20 + queries  # image tokens with their markers, ~20 instruction tokens
    layout = Layout(batch, seq_len, (grid * grid,) * (batch * cameras))
    flops = vla_train_flops(vla, layout, spec.chunk_len, spec.aux_weight, module.vla_config.history_mode, 0)
    step_s = flops["total"] / (MFU * H200_BF16_TFLOPS * 1e12)
    return {
        "tflops_per_step": flops["total"] / 1e12,
        "step_s": step_s,
        "samples_s": batch / step_s,
        "frames_s": batch * cameras / step_s,
    }


# -- the report -----------------------------------------------------------------------------------------
def storage_report(args: argparse.Namespace) -> None:
    console = Console(width=160)
    consumer = stage2_frames_per_second()
    _warm_up()
    console.print(
        f"Stage 2 consumer (analytic, benchmarks/flops.py at {MFU:.0%} MFU of an H200): Qwen3-VL-2B, 2 x 224 px, batch 32: "
        f"{consumer['tflops_per_step']:.1f} TFLOP/step, {consumer['step_s'] * 1000:.0f} ms/step, "
        f"{consumer['samples_s']:.0f} samples/s = {consumer['frames_s']:.0f} frames/s; {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f}"
    )
    rows: list[dict[str, Any]] = []
    default = VideoSettings()
    with tempfile.TemporaryDirectory(
        dir=args.frames_dir.parent if args.frames_dir.parent.exists() else None
    ) as tmp:
        scratch = Path(tmp)
        for size in SIZES:
            episodes = episodes_of(rendered_frames(args.frames_dir, size), args.episodes)
            n_frames = sum(len(ep) for ep in episodes) * len(CAMERAS)
            variants: list[tuple[str, VideoSettings | None]] = [
                ("PNG", None),
                (f"video (default, GOP {default.gop})", default),
            ]
            if size == "224":
                variants += [(f"video GOP {g}", VideoSettings(gop=g)) for g in args.gops if g != default.gop]
                variants.append(("video lossless", VideoSettings(lossless=True, gop=default.gop)))
            for label, video in variants:
                directory = scratch / f"{size}-{label.replace(' ', '_')}"
                write_s = write_dataset(directory, episodes, video)
                stored = sum(p.stat().st_size for p in directory.glob("obs-*.tar"))
                members = shard_members(directory)
                decode = png_decoder(members) if video is None else video_decoder(members, video.gop)
                rows.append(
                    {
                        "size": size,
                        "storage": label,
                        "bytes_per_frame": stored / n_frames,
                        "write_ms_per_frame": 1000 * write_s / n_frames,
                        "sampled_frames_s": sampled_rate(episodes, decode, args.samples),
                        "stream_frames_s": stream_rate(directory),
                    }
                )
                shutil.rmtree(directory)
                console.print(f"  {size} {label}: {rows[-1]}")
            lerobot = lerobot_members(episodes, scratch)
            rows.append(
                {
                    "size": size,
                    "storage": "LeRobot mp4 (AV1 CRF 30, GOP 2)",
                    "bytes_per_frame": sum(len(b) for b in lerobot.values()) / n_frames,
                    "write_ms_per_frame": None,
                    "sampled_frames_s": sampled_rate(episodes, video_decoder(lerobot, 2), args.samples),
                    "stream_frames_s": None,
                }
            )
            console.print(f"  {size} LeRobot: {rows[-1]}")
    table = Table(
        title="Frame storage: bytes per frame and Stage 2 sampling per worker (frames fitted to 224 px)"
    )
    for column in (
        "frames",
        "storage",
        "bytes/frame",
        "vs PNG",
        "vs LeRobot",
        "write ms/frame",
        "sampled frames/s",
        "stream frames/s",
        "workers per H200",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        same = [r for r in rows if r["size"] == row["size"]]
        png = next(r["bytes_per_frame"] for r in same if r["storage"] == "PNG")
        ref = next(r["bytes_per_frame"] for r in same if r["storage"].startswith("LeRobot"))
        stream = row["stream_frames_s"]
        row["workers_per_h200"] = consumer["frames_s"] / stream if stream else None
        table.add_row(
            row["size"],
            row["storage"],
            f"{row['bytes_per_frame']:,.0f}",
            f"{png / row['bytes_per_frame']:.1f}x smaller",
            f"{row['bytes_per_frame'] / ref:.2f}",
            f"{row['write_ms_per_frame']:.2f}" if row["write_ms_per_frame"] is not None else "-",
            f"{row['sampled_frames_s']:,.0f}",
            f"{stream:,.0f}" if stream else "-",
            f"{row['workers_per_h200']:.1f}" if stream else "-",
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"consumer": consumer, "rows": rows}, indent=2))
