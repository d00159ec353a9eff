"""The paper's claims as one resumable study: ``make reproduce`` (``python -m actionprior.study``).

In one mixture where robosuite Panda is scarce (about 5-10 % of Stage 2 frames): the ablation rows (no prior /
action-only / action-state / + history) over several training seeds on fixed evaluation seeds, Stage 1 data
scaling (1x vs 4x trajectories, incl. trajectory-only data), an unseen robot, the early-training probe, and
the wall-clock of Stage 1. Writes ``<runs>/report.md``, ``figures.json`` and PNG plots.

    python -m actionprior.study                 # the full study (~142 min on a quiet 2-core host, estimated)
    python -m actionprior.study --quick         # the same units, smaller (~41 min estimated)
    python -m actionprior.study --smoke         # wiring check (minutes)
    python -m actionprior.study --estimate      # minutes per unit kind and per row, before running anything
    python -m actionprior.study --report-only   # rebuild the report from what has finished
    python -m actionprior.study --rows all      # also the rows the preset drops for its time budget

Interrupt it at any point and rerun the same command: finished units (``<runs>/ledger.json``) are skipped and
a cut-off training run resumes from its last checkpoint. ``--runs`` must not be shared between presets, nor
between sizes of one preset (a folder refuses a preset whose steps or episode counts changed); more ``--seeds`` or
``--rows`` in a finished folder run only their own units.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from rich.console import Console

from actionprior.study.budget import format_estimate
from actionprior.study.plan import PRESETS, Preset, build_plan, with_rows, with_seeds
from actionprior.study.report import write_report
from actionprior.study.runner import run_units

KINDS = ("collect", "stage1", "analysis", "stage2", "eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m actionprior.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="preset", help="the reduced study")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="preset", help="a wiring check")
    p.add_argument("--runs", type=Path, default=None, help="run folder (default runs/reproduce[-<preset>])")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="Stage 2 training seeds (default: the preset's, or those the run folder was last run with); rerunning "
        "a finished study with more seeds adds only their runs",
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="Stage 2 rows by name or slug, or 'all' (default: the preset's, or those the run folder was last run "
        "with); rows added to a finished study run only their own units",
    )
    p.add_argument("--only", nargs="+", choices=KINDS, help="run only these unit kinds (the rest wait)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from finished units")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print the estimated minutes per unit kind and row, run nothing",
    )
    p.add_argument(
        "--publish",
        type=Path,
        default=None,
        help="copy report.md, figures.json, episodes.csv and the PNGs here",
    )
    p.add_argument(
        "--data", default=None, help="ignored (the study collects its own mixture); kept for make DATA="
    )
    p.set_defaults(preset="full")
    return p


# Preset fields whose change makes a folder's finished units belong to another study.
SIZE_FIELDS = ("rich_episodes", "scarce_episodes", "extra_factor", "stage1_steps", "stage2_steps", "early_step",
               "decay_fraction", "eval_rich_episodes", "scarce_eval_per_task", "probe_steps", "batches_per_epoch",
               "extra_args", "eval_max_steps")  # fmt: skip


def size_changes(stored: dict, preset: Preset) -> list[str]:
    """``field: stored -> now`` for every size of ``preset`` that differs from a run folder's ``preset.json``."""
    now = json.loads(json.dumps(preset.to_dict()))  # tuples as lists, as stored
    return [f"{k}: {stored[k]} -> {now[k]}" for k in SIZE_FIELDS if k in stored and stored[k] != now[k]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    console = Console() if sys.stdout.isatty() else Console(width=140)
    try:
        if args.seeds:
            preset = with_seeds(preset, args.seeds)
        if args.rows:
            preset = with_rows(preset, args.rows)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if args.estimate:
        console.print(format_estimate(preset), highlight=False)
        return 0
    root = args.runs or Path("runs/reproduce" + ("" if preset.name == "full" else f"-{preset.name}"))
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "preset.json"
    stored = json.loads(marker.read_text()) if marker.exists() else None
    if stored and stored.get("name") != preset.name:
        console.print(f"[red]error:[/] {root} holds a '{stored['name']}' study; "
                      f"use another --runs for the '{preset.name}' preset")  # fmt: skip
        return 2
    changed = size_changes(stored, preset) if stored else []
    if changed:
        console.print(f"[red]error:[/] {root} holds a '{preset.name}' study of other sizes ({'; '.join(changed)}); "
                      "its finished units would be mixed with new ones: use another --runs or delete the folder")  # fmt: skip
        return 2
    try:
        if not args.seeds and (stored or {}).get("seeds") and tuple(stored["seeds"]) != preset.seeds:
            preset = with_seeds(preset, stored["seeds"])
        if (
            not args.rows
            and (stored or {}).get("rows")
            and tuple(stored["rows"]) != tuple(r.name for r in preset.row_set)
        ):
            preset = with_rows(preset, stored["rows"])
    except ValueError as exc:
        console.print(f"[red]error:[/] {marker}: {exc}")
        return 2
    marker.write_text(json.dumps(preset.to_dict(), indent=2))
    code = 0
    if not args.report_only:
        summary = run_units(build_plan(root, preset), root, console=console, only_kinds=args.only)
        console.print(
            f"units: {len(summary.done)} run, {len(summary.resumed)} already finished, "
            f"{len(summary.skipped)} skipped, {len(summary.failed)} failed, {len(summary.blocked)} waiting"
        )
        code = 1 if summary.failed else 0
    report = write_report(root, preset)
    console.print(f"report: {report}")
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        for path in [report, root / "figures.json", root / "episodes.csv", *root.glob("*.png")]:
            shutil.copy2(path, args.publish / path.name)
        console.print(f"published to {args.publish}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
