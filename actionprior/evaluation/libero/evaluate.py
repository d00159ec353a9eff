"""``actionprior eval-libero``: a served policy on a LIBERO suite, by LIBERO's standard protocol.

    actionprior serve --ckpt runs/stage2/last.ckpt --port 8765 &
    actionprior eval-libero --suite libero_spatial --server ws://127.0.0.1:8765 --workers 4 --out runs/libero/spatial

LIBERO runs in its own virtualenv (``make libero-env``; ``--libero-python`` or ``$ACTIONPRIOR_LIBERO_PYTHON``
picks another): this command checks the server, starts ``--workers`` runner processes there
(:mod:`actionprior.evaluation.libero.runner`), each with a contiguous block of the episodes still to run, and
writes ``report.json`` (per task and for the suite, with 95 % Wilson intervals), ``success.png`` and the runners'
GIFs into ``--out``. Run it again with the same ``--out`` to resume: finished episodes are kept.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actionprior.evaluation.libero.episodes import (
    EpisodeKey,
    format_jobs,
    next_launch,
    parse_tasks,
    pending,
    plan,
    read_finished,
    record_file,
    split,
)
from actionprior.evaluation.libero.mapping import (
    ACTION_DIM,
    DEFAULT_RENDER_SIZE,
    EMBODIMENT,
    INIT_STATES_PER_TASK,
    STATE_DIM,
    SUITE_MAX_STEPS,
    SUITES,
    WARMUP_STEPS,
    check_cameras,
)
from actionprior.evaluation.rollout import EpisodeResult
from actionprior.intervals import wilson_bounds

LIBERO_PYTHON_ENV = "ACTIONPRIOR_LIBERO_PYTHON"
REPO = Path(__file__).resolve().parents[3]
DEFAULT_LIBERO_VENV = REPO / ".venv-libero"


class LiberoEvalError(ValueError):
    """The LIBERO environment, the server or the arguments do not allow the evaluation; one line says why."""


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of ``successes / n`` (``(0, 1)`` for no episodes)."""
    return wilson_bounds(successes / n if n > 0 else 0.0, n)


def libero_python(given: str | None) -> Path:
    path = Path(given or os.environ.get(LIBERO_PYTHON_ENV) or DEFAULT_LIBERO_VENV / "bin" / "python")
    if not path.is_file():
        raise LiberoEvalError(
            f"no LIBERO environment at {path}: run `make libero-env` (scripts/libero_env.sh), or point "
            f"--libero-python / ${LIBERO_PYTHON_ENV} at the python of one"
        )
    return path


