"""Evaluation report: success rates and action smoothness per task and embodiment, as a Rich table, JSON, PNG
charts (success, and its companion: smoothness), rollout videos (GIF), and the same figures in TensorBoard.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

from actionprior.evaluation.rollout import EpisodeResult
from actionprior.evaluation.smoothness import SMOOTHNESS_KEYS

REPORT_VERSION = 1


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (an episode too short for a figure has None), None if there are none."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _group(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    n = len(results)
    successes = sum(r.success for r in results)
    return {
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n if n else 0.0,
        "mean_steps": float(np.mean([r.steps for r in results])) if n else 0.0,
        "mean_act_ms": float(np.mean([r.act_ms_mean for r in results])) if n else 0.0,
        # per-episode smoothness figures averaged over the episodes (actionprior.evaluation.smoothness)
        **{key: _mean([getattr(r, key) for r in results]) for key in SMOOTHNESS_KEYS},
    }


def _units(results: Sequence[EpisodeResult]) -> str:
    units = sorted({r.action_units for r in results})
    return units[0] if len(units) == 1 else "mixed: " + ", ".join(units)


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
        "action_units": _units(results),  # of the smoothness figures
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
    for label in SMOOTHNESS_LABELS.values():
        table.add_column(label, justify="right")
    if report.get("action_units"):
        table.caption = (
            f"smoothness per control step, in {report['action_units']} action units, gripper dims left out "
            "(mean over episodes)"
        )
    for row in report["per_task"]:
        table.add_row(
            row["embodiment"],
            row["task"],
            f"{row['successes']}/{row['episodes']}",
            f"{100 * row['success_rate']:.0f}%",
            f"{row['mean_steps']:.0f}",
            f"{row['mean_act_ms']:.1f}",
            *_smoothness_cells(row),
        )
    table.add_section()
    for emb, g in report["per_embodiment"].items():
        table.add_row(
            emb,
            "[i]all[/]",
            f"{g['successes']}/{g['episodes']}",
            f"{100 * g['success_rate']:.0f}%",
            "",
            "",
            *_smoothness_cells(g),
        )
    o = report["overall"]
    table.add_row(
        "[b]all[/]",
        "",
        f"{o['successes']}/{o['episodes']}",
        f"[b]{100 * o['success_rate']:.0f}%[/]",
        "",
        "",
        *_smoothness_cells(o),
    )
    return table


SMOOTHNESS_LABELS = {"rms_jerk": "RMS jerk", "max_boundary_jump": "max jump", "action_tv": "TV/step"}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _smoothness_cells(group: dict[str, Any]) -> list[str]:
    return [_fmt(group.get(key)) for key in SMOOTHNESS_LABELS]


def print_table(report: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(success_table(report))


def success_chart(report: dict[str, Any], path: Path) -> Path:
    """Horizontal bar chart of success rate per (embodiment, task), saved as PNG."""
    rows = report["per_task"]
    panel = Panel(
        "success rate (%)",
        [100 * r["success_rate"] for r in rows],
        [f"{100 * r['success_rate']:.0f}% ({r['successes']}/{r['episodes']})" for r in rows],
        100.0,
    )
    return bar_chart([f"{r['embodiment']} / {r['task']}" for r in rows], [panel], path)


def smoothness_chart(report: dict[str, Any], path: Path) -> Path:
    """The success chart's companion: RMS jerk, largest chunk-boundary jump and total variation per task."""
    rows = report["per_task"]
    units = report.get("action_units", "raw")
    panels = []
    for key, label in SMOOTHNESS_LABELS.items():
        values = [r.get(key) for r in rows]
        top = max([v for v in values if v is not None] + [1e-9])
        panels.append(
            Panel(f"{label} ({units})", [v or 0.0 for v in values], [_fmt(v) for v in values], 1.15 * top)
        )
    return bar_chart([f"{r['embodiment']} / {r['task']}" for r in rows], panels, path)


@dataclass(frozen=True)
class Panel:
    """One bar per label: ``values`` on an axis from 0 to ``top``, ``texts`` written next to the bars."""

    title: str
    values: list[float]
    texts: list[str]
    top: float


