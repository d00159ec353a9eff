"""Early Stage 2 training with the action prior versus without (the paper's "8x lower loss, 16x lower grad norm").

Runs two short Stage 2 fits of the same configuration on the same data and seed — one initialised from a
Stage 1 checkpoint (``--stage1_ckpt``, lambda annealed from 1), one with the action head from scratch
(no prior, lambda = 0) — and compares ``L_pred`` and the gradient norms over the first ``--steps`` steps.
With the prior, the total gradient includes the lambda-weighted alignment and reconstruction terms, so
``grad_norm`` is reported for the whole loss as logged during training.

    .venv/bin/python benchmarks/prior_vs_scratch.py --stage1-ckpt runs/demo/stage1/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from actionprior.checkpoint import StoredCheckpoint
from actionprior.resources import default_config_arg
from actionprior.training.configs import settings_dict

TAGS = ("train/pred_loss", "train/grad_norm", "train/grad_norm_backbone", "train/grad_norm_prior")


def scalars(run_dir: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step))
    return out


def fit(args: argparse.Namespace, name: str, stage1_ckpt: str | None) -> dict[str, list[float]]:
    run_dir = args.out / name
    # The scratch decoder gets exactly the prior's architecture (which Stage 2 otherwise reads from it).
    prior = settings_dict(StoredCheckpoint.read(args.stage1_ckpt).prior_config)
    same = [f"--model.init_args.prior.{k}={v}" for k, v in prior.items()]
    baseline = [] if stage1_ckpt else ["-c", default_config_arg("ablations/no_prior.yaml"), *same]
    cmd = [
        sys.executable, "-m", "actionprior.cli", "fit", "-c", args.config, *baseline,
        f"--data.datasets=[{{path: {args.data}}}]",
        f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
        f"--trainer.max_steps={args.steps}", "--trainer.log_every_n_steps=1",
        f"--trainer.val_check_interval={args.steps}", "--data.val_batches=1", "--trainer.enable_progress_bar=false",
        f"--seed_everything={args.seed}",
    ]  # fmt: skip
    if stage1_ckpt:
        cmd.append(f"--stage1_ckpt={stage1_ckpt}")
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return scalars(run_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage1-ckpt", required=True)
    p.add_argument("--data", default="data_shards/sim-default")
    p.add_argument("--config", default=default_config_arg("stage2.yaml"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-prior-vs-scratch"))
    args = p.parse_args()
    runs = {
        "action-state prior": fit(args, "prior", args.stage1_ckpt),
        "no prior": fit(args, "scratch", None),
    }

    table = Table(title=f"first {args.steps} Stage 2 steps ({args.config}, seed {args.seed})")
    table.add_column("metric")
    for name in runs:
        table.add_column(name, justify="right")
    table.add_column("no prior / prior", justify="right")
    rows = [("initial L_pred (step 0)", "train/pred_loss", lambda v: v[0])]
    rows += [(f"mean {tag.removeprefix('train/')}", tag, statistics.fmean) for tag in TAGS]
    for label, tag, reduce in rows:
        values = [reduce(r[tag]) if r.get(tag) else float("nan") for r in runs.values()]
        ratio = values[1] / values[0] if values[0] else float("nan")
        table.add_row(label, *(f"{v:.4g}" for v in values), f"{ratio:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
