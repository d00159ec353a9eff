"""``actionprior eval``: closed-loop evaluation of a checkpoint (or a server, or a baseline) on a suite.

    actionprior eval --ckpt runs/stage2/last.ckpt --suite sim-default --episodes-per-task 10 --workers 2
    actionprior eval --via-server ws://127.0.0.1:8765 --suite sim-default --episodes-per-task 5
    actionprior eval --baseline random --suite sim-default --episodes-per-task 5
    actionprior eval --ckpt runs/stage2/last.ckpt --execution rtc --replan-every 8 --delay-steps 2

Writes ``report.json``, ``success.png``, ``smoothness.png``, ``videos/*.gif`` and TensorBoard events into
``--out`` and prints the success and smoothness table. ``--execution`` picks how chunks are executed and
``--delay-steps d`` simulates inference latency: the environment advances ``d`` control steps while a chunk is
computed, the previous chunk's actions continuing (:mod:`actionprior.inference.execution`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from actionprior.evaluation.report import print_table, write_all
from actionprior.evaluation.rollout import (
    CheckpointPolicyFactory,
    EpisodeResult,
    ServerPolicyFactory,
    SimEnvFactory,
    make_jobs,
    run_rollouts,
)
from actionprior.inference.base import RandomPolicy
from actionprior.inference.execution import (
    EXECUTION_OPTIONS,
    ExecutionConfig,
    add_execution_arguments,
    execution_from_args,
)
from actionprior.inference.observation import ObservationSpec
from actionprior.progress import progress_bar


class EvaluationError(ValueError):
    """The policy and the suite do not fit together (embodiments, cameras), or arguments conflict."""


@dataclass(frozen=True)
class RandomBaselineFactory:
    """Uniform actions in [-1, 1] (the simulators' action range) for the suite's embodiments."""

    embodiments: tuple[str, ...]
    seed: int = 0
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def __call__(self) -> RandomPolicy:
        from actionprior.embodiments import EmbodimentRegistry

        registry = EmbodimentRegistry.from_dir(names=self.embodiments)
        return RandomPolicy(ObservationSpec(registry, (), None), seed=self.seed, execution=self.execution)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actionprior eval", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--ckpt", help="Stage 2 checkpoint, exported policy folder or hub id (loaded in every worker)"
    )
    src.add_argument(
        "--via-server", metavar="URL", help="evaluate the policy served at URL (actionprior serve)"
    )
    src.add_argument("--baseline", choices=["random"], help="a reference policy instead of a checkpoint")
    p.add_argument("--suite", default="sim-default", help="suite name (configs/suites/) or YAML path")
    p.add_argument(
        "--only",
        action="extend",
        nargs="+",
        default=None,
        metavar="EMBODIMENT[/TASK]",
        help="evaluate only these suite entries (several after one flag, or the flag repeated)",
    )
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes (0 = in this process)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/eval/<suite>-<time>)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the episodes")
    p.add_argument("--max-steps", type=int, default=None, help="override the suite's per-task step limit")
    p.add_argument(
        "--replan-every",
        type=int,
        default=None,
        help="steps between chunks (default: the chunk length for replan, 1 for ensemble, half the chunk for rtc)",
    )
    p.add_argument("--sample-steps", type=int, default=None, help="Euler steps of the flow decoder")
    add_execution_arguments(p)
    p.add_argument("--image-size", type=int, default=None, help="if the checkpoint does not record it")
    p.add_argument("--history-len", type=int, default=None, help="if the checkpoint does not record it")
    p.add_argument(
        "--stats",
        default=None,
        help="a dataset's stats.json (or folder) whose statistics the checkpoint must have been trained "
        "with, or a fingerprint: the checkpoint's normalisation fingerprint or the `fingerprint` field of "
        "that stats.json",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--videos-per-task", type=int, default=1)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--no-tensorboard", action="store_true")
    return p


def _policy_setup(args: argparse.Namespace, embodiments: list[str]) -> tuple[Any, dict[str, Any]]:
    """(picklable policy factory, description with cameras per embodiment and image size)."""
    if args.delay_steps < 0:
        raise EvaluationError(f"--delay-steps must be >= 0, got {args.delay_steps}")
    try:
        execution = execution_from_args(args)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    if args.ckpt:
        factory = CheckpointPolicyFactory(
            args.ckpt,
            args.device,
            args.replan_every,
            args.sample_steps,
            args.stats,
            args.image_size,
            args.history_len,
            execution,
        )
        try:
            info = factory().describe()  # loads once here: a bad checkpoint fails before any worker starts
        except ValueError as exc:  # settings that do not fit the checkpoint (replan_every, delay, ...)
            raise EvaluationError(f"{args.ckpt}: {exc}") from None
    elif args.via_server:
        given = [
            f"--{name.replace('_', '-')}" for name in EXECUTION_OPTIONS if getattr(args, name) is not None
        ]
        if given or args.replan_every is not None:
            raise EvaluationError(
                f"{' '.join(given + (['--replan-every'] if args.replan_every is not None else []))} "
                "cannot change a served policy: it executes chunks as `actionprior serve` was told "
                "(--execution, --replan-every there); --delay-steps works here"
            )
        factory = ServerPolicyFactory(args.via_server, delay_steps=args.delay_steps or None)
        client = factory()
        try:
            info = client.info()
        finally:
            client.close()
    else:
        factory = RandomBaselineFactory(tuple(embodiments), args.seed, execution)
        info = factory().describe()
    return factory, info


def _cameras(info: dict[str, Any], embodiments: list[str]) -> dict[str, tuple[str, ...]]:
    known = info["embodiments"]
    missing = [e for e in embodiments if e not in known]
    if missing:
        raise EvaluationError(
            f"the policy does not control embodiments {missing} of the suite; it knows {sorted(known)}. "
            "Restrict the suite with --only"
        )
    return {e: tuple(known[e]["cameras"]) for e in embodiments}


def cli_main(argv: Sequence[str] | None = None) -> int:
    from actionprior.embodiments import EmbodimentRegistry
    from actionprior.sim import load_suite

    args = build_parser().parse_args(argv)
    if args.episodes_per_task < 1:
        raise EvaluationError("--episodes-per-task must be >= 1")
    console = Console()
    full_suite = load_suite(args.suite)
    suite = full_suite.select(args.only)
    embodiments = suite.embodiments
    factory, info = _policy_setup(args, embodiments)
    policy_cameras = _cameras(info, embodiments)
    image_size = info.get("image_size") or args.image_size or 64
    # The simulator renders the policy's cameras; a policy without cameras still gets one for the videos.
    registry = EmbodimentRegistry.from_dir(names=embodiments)
    render = {e: policy_cameras[e] or tuple(registry[e].cameras[:1]) for e in embodiments}
    entries = [(t.embodiment, t.task, args.max_steps or t.max_steps) for t in suite.tasks]
    grippers = {e: tuple(registry[e].gripper_action_dims) for e in embodiments}
    jobs = make_jobs(
        entries,
        args.episodes_per_task,
        policy_cameras,
        args.seed,
        args.videos_per_task,
        gripper_dims=grippers,
        # A task's episodes do not depend on --only: the same seeds as in the full suite.
        slots=[full_suite.tasks.index(t) for t in suite.tasks],
    )
    env_factory = SimEnvFactory(image_size, render, suite=str(args.suite))
    out = args.out or Path("runs/eval") / f"{Path(str(args.suite)).stem}-{time.strftime('%Y%m%d-%H%M%S')}"

    source = args.ckpt or args.via_server or f"baseline:{args.baseline}"
    execution = info.get("execution") or {}
    console.print(
        f"evaluating [bold]{source}[/] on {len(suite.tasks)} tasks x {args.episodes_per_task} episodes "
        f"with {args.workers} workers (image {image_size}px, {execution.get('mode', 'replan')} execution, "
        f"a chunk every {info.get('replan_every')} steps, delay {args.delay_steps} steps)"
    )
    results = _run_with_progress(jobs, factory, env_factory, args.workers, console)
    meta = {
        "source": source,
        "suite": str(args.suite),
        "episodes_per_task": args.episodes_per_task,
        "seed": args.seed,
        "workers": args.workers,
        "image_size": image_size,
        "delay_steps": args.delay_steps,
        "policy": info,
    }
    report = write_all(results, out, meta, args.fps, tensorboard=not args.no_tensorboard)
    print_table(report, console)
    console.print(
        f"report: {out / 'report.json'}\ncharts: {report['artifacts']['chart']}, "
        f"{report['artifacts']['smoothness_chart']}"
    )
    console.print(f"videos: {out / 'videos'} ({len(report['artifacts']['videos'])} GIFs)")
    if "tensorboard" in report["artifacts"]:
        console.print(f"tensorboard --logdir {report['artifacts']['tensorboard']}")
    return 0


def _run_with_progress(jobs, factory, env_factory, workers: int, console: Console) -> list[EpisodeResult]:
    successes: list[bool] = []
    with progress_bar(console) as progress:
        bar = progress.add_task("episodes", total=len(jobs))

        def on_result(r: EpisodeResult) -> None:
            successes.append(r.success)
            rate = 100 * float(np.mean(successes))
            progress.update(bar, advance=1, description=f"episodes (success {rate:.0f}%)")

        return run_rollouts(jobs, factory, env_factory, workers, on_result)
