"""Evaluation report: success rates per task and embodiment, as a Rich table, JSON, a PNG chart,
rollout videos (GIF), and the same figures in TensorBoard.

Optional packages are used when present and replaced otherwise, never silently: matplotlib draws the
chart if installed (else PIL does), and TensorBoard gets real videos only when moviepy is installed
(``SummaryWriter.add_video`` needs it); without it each video is logged as a grid of frames.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

from actionprior.evaluation.rollout import EpisodeResult

REPORT_VERSION = 1


def _group(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    n = len(results)
    successes = sum(r.success for r in results)
    return {
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n if n else 0.0,
        "mean_steps": float(np.mean([r.steps for r in results])) if n else 0.0,
        "mean_act_ms": float(np.mean([r.act_ms_mean for r in results])) if n else 0.0,
    }


def aggregate(results: Sequence[EpisodeResult], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: overall, per embodiment, per (embodiment, task), and every episode."""
    by_task: dict[tuple[str, str], list[EpisodeResult]] = defaultdict(list)
    by_emb: dict[str, list[EpisodeResult]] = defaultdict(list)
    for r in results:
        by_task[(r.embodiment, r.task)].append(r)
        by_emb[r.embodiment].append(r)
    return {
        "version": REPORT_VERSION,
        "meta": dict(meta or {}),
        "overall": _group(results),
        "per_embodiment": {e: _group(rs) for e, rs in sorted(by_emb.items())},
        "per_task": [{"embodiment": e, "task": t, **_group(rs)} for (e, t), rs in sorted(by_task.items())],
        "episodes": [r.summary() for r in results],
    }


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False))
    return path


def success_table(report: dict[str, Any], title: str = "closed-loop success") -> Table:
    table = Table(title=title)
    for col, justify in (("embodiment", "left"), ("task", "left"), ("success", "right"), ("rate", "right")):
        table.add_column(col, justify=justify)
    table.add_column("mean steps", justify="right")
    table.add_column("act ms", justify="right")
    for row in report["per_task"]:
        table.add_row(
            row["embodiment"],
            row["task"],
            f"{row['successes']}/{row['episodes']}",
            f"{100 * row['success_rate']:.0f}%",
            f"{row['mean_steps']:.0f}",
            f"{row['mean_act_ms']:.1f}",
        )
    table.add_section()
    for emb, g in report["per_embodiment"].items():
        table.add_row(
            emb, "[i]all[/]", f"{g['successes']}/{g['episodes']}", f"{100 * g['success_rate']:.0f}%", "", ""
        )
    o = report["overall"]
    table.add_row(
        "[b]all[/]", "", f"{o['successes']}/{o['episodes']}", f"[b]{100 * o['success_rate']:.0f}%[/]", "", ""
    )
    return table


