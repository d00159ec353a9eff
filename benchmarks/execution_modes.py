"""Success and smoothness of every execution mode under simulated inference delay, on one checkpoint.

Runs ``actionprior eval`` for each execution mode (replan, ensemble, rtc) and each delay ``d`` (default 0, 2,
4, 8 control steps) on the same episodes (same seeds), then writes ``summary.md`` / ``summary.json`` (success
with 95 % Wilson intervals, RMS jerk, largest chunk-boundary jump, total variation, and the issue's goals
checked with paired intervals), ``success_vs_delay.png`` and ``smoothness_vs_delay.png`` into ``--out``.

    python -m benchmarks.execution_modes --ckpt runs/demo/stage2/checkpoints/last.ckpt --episodes-per-task 10
    python -m benchmarks.execution_modes --ckpt ... --out runs/execution_modes --report-only   # tables again

Each cell is one ``actionprior eval`` run in ``<out>/<mode>-d<d>/`` (the command is printed before it runs);
a cell whose ``report.json`` exists with the same settings is not run again, so an interrupted benchmark
resumes. ``replan`` and ``rtc`` request a chunk every ``--replan-every`` steps (the executed horizon ``s``),
``ensemble`` every ``--ensemble-every`` steps (ACT: every step); with a delay longer than that, chunks are
requested back to back. Every cell needs ``max(replan_every, d) + d <= chunk_len``.
Needs matplotlib for the plots (``pip install .[study]``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from actionprior.evaluation.smoothness import SMOOTHNESS_KEYS
from actionprior.study.stats import Interval, wilson
from benchmarks.policy_quality import Row, difference, outcome_arrays

MODES = ("replan", "ensemble", "rtc")
DEFAULT_DELAYS = (0, 2, 4, 8)
console = Console()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="Stage 2 checkpoint or exported policy folder")
    p.add_argument("--out", type=Path, default=Path("runs/execution_modes"))
    p.add_argument("--suite", default="sim-default")
    p.add_argument("--only", nargs="+", default=None, metavar="EMBODIMENT[/TASK]")
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--delays", type=int, nargs="+", default=list(DEFAULT_DELAYS))
    p.add_argument("--replan-every", type=int, default=8, help="executed horizon s of replan and rtc")
    p.add_argument("--ensemble-every", type=int, default=1, help="steps between chunks of ensemble")
    p.add_argument("--ensemble-decay", type=float, default=None)
    p.add_argument("--rtc-max-guidance", type=float, default=None)
    p.add_argument(
        "--rtc-vjp", action=argparse.BooleanOptionalAction, default=None, help="see actionprior eval"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-steps", type=int, default=None, help="override the suite's step limits (quick runs)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--videos-per-task", type=int, default=0)
    p.add_argument("--report-only", action="store_true", help="summarise the cells already run")
    return p.parse_args(argv)


def cell_dir(out: Path, mode: str, delay: int) -> Path:
    return out / f"{mode}-d{delay}"


def eval_argv(args: argparse.Namespace, mode: str, delay: int) -> list[str]:
    every = args.ensemble_every if mode == "ensemble" else args.replan_every
    argv = ["--ckpt", str(args.ckpt), "--suite", str(args.suite), "--execution", mode]
    argv += ["--replan-every", str(every), "--delay-steps", str(delay)]
    argv += ["--episodes-per-task", str(args.episodes_per_task), "--workers", str(args.workers)]
    argv += [
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--videos-per-task",
        str(args.videos_per_task),
    ]
    argv += ["--out", str(cell_dir(args.out, mode, delay))]
    if args.only:
        argv += ["--only", *args.only]
    if args.max_steps:
        argv += ["--max-steps", str(args.max_steps)]
    if mode == "ensemble" and args.ensemble_decay is not None:
        argv += ["--ensemble-decay", str(args.ensemble_decay)]
    if mode == "rtc" and args.rtc_max_guidance is not None:
        argv += ["--rtc-max-guidance", str(args.rtc_max_guidance)]
    if mode == "rtc" and args.rtc_vjp is not None:
        argv += ["--rtc-vjp" if args.rtc_vjp else "--no-rtc-vjp"]
    return argv


def _settings(argv: list[str]) -> list[str]:
    """The arguments that define a cell's result (not where it is written or how many workers run it)."""
    skip = {"--out", "--workers"}
    kept, i = [], 0
    while i < len(argv):
        if argv[i] in skip:
            i += 2
            continue
        kept.append(argv[i])
        i += 1
    return kept