def runner_env(python: Path) -> dict[str, str]:
    """The runner's environment: this checkout's actionprior first on the path (so both sides run the same code),
    headless rendering, and the LIBERO config the setup script wrote beside its venv (nothing prompts)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    config = python.resolve().parent.parent / "libero-config"
    if (config / "config.yaml").is_file():
        env.setdefault("LIBERO_CONFIG_PATH", str(config))
    return env


def check_server(url: str) -> dict[str, Any]:
    """The server's ``info``, refused unless it serves ``libero_panda`` with LIBERO's dims and cameras."""
    from actionprior.inference.client import PolicyClient

    with PolicyClient(url) as client:
        info = client.info()
    spec = (info.get("embodiments") or {}).get(EMBODIMENT)
    if spec is None:
        raise LiberoEvalError(
            f"the policy at {url} does not control '{EMBODIMENT}' (it knows {sorted(info.get('embodiments') or {})}); "
            f"train on LIBERO data imported with --spec configs/embodiments/{EMBODIMENT}.yaml"
        )
    dims = (spec.get("state_dim"), spec.get("action_dim"))
    if dims != (STATE_DIM, ACTION_DIM):
        raise LiberoEvalError(
            f"the policy's '{EMBODIMENT}' has state/action dims {dims[0]}/{dims[1]}; LIBERO gives {STATE_DIM}/{ACTION_DIM}"
        )
    check_cameras(spec.get("cameras") or ())
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actionprior eval-libero", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", required=True, choices=SUITES)
    p.add_argument("--server", required=True, metavar="URL", help="ws://host:port of `actionprior serve`")
    p.add_argument(
        "--episodes", type=int, default=INIT_STATES_PER_TASK, help="per task: its first N init states"
    )
    p.add_argument("--tasks", default=None, help="task ids, e.g. 0,3,5-7 (default: all 10)")
    p.add_argument(
        "--workers", type=int, default=1, help="runner processes (each renders its own environment)"
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/libero/<suite>-<time>)")
    p.add_argument("--max-steps", type=int, default=None, help="default: 220/280/300/520 by suite")
    p.add_argument(
        "--warmup-steps", type=int, default=WARMUP_STEPS, help="no-op steps before the policy acts"
    )
    p.add_argument("--render-size", type=int, default=DEFAULT_RENDER_SIZE, help="camera pixels (square)")
    p.add_argument("--seed", type=int, default=7, help="environment seed")
    p.add_argument("--videos-per-task", type=int, default=1)
    p.add_argument(
        "--libero-python", default=None, help=f"python of the LIBERO venv (default {DEFAULT_LIBERO_VENV})"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one server reply")
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1 or args.warmup_steps < 0 or args.render_size < 16:
        raise LiberoEvalError("--workers must be >= 1, --warmup-steps >= 0 and --render-size >= 16")
    if args.max_steps is not None and args.max_steps < 1:
        raise LiberoEvalError("--max-steps must be >= 1")
    python = libero_python(args.libero_python)
    planned = plan(parse_tasks(args.tasks), args.episodes)
    out: Path = args.out or Path("runs/libero") / f"{args.suite}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = {
        "suite": args.suite,
        "max_steps": args.max_steps or SUITE_MAX_STEPS[args.suite],
        "warmup_steps": args.warmup_steps,
        "render_size": args.render_size,
        "seed": args.seed,
    }
    finished = read_finished(out, settings)
    todo = pending(planned, finished)
    info = check_server(args.server)
    print(
        f"LIBERO {args.suite}: {len(planned)} episodes planned, {len(planned) - len(todo)} already finished in "
        f"{out}, {len(todo)} to run on {args.workers} workers (max {settings['max_steps']} steps, "
        f"{args.warmup_steps} warm-up, {args.render_size} px)",
        flush=True,
    )
    if todo:
        run_workers(python, todo, args, settings, out)
        finished = read_finished(out, settings)
    missing = pending(planned, finished)
    if missing:
        raise LiberoEvalError(
            f"{len(missing)} episodes did not finish (first: task {missing[0].task_id} "
            f"episode {missing[0].episode}); run the same command again to resume"
        )
    report = write_report(
        [finished[k] for k in planned], out, {**settings, "server": args.server, "policy": info}
    )
    print_summary(report)
    print(f"report: {out / 'report.json'}")
    return 0


def run_workers(
    python: Path, todo: list[EpisodeKey], args: argparse.Namespace, settings: dict, out: Path
) -> None:
    launch = next_launch(out)
    env = runner_env(python)
    procs = []
    for worker, block in enumerate(split(todo, args.workers)):
        log = out / "logs" / f"launch{launch:03d}-w{worker:02d}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(python), "-m", "actionprior.evaluation.libero.runner",
            "--suite", args.suite, "--server", args.server, "--jobs", format_jobs(block),
            "--out", str(record_file(out, launch, worker)),
            "--max-steps", str(settings["max_steps"]), "--warmup-steps", str(args.warmup_steps),
            "--render-size", str(args.render_size), "--seed", str(args.seed),
            "--video-dir", str(out / "videos"), "--videos-per-task", str(args.videos_per_task),
            "--timeout", str(args.timeout),
        ]  # fmt: skip
        handle = log.open("w")
        procs.append(
            (worker, log, handle, subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT))
        )
    failed = []
    try:
        done = 0
        while any(p.poll() is None for *_, p in procs):
            time.sleep(2.0)
            now = len(read_finished(out, settings))
            if now != done:
                done = now
                print(f"  {done} episodes finished", flush=True)
    except KeyboardInterrupt:
        for *_, p in procs:
            p.terminate()
        raise
    finally:
        for worker, log, handle, p in procs:
            handle.close()
            if p.wait() != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                failed.append(f"worker {worker} exited with {p.returncode}: {tail[0][:500]} (log: {log})")
    if failed:
        raise LiberoEvalError("; ".join(failed))


def results_from_records(records: Sequence[dict[str, Any]]) -> list[EpisodeResult]:
    """Our report's episode type: the suite takes the embodiment column, ``<id>_<task name>`` the task column."""
    return [
        EpisodeResult(
            embodiment=r["suite"],
            task=f"{r['task_id']:02d}_{r['task']}",
            episode=r["episode"],
            seed=r["seed"],
            success=r["success"],
            steps=r["steps"],
            wall_s=float(r["wall_s"]),
            act_ms_mean=float(r["act_ms"]),
            replans=r["replans"],
            instruction=r["instruction"],
            rms_jerk=r.get("rms_jerk"),
            max_boundary_jump=r.get("max_boundary_jump"),
            action_tv=r.get("action_tv"),
            action_units="raw",
        )
        for r in records
    ]


def libero_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per task and for the suite: successes, episodes, rate, 95 % Wilson interval, seconds per env step."""
    by_task: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_task.setdefault(r["task_id"], []).append(r)

    def group(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        k, n = sum(r["success"] for r in rs), len(rs)
        steps = sum(r["steps"] for r in rs)
        return {
            "successes": k,
            "episodes": n,
            "success_rate": k / n if n else 0.0,
            "wilson95": list(wilson(k, n)),
            "env_step_ms": sum(r["env_step_ms"] * r["steps"] for r in rs) / max(steps, 1),
            "act_ms": sum(r["act_ms"] * r["steps"] for r in rs) / max(steps, 1),
        }

    return {
        "suite": records[0]["suite"] if records else None,
        "per_task": [
            {"task_id": t, "task": rs[0]["task"], "instruction": rs[0]["instruction"], **group(rs)}
            for t, rs in sorted(by_task.items())
        ],
        "suite_total": group(records),
    }


def write_report(records: Sequence[dict[str, Any]], out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from actionprior.evaluation.report import aggregate, success_chart, write_json

    report = aggregate(results_from_records(records), {**meta, "protocol": "libero"})
    report["libero"] = libero_summary(records)
    report["artifacts"] = {
        "chart": str(success_chart(report, out / "success.png")),
        "videos": sorted(str(r["video"]) for r in records if r.get("video")),
    }
    write_json(report, out / "report.json")
    return report


def print_summary(report: dict[str, Any]) -> None:
    summary = report["libero"]
    for row in summary["per_task"]:
        lo, hi = row["wilson95"]
        print(
            f"  {row['task_id']:2d} {row['task'][:70]:70s} {row['successes']:3d}/{row['episodes']:<3d} "
            f"{100 * row['success_rate']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
        )
    total = summary["suite_total"]
    lo, hi = total["wilson95"]
    print(
        f"  {summary['suite']}: {total['successes']}/{total['episodes']} = {100 * total['success_rate']:.1f}% "
        f"[{100 * lo:.1f}, {100 * hi:.1f}] (95 % Wilson); {total['env_step_ms']:.0f} ms per env step, "
        f"{total['act_ms']:.0f} ms per act"
    )


if __name__ == "__main__":
    sys.exit(cli_main())