def print_table(report: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(success_table(report))


def success_chart(report: dict[str, Any], path: Path) -> Path:
    """Horizontal bar chart of success rate per (embodiment, task), saved as PNG."""
    labels = [f"{r['embodiment']} / {r['task']}" for r in report["per_task"]]
    rates = [r["success_rate"] for r in report["per_task"]]
    counts = [f"{r['successes']}/{r['episodes']}" for r in report["per_task"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("matplotlib") is not None:
        _chart_matplotlib(labels, rates, counts, path)
    else:
        _chart_pil(labels, rates, counts, path)
    return path


def _chart_matplotlib(labels: list[str], rates: list[float], counts: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.barh(y, [100 * r for r in rates], color="tab:blue")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("success rate (%)")
    for yi, r, c in zip(y, rates, counts, strict=True):
        ax.text(min(100 * r + 1, 88), yi, f"{100 * r:.0f}% ({c})", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _chart_pil(labels: list[str], rates: list[float], counts: list[str], path: Path) -> None:
    font = ImageFont.load_default(size=14)
    row_h, pad, bar_w = 26, 10, 360
    label_w = max([int(font.getlength(label)) for label in labels] + [60]) + 2 * pad
    width = label_w + bar_w + 130
    height = pad * 2 + row_h * (len(labels) + 1)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, (label, rate, count) in enumerate(zip(labels, rates, counts, strict=True)):
        y = pad + i * row_h
        draw.text((pad, y + 4), label, fill="black", font=font)
        draw.rectangle([label_w, y + 3, label_w + bar_w, y + row_h - 3], outline=(200, 200, 200))
        if rate > 0:
            draw.rectangle(
                [label_w, y + 3, label_w + round(bar_w * rate), y + row_h - 3], fill=(31, 119, 180)
            )
        draw.text((label_w + bar_w + 8, y + 4), f"{100 * rate:.0f}% ({count})", fill="black", font=font)
    axis_y = pad + len(labels) * row_h + 4
    for pct in (0, 50, 100):
        x = label_w + bar_w * pct // 100
        draw.line([x, axis_y - 3, x, axis_y], fill="black")
        draw.text((x - 8, axis_y + 1), f"{pct}%", fill="black", font=font)
    img.save(path)


def _video_name(r: EpisodeResult) -> str:
    status = "success" if r.success else "failure"
    return f"{r.embodiment}__{r.task}__ep{r.episode:03d}__{status}"


def save_videos(results: Sequence[EpisodeResult], directory: Path, fps: float = 10.0) -> list[Path]:
    """One animated GIF per recorded episode, upscaled (nearest) to >= 256 px so small frames are visible."""
    import imageio.v3 as iio

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        if r.frames is None or len(r.frames) == 0:
            continue
        frames = r.frames
        scale = max(1, math.ceil(256 / frames.shape[1]))
        if scale > 1:
            frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
        path = directory / f"{_video_name(r)}.gif"
        iio.imwrite(path, frames, extension=".gif", duration=1000 / fps, loop=0)
        paths.append(path)
    return paths


def frame_grid(frames: np.ndarray, max_frames: int = 8) -> np.ndarray:
    """``[h, n*w, 3]`` strip of ``max_frames`` frames evenly spaced over the episode (first and last kept)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    return np.concatenate(list(frames[idx]), axis=1)


def log_tensorboard(
    report: dict[str, Any],
    results: Sequence[EpisodeResult],
    log_dir: Path,
    chart_path: Path | None = None,
    fps: float = 10.0,
    step: int = 0,
) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    has_moviepy = importlib.util.find_spec("moviepy") is not None
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        writer.add_scalar("eval/success_rate", report["overall"]["success_rate"], step)
        for emb, g in report["per_embodiment"].items():
            writer.add_scalar(f"eval/success_rate/{emb}", g["success_rate"], step)
        for row in report["per_task"]:
            writer.add_scalar(
                f"eval/success_rate/{row['embodiment']}/{row['task']}", row["success_rate"], step
            )
        if chart_path is not None:
            chart = np.asarray(Image.open(chart_path).convert("RGB"))
            writer.add_image("eval/success_chart", chart, step, dataformats="HWC")
        for r in results:
            if r.frames is None or len(r.frames) == 0:
                continue
            tag = f"eval/rollout/{_video_name(r)}"
            if has_moviepy:
                video = np.ascontiguousarray(r.frames.transpose(0, 3, 1, 2))[None]  # [1, T, 3, h, w]
                writer.add_video(tag, video, step, fps=int(fps))
            else:
                writer.add_image(tag, frame_grid(r.frames), step, dataformats="HWC")
        writer.add_text("eval/table", _markdown_table(report), step)
    finally:
        writer.close()
    return log_dir


def _markdown_table(report: dict[str, Any]) -> str:
    lines = ["| embodiment | task | success | rate |", "|---|---|---|---|"]
    for row in report["per_task"]:
        lines.append(
            f"| {row['embodiment']} | {row['task']} | {row['successes']}/{row['episodes']} | "
            f"{100 * row['success_rate']:.0f}% |"
        )
    o = report["overall"]
    lines.append(f"| **all** | | {o['successes']}/{o['episodes']} | **{100 * o['success_rate']:.0f}%** |")
    return "\n".join(lines)


def write_all(
    results: Sequence[EpisodeResult],
    out_dir: Path,
    meta: dict[str, Any] | None = None,
    fps: float = 10.0,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Everything into ``out_dir``: report.json, success.png, videos/*.gif, tensorboard/ events."""
    report = aggregate(results, meta)
    chart = success_chart(report, out_dir / "success.png")
    videos = save_videos(results, out_dir / "videos", fps)
    report["artifacts"] = {
        "chart": str(chart),
        "videos": [str(p) for p in videos],
    }
    if tensorboard:
        report["artifacts"]["tensorboard"] = str(
            log_tensorboard(report, results, out_dir / "tensorboard", chart, fps)
        )
    write_json(report, out_dir / "report.json")
    return report
