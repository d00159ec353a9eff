"""The paper's ablation table on the simulated suite: no prior / action-only prior / action-state prior /
action-state prior + history, each trained with the same Stage 2 budget and evaluated in closed loop.

Every row is a configuration of the same code (``configs/ablations/*.yaml``). Stage 1 is trained once per
prior kind (action-state, action-only) and shared by the rows that need it; runs that already finished are
resumed (``--ckpt_path last``) rather than retrained, so the script can be interrupted and rerun.

    .venv/bin/python actionprior/study/ablations.py                                  # the CPU defaults (~1 h)
    .venv/bin/python actionprior/study/ablations.py --stage2-steps 1000 --eval-episodes-per-task 5
    make reproduce                                                            # the same
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from actionprior.resources import default_config_arg

# ./configs/<name> from a checkout's root, else actionprior:<name> (the shipped copy)
STAGE1, STAGE2 = default_config_arg("stage1.yaml"), default_config_arg("stage2.yaml")
# row name -> (ablation config, which Stage 1 prior it needs or None)
ROWS = {
    "no prior": (default_config_arg("ablations/no_prior.yaml"), None),
    "action-only prior": (default_config_arg("ablations/action_only_prior.yaml"), "action_only"),
    "action-state prior": (default_config_arg("ablations/action_state_prior.yaml"), "action_state"),
    "+ history": (default_config_arg("ablations/action_state_prior_history.yaml"), "action_state"),
}
PRIORS = {
    "action_state": ["--model.init_args.prior.use_state=true"],
    "action_only": ["--model.init_args.prior.use_state=false"],
}

console = Console()


def run(cmd: list[str]) -> None:
    console.print(f"[cyan]$ {' '.join(cmd)}[/]")
    subprocess.run(cmd, check=True)


def fit(configs: list[str], run_dir: Path, data: str, steps: int | None, *extra: str) -> Path:
    cmd = [sys.executable, "-m", "actionprior.cli", "fit"]
    for config in configs:
        cmd += ["-c", config]
    cmd += [
        f"--data.datasets=[{{path: {data}}}]", f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}", "--trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip
    if steps:
        cmd.append(f"--trainer.max_steps={steps}")
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        cmd.append("--ckpt_path=last")
    run(cmd)
    return last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data_shards/sim-default")
    p.add_argument("--runs", type=Path, default=Path("runs/ablations"))
    p.add_argument("--stage1-steps", type=int, default=None, help="default: configs/stage1.yaml")
    p.add_argument("--stage2-steps", type=int, default=None, help="default: configs/stage2.yaml")
    p.add_argument("--eval-episodes-per-task", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    args = p.parse_args()

    priors: dict[str, Path] = {}
    for needed in sorted({ROWS[r][1] for r in args.rows} - {None}):
        priors[needed] = fit(
            [STAGE1],
            args.runs / f"stage1-{needed}",
            args.data,
            args.stage1_steps,
            *PRIORS[needed],
        )
    reports: dict[str, dict] = {}
    for row in args.rows:
        config, prior = ROWS[row]
        slug = Path(config).stem
        extra = [f"--stage1_ckpt={priors[prior]}"] if prior else []
        ckpt = fit([STAGE2, config], args.runs / slug, args.data, args.stage2_steps, *extra)
        out = args.runs / f"eval-{slug}"
        run([
            sys.executable, "-m", "actionprior.cli", "eval", "--ckpt", str(ckpt), "--suite", "sim-default",
            "--episodes-per-task", str(args.eval_episodes_per_task), "--workers", str(args.workers), "--out", str(out),
        ])  # fmt: skip
        reports[row] = json.loads((out / "report.json").read_text())

    embodiments = sorted({e for r in reports.values() for e in r["per_embodiment"]})
    table = Table(
        title=f"closed-loop success on sim-default ({args.eval_episodes_per_task} episodes per task)"
    )
    table.add_column("embodiment")
    for row in reports:
        table.add_column(row, justify="right")
    for emb in embodiments:
        table.add_row(
            emb, *(f"{100 * r['per_embodiment'][emb]['success_rate']:.0f}" for r in reports.values())
        )
    table.add_row(
        "overall", *(f"{100 * r['overall']['success_rate']:.1f}" for r in reports.values()), style="bold"
    )
    console.print(table)
    summary = {
        row: {"overall": r["overall"], "per_embodiment": r["per_embodiment"]} for row, r in reports.items()
    }
    (args.runs / "ablations.json").write_text(json.dumps(summary, indent=2))
    console.print(f"written: {args.runs / 'ablations.json'}")


if __name__ == "__main__":
    main()
