"""The study's success figures, from its episode table alone (``episodes.csv``; see episodes.py).

Per row: success overall as the **mean over tasks** of per-task success (the paper's "overall"; every task weighs
the same) and **episode-pooled** beside it, on the data-rich tasks and on Panda's, each with its interval, and
the paired difference to the no-prior row. Then the comparisons the claims read (``pairs``), all paired over the
training seeds both rows have and the evaluation episodes they share. Intervals: ``stats.contrast_interval`` (a
two-level bootstrap over training seeds and episodes, guarded by a Student-t interval over seeds). The RNG seed is
fixed, so the same table always gives the same numbers:

    python -m actionprior.study.success docs/reproduce/episodes.csv            # JSON, as in figures.json "success"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actionprior.study.episodes import Episode, read_csv
from actionprior.study.plan import SCARCE
from actionprior.study.stats import contrast_interval, task_weights

BASELINE = "no prior"
MAIN = "action-state prior"
ACTION_ONLY = "action-only prior"
HISTORY = "+ history"
SCALED = "action-state prior, 4x Stage 1 data"
SCALED_PASSES = "action-state prior, 4x Stage 1 data, equal passes"
UNSEEN = "unseen robot (prior without Panda)"
ZMEAN = "action-state prior, z' head at mean latent"
PARTS = ("overall", "overall_pooled", "rich", "scarce")

Task = tuple[str, str]  # (embodiment, task)


class EpisodeTable:
    """``{(row, point): {training seed: {task: {eval seed: success}}}}`` with the checks a published table needs."""

    def __init__(self, episodes: Sequence[Episode]):
        self.cells: dict[tuple[str, str], dict[int, dict[Task, dict[int, int]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(dict))
        )
        for e in episodes:
            cell = self.cells[(e.row, e.point)][e.training_seed][(e.embodiment, e.task)]
            if e.eval_seed in cell:
                raise ValueError(f"episode listed twice: row {e.row!r}, {e.point}, training seed {e.training_seed}, "
                                 f"{e.embodiment}/{e.task}, evaluation seed {e.eval_seed}")  # fmt: skip
            cell[e.eval_seed] = e.success
        tasks = {t for by_seed in self.cells.values() for by_task in by_seed.values() for t in by_task}
        self.tasks = {
            "rich": sorted(t for t in tasks if t[0] != SCARCE),
            "scarce": sorted(t for t in tasks if t[0] == SCARCE),
        }
        self.tasks["overall"] = self.tasks["overall_pooled"] = self.tasks["rich"] + self.tasks["scarce"]

    def has(self, row: str, point: str = "final") -> bool:
        return (row, point) in self.cells

    def outcomes(
        self, rows: Sequence[tuple[str, str]], tasks: Sequence[Task]
    ) -> tuple[list[int], list[np.ndarray]]:
        """Training seeds that every row has with every task, and per task the ``(rows, seeds, episodes)`` 0/1
        array over the evaluation seeds all of them share (sorted)."""
        if not tasks or not all(r in self.cells for r in rows):
            return [], []
        seeds = sorted(
            set.intersection(*(
                {s for s, by_task in self.cells[r].items() if all(t in by_task for t in tasks)} for r in rows
            ))
        )  # fmt: skip
        if not seeds:
            return [], []
        arrays = []
        for t in tasks:
            shared = sorted(set.intersection(*(set(self.cells[r][s][t]) for r in rows for s in seeds)))
            if not shared:
                return [], []
            arrays.append(np.array([[[self.cells[r][s][t][e] for e in shared] for s in seeds] for r in rows]))
        return seeds, arrays


def _weights(part: str, arrays: list[np.ndarray]) -> np.ndarray:
    return task_weights([y.shape[1] * y.shape[2] for y in arrays], per_task_mean=part != "overall_pooled")


def rate(table: EpisodeTable, row: str, part: str, point: str = "final") -> dict[str, Any] | None:
    seeds, arrays = table.outcomes([(row, point)], table.tasks[part])
    if not seeds:
        return None
    return contrast_interval(arrays, (1.0,), _weights(part, arrays)).to_dict()


def difference(
    table: EpisodeTable, treat: str, ctrl: str, part: str, point: str = "final", ctrl_point: str | None = None
) -> dict[str, Any] | None:
    """``treat - ctrl`` on ``part``, paired over shared training seeds and evaluation episodes."""
    seeds, arrays = table.outcomes([(treat, point), (ctrl, ctrl_point or point)], table.tasks[part])
    if not seeds:
        return None
    return contrast_interval(arrays, (1.0, -1.0), _weights(part, arrays)).to_dict()


def gain_gap(table: EpisodeTable, treat: str, ctrl: str) -> dict[str, Any] | None:
    """(gain on Panda's tasks) - (gain on the data-rich tasks), each gain a paired per-task-mean difference: one
    contrast, so the interval accounts for the two gains sharing seeds (not two intervals compared by overlap)."""
    rich, scarce = table.tasks["rich"], table.tasks["scarce"]
    seeds, arrays = table.outcomes([(treat, "final"), (ctrl, "final")], rich + scarce)
    if not seeds or not rich or not scarce:
        return None
    weights = [-1 / len(rich)] * len(rich) + [1 / len(scarce)] * len(scarce)
    return contrast_interval(arrays, (1.0, -1.0), weights).to_dict()


def _per_seed(table: EpisodeTable, row: str, part: str) -> dict[int, float]:
    seeds, arrays = table.outcomes([(row, "final")], table.tasks[part])
    if not seeds:
        return {}
    w = _weights(part, arrays)
    return {
        s: float(sum(wt * y[0, i].mean() for wt, y in zip(w, arrays, strict=True)))
        for i, s in enumerate(seeds)
    }


def success_figures(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Every success figure of the report (JSON-ready; seeds as strings, as JSON keys are)."""
    table = EpisodeTable(episodes)
    rows: dict[str, Any] = {}
    for row in dict.fromkeys(r for r, _ in table.cells):
        if not table.has(row):
            continue
        entry: dict[str, Any] = {"per_seed": {p: {str(s): v for s, v in _per_seed(table, row, p).items()}
                                              for p in ("overall", "rich", "scarce")}}  # fmt: skip
        for part in PARTS:
            entry[part] = rate(table, row, part)
            if row != BASELINE:
                entry[f"{part}_vs_no_prior"] = difference(table, row, BASELINE, part)
        rows[row] = entry
    early = {
        row: {part: rate(table, row, part, "early") for part in ("overall", "overall_pooled")}
        for row, point in table.cells
        if point == "early"
    }
    pairs = {
        "gain_scarce_minus_rich": gain_gap(table, MAIN, BASELINE),
        "action_state_vs_action_only": difference(table, MAIN, ACTION_ONLY, "overall"),
        "history_vs_prior": difference(table, HISTORY, MAIN, "overall"),
        "zmean_vs_default_head": difference(table, ZMEAN, MAIN, "overall"),
        "4x_vs_1x_final": difference(table, SCALED, MAIN, "overall"),
        "4x_vs_1x_early": difference(table, SCALED, MAIN, "overall", "early"),
        "4x_passes_vs_1x_final": difference(table, SCALED_PASSES, MAIN, "overall"),
        "4x_passes_vs_1x_early": difference(table, SCALED_PASSES, MAIN, "overall", "early"),
        "1x_vs_no_prior_early": difference(table, MAIN, BASELINE, "overall", "early"),
        # The unseen robot's own tasks: a prior that never saw Panda against one that did, of 1x data (as-1x) and
        # of the same data size (the 4x prior: 32k transitions, 5.7 % Panda, vs the unseen prior's 31k).
        "unseen_vs_seen_scarce": difference(table, UNSEEN, MAIN, "scarce"),
        "unseen_vs_seen_same_size_scarce": difference(table, UNSEEN, SCALED, "scarce"),
    }
    return {
        "tasks": {part: [list(t) for t in table.tasks[part]] for part in ("rich", "scarce")},
        "rows": rows,
        "early": early,
        "pairs": pairs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m actionprior.study.success", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "episodes", type=Path, help="an episodes.csv of the study (e.g. docs/reproduce/episodes.csv)"
    )
    args = p.parse_args(argv)
    try:
        figures = success_figures(read_csv(args.episodes))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