def run_cell(args: argparse.Namespace, mode: str, delay: int) -> dict[str, Any]:
    from actionprior.evaluation.evaluate import cli_main

    folder = cell_dir(args.out, mode, delay)
    argv = eval_argv(args, mode, delay)
    done = folder / "report.json"
    stamp = folder / "benchmark_args.json"
    if done.exists() and stamp.exists() and json.loads(stamp.read_text()) == _settings(argv):
        console.print(f"[dim]{mode} d={delay}: done before ({done})[/]")
        return json.loads(done.read_text())
    if args.report_only:
        raise SystemExit(f"{done} is missing or was run with other settings; run without --report-only")
    console.rule(f"[bold]{mode}, delay {delay}")
    console.print(f"[bold cyan]$ actionprior eval {shlex.join(argv)}[/]")
    cli_main(argv)
    stamp.write_text(json.dumps(_settings(argv)))
    return json.loads(done.read_text())


def paired_diff(treatment: dict[str, Any], control: dict[str, Any]) -> Interval:
    """Per-task-mean success of ``treatment`` minus ``control`` on the same episodes (the study's paired contrast)."""
    _, arrays = outcome_arrays([Row("treatment", None, [treatment]), Row("control", None, [control])])
    return difference(arrays, 0, base=1)


def summarise(args: argparse.Namespace, reports: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for (mode, delay), rep in sorted(reports.items(), key=lambda kv: (MODES.index(kv[0][0]), kv[0][1])):
        o = rep["overall"]
        interval = wilson(o["successes"], o["episodes"])
        rows.append(
            {
                "mode": mode,
                "delay_steps": delay,
                "replan_every": rep["meta"]["policy"]["replan_every"],
                "successes": o["successes"],
                "episodes": o["episodes"],
                "success": interval.to_dict(),
                **{key: o.get(key) for key in SMOOTHNESS_KEYS},
                "mean_act_ms": o["mean_act_ms"],
                "per_task": [
                    {k: t[k] for k in ("embodiment", "task", "successes", "episodes", *SMOOTHNESS_KEYS)}
                    for t in rep["per_task"]
                ],
            }
        )
    units = {rep.get("action_units", "raw") for rep in reports.values()}
    return {
        "ckpt": str(args.ckpt),
        "suite": str(args.suite),
        "episodes_per_task": args.episodes_per_task,
        "replan_every": args.replan_every,
        "ensemble_every": args.ensemble_every,
        "action_units": ", ".join(sorted(units)),
        "rows": rows,
        "goals": goals(args, reports),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def goals(args: argparse.Namespace, reports: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, each with the figures that decide it (paired intervals over the shared episodes)."""
    out: list[dict[str, Any]] = []
    base = reports.get(("replan", 0))
    s = args.replan_every
    for delay in args.delays:
        rtc, replan_d = reports.get(("rtc", delay)), reports.get(("replan", delay))
        if rtc is None or base is None or replan_d is None:
            continue
        vs_d0 = paired_diff(rtc, base)
        vs_same = paired_diff(rtc, replan_d)
        jump = _ratio(replan_d["overall"].get("max_boundary_jump"), rtc["overall"].get("max_boundary_jump"))
        out.append(
            {
                "goal": f"rtc at d={delay} ({100 * delay / s:.0f} % of s={s})",
                "in_goal_range": 0.25 <= delay / s <= 0.40,
                "rtc_minus_replan_d0": vs_d0.to_dict(),
                "rtc_minus_replan_same_d": vs_same.to_dict(),
                "boundary_jump_replan_over_rtc": jump,
                "met": bool(vs_d0.estimate >= -0.05 and vs_same.estimate >= 0 and (jump or 0) >= 3),
            }
        )
    if base is not None:
        for mode in ("ensemble", "rtc"):
            rep = reports.get((mode, 0))
            if rep is None:
                continue
            diff = paired_diff(rep, base)
            jerk = _ratio(base["overall"].get("rms_jerk"), rep["overall"].get("rms_jerk"))
            out.append(
                {
                    "goal": f"{mode} lowers RMS jerk >= 2x against replan at d=0, at equal success",
                    "success_minus_replan": diff.to_dict(),
                    "rms_jerk_replan_over_mode": jerk,
                    # "equal" = not shown worse: a mode whose success is shown higher meets it too
                    "not_worse": bool(diff.high >= 0),
                    "met": bool((jerk or 0) >= 2 and diff.high >= 0),
                }
            )
    return out


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def markdown(summary: dict[str, Any], command: str) -> str:
    lines = [
        f"# Execution modes on `{summary['ckpt']}`",
        "",
        f"{summary['suite']}, {summary['episodes_per_task']} episodes per task (the same seeds in every cell); "
        f"replan and rtc: a chunk every {summary['replan_every']} steps, ensemble: every "
        f"{summary['ensemble_every']}; smoothness per control step in {summary['action_units']} action units, "
        "gripper dims left out, mean over episodes.",
        "",
        f"    {command}",
        "",
        "| mode | delay | success [95 % CI] | RMS jerk | max boundary jump | TV/step | act ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        ci = r["success"]
        lines.append(
            f"| {r['mode']} | {r['delay_steps']} | {r['successes']}/{r['episodes']} = {100 * ci['estimate']:.1f} "
            f"[{100 * ci['low']:.1f}, {100 * ci['high']:.1f}] | {_fmt(r['rms_jerk'])} | "
            f"{_fmt(r['max_boundary_jump'])} | {_fmt(r['action_tv'])} | {r['mean_act_ms']:.1f} |"
        )
    lines += ["", "## Goals", "", "| goal | figures | met |", "|---|---|---|"]
    for g in summary["goals"]:
        if "rtc_minus_replan_d0" in g:
            a, b = g["rtc_minus_replan_d0"], g["rtc_minus_replan_same_d"]
            figures = (
                f"rtc − replan(d=0) = {100 * a['estimate']:+.1f} [{100 * a['low']:+.1f}, {100 * a['high']:+.1f}]; "
                f"rtc − replan(same d) = {100 * b['estimate']:+.1f} [{100 * b['low']:+.1f}, {100 * b['high']:+.1f}]; "
                f"boundary jump replan/rtc = {_fmt(g['boundary_jump_replan_over_rtc'], '.2f')}×"
                + ("" if g["in_goal_range"] else " (d outside 25–40 % of s)")
            )
        else:
            d = g["success_minus_replan"]
            figures = (
                f"success − replan = {100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]; "
                f"RMS jerk replan/mode = {_fmt(g['rms_jerk_replan_over_mode'], '.2f')}×"
            )
        lines.append(f"| {g['goal']} | {figures} | {'yes' if g['met'] else 'no'} |")
    lines += [
        "",
        "![success vs delay](success_vs_delay.png)",
        "![smoothness vs delay](smoothness_vs_delay.png)",
    ]
    return "\n".join(lines) + "\n"


def plots(summary: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_mode: dict[str, list[dict[str, Any]]] = {}
    for r in summary["rows"]:
        by_mode.setdefault(r["mode"], []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (mode, rows) in enumerate(by_mode.items()):
        d = [r["delay_steps"] + 0.08 * (i - 1) for r in rows]  # offset so that the error bars do not overlap
        est = [100 * r["success"]["estimate"] for r in rows]
        low = [100 * (r["success"]["estimate"] - r["success"]["low"]) for r in rows]
        high = [100 * (r["success"]["high"] - r["success"]["estimate"]) for r in rows]
        ax.errorbar(d, est, yerr=[low, high], marker="o", capsize=3, label=mode)
    ax.set_xlabel("inference delay (control steps)")
    ax.set_ylabel("success rate (%), 95 % Wilson interval")
    ax.set_xticks(sorted({r["delay_steps"] for r in summary["rows"]}))
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    success = out / "success_vs_delay.png"
    fig.savefig(success, dpi=110)
    plt.close(fig)

    labels = {"rms_jerk": "RMS jerk", "max_boundary_jump": "max boundary jump", "action_tv": "TV per step"}
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 3.8))
    for ax, (key, label) in zip(axes, labels.items(), strict=True):
        for mode, rows in by_mode.items():
            pts = [(r["delay_steps"], r[key]) for r in rows if r[key] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=mode)
        ax.set_xlabel("inference delay (control steps)")
        ax.set_xticks(sorted({r["delay_steps"] for r in summary["rows"]}))
        ax.set_ylabel(f"{label} ({summary['action_units']})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    smooth = out / "smoothness_vs_delay.png"
    fig.savefig(smooth, dpi=110)
    plt.close(fig)
    return [success, smooth]


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"execution modes ({summary['action_units']} action units)")
    for col in ("mode", "delay", "success", "95 % CI", "RMS jerk", "max jump", "TV/step"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in summary["rows"]:
        ci = r["success"]
        table.add_row(
            r["mode"],
            str(r["delay_steps"]),
            f"{r['successes']}/{r['episodes']}",
            f"{100 * ci['low']:.0f}–{100 * ci['high']:.0f} %",
            _fmt(r["rms_jerk"]),
            _fmt(r["max_boundary_jump"]),
            _fmt(r["action_tv"]),
        )
    console.print(table)
    for g in summary["goals"]:
        console.print(f"{'[green]met[/]' if g['met'] else '[red]not met[/]'}: {g['goal']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.report_only:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # fail before an hour of rollouts, not after
            raise SystemExit("the plots need matplotlib: pip install .[study]")
    args.out.mkdir(parents=True, exist_ok=True)
    reports = {(m, d): run_cell(args, m, d) for m in args.modes for d in args.delays}
    summary = summarise(args, reports)
    command = "python -m benchmarks.execution_modes " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(markdown(summary, command))
    summary["plots"] = [str(p) for p in plots(summary, args.out)]
    print_summary(summary)
    console.print(f"summary: {args.out / 'summary.md'}; plots: {', '.join(summary['plots'])}")
    return summary


if __name__ == "__main__":
    main()
