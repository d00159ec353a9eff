"""One markdown report from the JSON of ``benchmarks.train_throughput`` and ``benchmarks.inference_latency``.

    python -m benchmarks.summary --train runs/bench/gpu_session/train.json \\
        --latency runs/bench/gpu_session/latency.json --out runs/bench/gpu_session/summary.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.train_throughput import markdown as train_markdown

LATENCY_PARTS = ("backbone", "decoder", "total", "act")


def latency_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"### Inference latency per action chunk: {report.get('backbone') or report['source']} on {report['device']}",
        "",
        f"{report['params']['backbone'] / 1e6:,.1f} M backbone + {report['params']['action_prior'] / 1e6:,.2f} M "
        f"action-prior parameters; {report['image_size']} px; autocast {report.get('autocast') or 'off'}. "
        "Median / p90 wall ms (device-synchronised on a GPU).",
        "",
        "| decoder loop | Euler steps | threads | " + " | ".join(LATENCY_PARTS) + " |",
        "|---|---|---|" + "---|" * len(LATENCY_PARTS),
    ]
    for row in report["rows"]:
        cells = [f"{row[p]['wall_median_ms']:.1f} / {row[p]['wall_p90_ms']:.1f}" for p in LATENCY_PARTS]
        lines.append(
            f"| {row.get('decoder_mode', 'eager')} | {row['sample_steps']} | {row['threads']} | "
            + " | ".join(cells)
            + " |"
        )
    target = report.get("target")
    if target:
        lines += [
            "",
            f"Target total <= {target['total_ms_per_chunk']:.0f} ms per chunk: best median "
            f"{target['best_median_ms']:.1f} ms, met: {target['met']}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=Path, default=None)
    p.add_argument("--latency", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    parts = []
    for path, render in ((args.train, train_markdown), (args.latency, latency_markdown)):
        if path is None:
            continue
        if not path.is_file():
            parts.append(f"_{path}: not written (that benchmark did not finish)_\n")
            continue
        parts.append(render(json.loads(path.read_text())))
    args.out.write_text("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
