"""``actionprior demo``: the whole main job on the embedded CPU defaults.

simulated demonstrations -> Stage 1 (action prior) -> Stage 2 (VLA) -> closed-loop evaluation.
Each stage runs as its own ``actionprior`` process (exactly the command a user would type, printed
before it runs), so the demo is also a worked example of the CLI. Stages whose output already exists
are skipped; ``--fresh`` reruns them all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def _run(cmd: list[str]) -> None:
    console.print(f"[bold cyan]$ {shlex.join(cmd)}[/]")
    subprocess.run(cmd, check=True)


def _actionprior(*args: str) -> list[str]:
    return [sys.executable, "-m", "actionprior.cli", *args]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="actionprior demo", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data_shards/sim-default", help="dataset folder (collected if absent)")
    p.add_argument("--runs", default="runs/demo", help="where checkpoints, logs, videos and reports go")
    p.add_argument("--episodes-per-task", type=int, default=20, help="demonstrations collected per task")
    p.add_argument("--eval-episodes-per-task", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stage1-config", default="configs/stage1.yaml")
    p.add_argument("--stage2-config", default="configs/stage2.yaml")
    p.add_argument("--stage1-steps", type=int, default=None, help="override trainer.max_steps of Stage 1")
    p.add_argument("--stage2-steps", type=int, default=None, help="override trainer.max_steps of Stage 2")
    p.add_argument("--fresh", action="store_true", help="rerun every stage even if its output exists")
    return p.parse_args(argv)


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    runs, data = Path(args.runs), Path(args.data)
    if args.fresh and runs.exists():
        shutil.rmtree(runs)
    timings: dict[str, float] = {}

    def stage(name: str, cmd: list[str], done: Path | None) -> None:
        console.rule(f"[bold]{name}")
        if done is not None and done.exists() and not args.fresh:
            console.print(f"[green]skipping: {done} exists[/] (use --fresh to rerun)")
            return
        start = time.perf_counter()
        _run(cmd)
        timings[name] = time.perf_counter() - start

    stage(
        "1/4 simulated demonstrations",
        _actionprior(
            "data",
            "collect",
            "--suite",
            "sim-default",
            "--out",
            str(data),
            "--episodes-per-task",
            str(args.episodes_per_task),
            "--workers",
            str(args.workers),
        ),
        None,  # collection resumes by itself and finishes at once when complete
    )
    stage1_dir = runs / "stage1"
    cmd = _actionprior(
        "fit",
        "-c",
        args.stage1_config,
        f"--data.datasets=[{{path: {data}}}]",
        f"--trainer.default_root_dir={stage1_dir}",
        f"--checkpoint_dir={stage1_dir / 'checkpoints'}",
    )
    if args.stage1_steps:
        cmd.append(f"--trainer.max_steps={args.stage1_steps}")
    stage1_ckpt = stage1_dir / "checkpoints" / "last.ckpt"
    stage("2/4 Stage 1: action prior", cmd, stage1_ckpt)

    stage2_dir = runs / "stage2"
    cmd = _actionprior(
        "fit",
        "-c",
        args.stage2_config,
        f"--data.datasets=[{{path: {data}}}]",
        f"--trainer.default_root_dir={stage2_dir}",
        f"--checkpoint_dir={stage2_dir / 'checkpoints'}",
        f"--stage1_ckpt={stage1_ckpt}",
    )
    if args.stage2_steps:
        cmd.append(f"--trainer.max_steps={args.stage2_steps}")
    stage2_ckpt = stage2_dir / "checkpoints" / "last.ckpt"
    stage("3/4 Stage 2: VLA", cmd, stage2_ckpt)

    eval_dir = runs / "eval"
    stage(
        "4/4 closed-loop evaluation",
        _actionprior(
            "eval",
            "--ckpt",
            str(stage2_ckpt),
            "--suite",
            "sim-default",
            "--episodes-per-task",
            str(args.eval_episodes_per_task),
            "--workers",
            str(args.workers),
            "--out",
            str(eval_dir),
        ),
        None,
    )

    console.rule("[bold]done")
    table = Table(title="stage wall-clock")
    table.add_column("stage")
    table.add_column("minutes", justify="right")
    for name, seconds in timings.items():
        table.add_row(name, f"{seconds / 60:.1f}")
    table.add_row("total", f"{sum(timings.values()) / 60:.1f}", style="bold")
    console.print(table)
    report = eval_dir / "report.json"
    if report.exists():
        summary = json.loads(report.read_text()).get("overall", {})
        console.print(f"overall success: {summary}")
    console.print(
        f"curves: tensorboard --logdir {runs}   videos and report: {eval_dir}   checkpoints: {stage2_ckpt.parent}"
    )
    return 0
