"""How long a study takes on a quiet 2-core host, before it runs: a cost per unit, summed over the plan.

The costs are fitted to the published full study (``docs/reproduce/figures.json``, ``unit_seconds``: 64 units,
93 min) and checked against the measured ``--quick`` run (28 min for 44 units; the model says 28.7):

* a fit (Stage 1 or Stage 2) costs a start-up plus a cost per step: Stage 2 ran 2000 steps in 104-119 s
  (+ history: 167-206 s, both passes of the history objective), Stage 1 2000 steps in 195-201 s (action-state)
  and 153 s (action-only). The early-training probe adds about one forward-backward per probed step.
* an evaluation call costs a start-up plus a cost per episode: 15 data-rich episodes took 33-44 s, 32 Panda
  episodes 100-123 s (Panda's episodes run to the longer time limit when they fail).
* a collection costs a start-up plus a cost per episode, with images (about 1 s) or trajectory-only (0.15 s).

Start-ups (15 s per fit, 20 s per evaluation, 10 s per collection) are what separates the full and the quick runs;
the per-step and per-episode costs follow from the full run's unit times. A busier host or a better policy
(successful episodes end early) moves the figures; the ledger of a finished run has the real ones.

    python -m actionprior.study --estimate            # the full study: minutes per unit kind and per row
    python -m actionprior.study --quick --estimate
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actionprior.study.plan import ROWS, Preset, Unit, build_plan, slug

BUDGET_MIN = {"full": 150.0, "quick": 45.0}  # issue 22: make reproduce <= 150 min, --quick <= 45 min


@dataclass(frozen=True)
class Costs:
    """Seconds on a quiet 2-core host (module docstring)."""

    fit_startup: float = 15.0
    stage2_step: float = 0.049  # (113 s - 15 s) / 2000 steps
    history_factor: float = 1.75  # (186 s - 15 s) / (113 s - 15 s)
    stage1_step_state: float = 0.093  # (200 s - 15 s) / 2000
    stage1_step_action_only: float = 0.069  # (153 s - 15 s) / 2000
    eval_startup: float = 20.0
    eval_rich_episode: float = 1.07  # (36 s - 20 s) / 15
    eval_scarce_episode: float = 2.7  # (106 s - 20 s) / 32
    collect_startup: float = 10.0
    collect_episode_images: float = 1.0
    collect_episode_trajectory: float = 0.15
    analysis_startup: float = 5.0
    analysis_per_seed: float = 5.0


def unit_seconds(unit: Unit, costs: Costs = Costs()) -> float:
    """The estimated wall-clock of one unit of ``build_plan``."""
    info = unit.info
    if unit.kind == "collect":
        if "episodes" not in info:  # the joint statistics
            return 2.0
        per = costs.collect_episode_images if info["images"] else costs.collect_episode_trajectory
        return costs.collect_startup + per * info["episodes"]
    if unit.kind == "stage1":
        per = costs.stage1_step_state if info["use_state"] else costs.stage1_step_action_only
        return costs.fit_startup + per * info["steps"]
    if unit.kind == "stage2":
        per = costs.stage2_step * (costs.history_factor if info["history"] else 1.0)
        return costs.fit_startup + per * info["steps"] + costs.stage2_step * info["probe_steps"]
    if unit.kind == "eval":
        eps = info["episodes"]
        return (
            costs.eval_startup
            + costs.eval_rich_episode * eps["rich"]
            + costs.eval_scarce_episode * eps["scarce"]
        )
    if unit.kind == "analysis":
        return costs.analysis_startup + costs.analysis_per_seed * info["seeds"]
    raise ValueError(f"unit {unit.key}: no cost model for kind '{unit.kind}'")


def estimate(preset: Preset, costs: Costs = Costs()) -> dict[str, Any]:
    """Minutes per unit kind, per row (its Stage 2 runs and evaluations over every seed) and in total."""
    units = build_plan(Path("runs/estimate"), preset)  # only builds the unit list; nothing is read or written
    kinds: dict[str, float] = defaultdict(float)
    rows: dict[str, float] = defaultdict(float)
    for unit in units:
        seconds = unit_seconds(unit, costs)
        kinds[unit.kind] += seconds / 60
        if "row" in unit.info:
            rows[unit.info["row"]] += seconds / 60
    return {
        "preset": preset.name,
        "stage2_steps": preset.stage2_steps,
        "seeds": len(preset.seeds),
        "units": len(units),
        "minutes": sum(kinds.values()),
        "kinds": dict(kinds),
        "rows": dict(rows),
        "dropped_rows": [r.name for r in ROWS if r not in preset.row_set],
    }


def per_row_minutes(preset: Preset, costs: Costs = Costs()) -> dict[str, float]:
    """What each row of ROWS would add to ``preset`` (Stage 2 + evaluations over its seeds, and a Stage 1 prior
    that only it needs): the price list for choosing which rows to drop."""
    from dataclasses import replace

    every = replace(preset, rows=tuple(r.name for r in ROWS))
    units = build_plan(Path("runs/estimate"), every)
    by_key = {u.key: u for u in units}
    out = {}
    for row in ROWS:
        seconds = sum(unit_seconds(u, costs) for u in units if u.info.get("row") == row.name)
        others = {r.prior for r in ROWS if r is not row}
        if row.prior and row.prior not in others and row.prior != "as-1x":
            seconds += unit_seconds(by_key[f"stage1/{row.prior}"], costs)
        out[row.name] = seconds / 60
    return out


def format_estimate(preset: Preset, costs: Costs = Costs()) -> str:
    est = estimate(preset, costs)
    budget = BUDGET_MIN.get(preset.name)
    lines = [
        f"{preset.name} study: {est['units']} units, {est['seeds']} training seeds, Stage 2 {preset.stage2_steps} "
        f"steps: {est['minutes']:.0f} min on a quiet 2-core host"
        + (f" (budget {budget:.0f} min)" if budget else ""),
        "  by kind: " + ", ".join(f"{k} {v:.1f}" for k, v in est["kinds"].items()),
        "  rows (min each, Stage 2 + evaluations over all seeds; * = dropped, not run):",
    ]
    prices = per_row_minutes(preset, costs)
    for row in ROWS:
        mark = " " if row.name in est["rows"] or row in preset.row_set else "*"
        lines.append(f"   {mark} {slug(row.name):55s} {prices[row.name]:6.1f}")
    return "\n".join(lines)
