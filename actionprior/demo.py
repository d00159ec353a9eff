"""``actionprior demo``: the whole main job on the embedded CPU defaults.

simulated demonstrations -> Stage 1 (action prior) -> Stage 2 (VLA) -> closed-loop evaluation.
Each stage runs as its own ``actionprior`` process (exactly the command a user would type, printed
before it runs), so the demo is also a worked example of the CLI. An interrupted demo resumes where it
stopped (collection skips finished shards, training resumes from ``last.ckpt``); ``--fresh`` deletes the
runs (not the dataset) and starts over.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from actionprior.resources import default_config_arg

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
    # 10 per task: 5 cannot tell 40 % from 80 %. Seed 500: the episodes docs/policy_quality.md measures on.
    p.add_argument("--eval-episodes-per-task", type=int, default=10)
    p.add_argument("--eval-seed", type=int, default=500, help="base seed of the evaluation episodes")
    p.add_argument("--workers", type=int, default=2)
    # ./configs/stageN.yaml when run from a checkout (or next to a copy of configs/), else the shipped one.
    p.add_argument("--stage1-config", default=default_config_arg("stage1.yaml"))
    p.add_argument("--stage2-config", default=default_config_arg("stage2.yaml"))
    p.add_argument("--stage1-steps", type=int, default=None, help="override trainer.max_steps of Stage 1")
    p.add_argument("--stage2-steps", type=int, default=None, help="override trainer.max_steps of Stage 2")
    p.add_argument("--fresh", action="store_true", help="delete the runs folder first (the dataset is kept)")
    return p.parse_args(argv)


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    runs, data = Path(args.runs), Path(args.data)
    if args.fresh and runs.exists():
        shutil.rmtree(runs)
    timings: dict[str, float] = {}

    def stage(name: str, cmd: list[str]) -> None:
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        _run(cmd)
        timings[name] = time.perf_counter() - start

    def fit(config: str, run_dir: Path, steps: int | None, *extra: str) -> list[str]:
        cmd = _actionprior(
            "fit", "-c", config, f"--data.datasets=[{{path: {data}}}]",
            f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}", *extra,
        )  # fmt: skip
        if steps:
            cmd.append(f"--trainer.max_steps={steps}")
        if (run_dir / "checkpoints" / "last.ckpt").exists():
            cmd.append("--ckpt_path=last")  # an interrupted demo resumes; a finished stage returns at once
        return cmd

    # Collection resumes by itself and returns at once when the dataset is complete.
    stage(
        "1/4 simulated demonstrations",
        _actionprior(
            "data", "collect", "--suite", "sim-default", "--out", str(data),
            "--episodes-per-task", str(args.episodes_per_task), "--workers", str(args.workers),
        ),
    )  # fmt: skip
    stage1_dir, stage2_dir, eval_dir = runs / "stage1", runs / "stage2", runs / "eval"
    stage1_ckpt = stage1_dir / "checkpoints" / "last.ckpt"
    stage2_ckpt = stage2_dir / "checkpoints" / "last.ckpt"
    stage("2/4 Stage 1: action prior", fit(args.stage1_config, stage1_dir, args.stage1_steps))
    stage(
        "3/4 Stage 2: VLA",
        fit(args.stage2_config, stage2_dir, args.stage2_steps, f"--stage1_ckpt={stage1_ckpt}"),
    )
    stage(
        "4/4 closed-loop evaluation",
        _actionprior(
            "eval", "--ckpt", str(stage2_ckpt), "--suite", "sim-default",
            "--episodes-per-task", str(args.eval_episodes_per_task), "--seed", str(args.eval_seed),
            "--workers", str(args.workers),
            "--out", str(eval_dir),
        ),
    )  # fmt: skip

    console.rule("[bold]done")
    table = Table(title="wall-clock per stage")
    table.add_column("stage")
    table.add_column("minutes", justify="right")
    for name, seconds in timings.items():
        table.add_row(name, f"{seconds / 60:.1f}")
    table.add_row("total", f"{sum(timings.values()) / 60:.1f}", style="bold")
    console.print(table)
    console.print(
        f"curves: tensorboard --logdir {runs}\nrollout videos, success chart and report: {eval_dir}\n"
        f"checkpoints: {stage1_ckpt.parent} and {stage2_ckpt.parent}"
    )
    return 0
