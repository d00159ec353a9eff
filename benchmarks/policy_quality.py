"""Closed-loop comparison of training recipes on the same evaluation episodes (docs/policy_quality.md).

Each row is one recipe; each of its reports is one training seed evaluated by ``actionprior eval`` with the same
``--suite``, ``--episodes-per-task`` and ``--seed`` (so every row sees the same episodes). The table gives
successes per task, the per-task-mean success with the study's interval (two-level bootstrap over training seeds
and episodes, the Student-t interval over seeds, and Wilson; ``actionprior.study.stats``) and every row's paired
difference from the first row. ``--plot`` draws success against samples seen (``steps x batch``, given per row as
``label@samples``)::

    python -m benchmarks.policy_quality \\
        "paper recipe@16000=runs/pq/base_s0/eval-2000,runs/pq/base_s1/eval-2000" \\
        "+ state token@16000=runs/pq/state_s0/eval-2000,runs/pq/state_s1/eval-2000" \\
        --out docs/figures/policy_quality_curve.png

A report is a ``report.json`` or the folder holding it. Reports of different episodes are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from actionprior.study.stats import Interval, contrast_interval, task_weights


@dataclass
class Row:
    label: str
    samples: int | None
    reports: list[dict[str, Any]]


def read_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    if not p.is_file():
        raise SystemExit(f"{p}: no report.json (run `actionprior eval ... --out {p.parent}` first)")
    return json.loads(p.read_text())


def parse_row(spec: str) -> Row:
    """``label[@samples]=report[,report...]``."""
    if "=" not in spec:
        raise SystemExit(f"row {spec!r}: expected 'label[@samples]=report[,report...]'")
    head, paths = spec.split("=", 1)
    label, _, samples = head.partition("@")
    return Row(label, int(samples) if samples else None, [read_report(p) for p in paths.split(",") if p])


def episode_outcomes(report: dict[str, Any]) -> dict[tuple[str, str], list[int]]:
    """0/1 success per ``(embodiment, task)`` in episode order, and the episode seeds, which must match."""
    out: dict[tuple[str, str], list[int]] = {}
    for e in sorted(report["episodes"], key=lambda e: (e["embodiment"], e["task"], e["episode"])):
        out.setdefault((e["embodiment"], e["task"]), []).append(int(bool(e["success"])))
    return out


def _episode_ids(report: dict[str, Any]) -> list[tuple[str, str, int, Any]]:
    return sorted((e["embodiment"], e["task"], e["episode"], e.get("seed")) for e in report["episodes"])


def outcome_arrays(rows: Sequence[Row]) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
    """Tasks and, per task, ``(rows, seeds, episodes)`` outcomes; rows with fewer seeds reuse none (refused)."""
    reports = [r for row in rows for r in row.reports]
    ids = _episode_ids(reports[0])
    if any(_episode_ids(r) != ids for r in reports[1:]):
        raise SystemExit(
            "the reports were evaluated on different episodes (same --suite, --episodes-per-task, --seed)"
        )
    seeds = {len(row.reports) for row in rows}
    if len(seeds) != 1:
        raise SystemExit(f"every row needs the same number of training seeds, got {sorted(seeds)}")
    per_report = [[episode_outcomes(r) for r in row.reports] for row in rows]
    tasks = sorted(per_report[0][0])
    arrays = [np.array([[o[t] for o in row] for row in per_report]) for t in tasks]
    return tasks, arrays


def rate(arrays: list[np.ndarray], row: int) -> Interval:
    one = [a[row : row + 1] for a in arrays]
    return contrast_interval(one, (1.0,), task_weights([a.shape[2] for a in arrays], per_task_mean=True))


def difference(arrays: list[np.ndarray], row: int, base: int = 0) -> Interval:
    pair = [a[[row, base]] for a in arrays]
    return contrast_interval(
        pair, (1.0, -1.0), task_weights([a.shape[2] for a in arrays], per_task_mean=True)
    )


def table(rows: Sequence[Row]) -> tuple[Table, list[dict[str, Any]]]:
    tasks, arrays = outcome_arrays(rows)
    t = Table(title="closed-loop success (same episodes; per-task mean, 95 % interval)")
    t.add_column("recipe")
    for emb, task in tasks:
        t.add_column(f"{emb.split('_', 1)[-1][:6]}/{task[:6]}", justify="right")
    t.add_column("overall %", justify="right")
    t.add_column(f"vs {rows[0].label} (pp)", justify="right")
    records = []
    for i, row in enumerate(rows):
        overall = rate(arrays, i)
        diff = difference(arrays, i) if i else None
        per_task = [int(a[i].sum()) for a in arrays]
        t.add_row(
            row.label,
            *[f"{k}/{a.shape[1] * a.shape[2]}" for k, a in zip(per_task, arrays, strict=True)],
            overall.pct(),
            diff.pct(signed=True) if diff else "",
        )
        records.append(
            {
                "label": row.label,
                "samples": row.samples,
                "seeds": len(row.reports),
                "per_task": {f"{e}/{k}": s for (e, k), s in zip(tasks, per_task, strict=True)},
                "overall": overall.to_dict(),
                "minus_first": diff.to_dict() if diff else None,
            }
        )
    return t, records


def plot(records: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in records:
        if r["samples"] is None:
            continue
        o = r["overall"]
        ax.errorbar(
            r["samples"] / 1000,
            100 * o["estimate"],
            yerr=[[100 * (o["estimate"] - o["low"])], [100 * (o["high"] - o["estimate"])]],
            fmt="o",
            capsize=4,
            label=f"{r['label']} ({r['seeds']} seed{'s' * (r['seeds'] > 1)})",
        )
    ax.set_xlabel("Stage 2 samples seen (thousands: steps x batch)")
    ax.set_ylabel("closed-loop success, per-task mean (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "rows", nargs="+", help="label[@samples]=report[,report...] (one report per training seed)"
    )
    p.add_argument("--out", type=Path, help="PNG of success against samples seen (rows with @samples)")
    p.add_argument("--json", type=Path, help="write the table's records here")
    args = p.parse_args(argv)
    rows = [parse_row(s) for s in args.rows]
    t, records = table(rows)
    Console(width=200).print(t)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))
    if args.out:
        plot(records, args.out)
        print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