def bar_chart(labels: list[str], panels: list[Panel], path: Path) -> Path:
    """Horizontal bar panels side by side sharing the labels, saved as PNG (matplotlib if installed, else PIL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("matplotlib") is not None:
        _chart_matplotlib(labels, panels, path)
    else:
        _chart_pil(labels, panels, path)
    return path


def _chart_matplotlib(labels: list[str], panels: list[Panel], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(panels), figsize=(7 * len(panels), 0.45 * len(labels) + 1.2), sharey=True, squeeze=False
    )
    y = np.arange(len(labels))
    for ax, panel in zip(axes[0], panels, strict=True):
        ax.barh(y, panel.values, color="tab:blue")
        ax.set_yticks(y, labels)
        ax.set_xlim(0, panel.top)
        ax.set_xlabel(panel.title)
        for yi, value, text in zip(y, panel.values, panel.texts, strict=True):
            ax.text(min(value + 0.01 * panel.top, 0.88 * panel.top), yi, text, va="center")
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _chart_pil(labels: list[str], panels: list[Panel], path: Path) -> None:
    font = ImageFont.load_default(size=14)
    row_h, pad, bar_w, text_w = 26, 10, 360, 130
    label_w = max([int(font.getlength(label)) for label in labels] + [60]) + 2 * pad
    panel_w = bar_w + text_w
    width = label_w + panel_w * len(panels)
    height = pad * 2 + row_h * (len(labels) + 2)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, label in enumerate(labels):
        draw.text((pad, pad + i * row_h + 4), label, fill="black", font=font)
    for k, panel in enumerate(panels):
        x0 = label_w + k * panel_w
        for i, (value, text) in enumerate(zip(panel.values, panel.texts, strict=True)):
            y = pad + i * row_h
            draw.rectangle([x0, y + 3, x0 + bar_w, y + row_h - 3], outline=(200, 200, 200))
            filled = round(bar_w * min(max(value / panel.top, 0.0), 1.0)) if panel.top > 0 else 0
            if filled > 0:
                draw.rectangle([x0, y + 3, x0 + filled, y + row_h - 3], fill=(31, 119, 180))
            draw.text((x0 + bar_w + 8, y + 4), text, fill="black", font=font)
        axis_y = pad + len(labels) * row_h + 4
        for frac in (0.0, 0.5, 1.0):
            x = x0 + round(bar_w * frac)
            draw.line([x, axis_y - 3, x, axis_y], fill="black")
            draw.text((x - 8, axis_y + 1), f"{frac * panel.top:.3g}", fill="black", font=font)
        draw.text((x0, axis_y + row_h - 6), panel.title, fill="black", font=font)
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
    smoothness_path: Path | None = None,
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
        for key in SMOOTHNESS_KEYS:
            groups = [("", report["overall"])]
            groups += [(f"/{r['embodiment']}/{r['task']}", r) for r in report["per_task"]]
            for suffix, group in groups:
                if group.get(key) is not None:
                    writer.add_scalar(f"eval/{key}{suffix}", group[key], step)
        for tag, image in (("eval/success_chart", chart_path), ("eval/smoothness_chart", smoothness_path)):
            if image is not None:
                writer.add_image(tag, np.asarray(Image.open(image).convert("RGB")), step, dataformats="HWC")
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
    smooth = " | ".join(SMOOTHNESS_LABELS.values())
    lines = [f"| embodiment | task | success | rate | {smooth} |", "|---|---|---|---|---|---|---|"]
    for row in report["per_task"]:
        lines.append(
            f"| {row['embodiment']} | {row['task']} | {row['successes']}/{row['episodes']} | "
            f"{100 * row['success_rate']:.0f}% | " + " | ".join(_smoothness_cells(row)) + " |"
        )
    o = report["overall"]
    lines.append(
        f"| **all** | | {o['successes']}/{o['episodes']} | **{100 * o['success_rate']:.0f}%** | "
        + " | ".join(_smoothness_cells(o))
        + " |"
    )
    lines.append(
        f"\nsmoothness per control step in {report.get('action_units', 'raw')} action units, gripper dims left out"
    )
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
    smooth = smoothness_chart(report, out_dir / "smoothness.png")
    videos = save_videos(results, out_dir / "videos", fps)
    report["artifacts"] = {
        "chart": str(chart),
        "smoothness_chart": str(smooth),
        "videos": [str(p) for p in videos],
    }
    if tensorboard:
        report["artifacts"]["tensorboard"] = str(
            log_tensorboard(report, results, out_dir / "tensorboard", chart, fps, smoothness_path=smooth)
        )
    write_json(report, out_dir / "report.json")
    return report
