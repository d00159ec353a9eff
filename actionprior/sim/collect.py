"""Scripted-expert demonstration collection: ``actionprior data collect``.

Work is cut into deterministic *units*, one per shard: unit ``u`` of a (embodiment, task) entry aims for
``shard_episodes`` successful demonstrations and tries attempts ``0, 1, ...`` (at most ``2 * target + 2``),
each with a seed derived from (base seed, embodiment, task, unit, attempt). Units run in parallel worker
processes; the parent process alone writes shards, so the manifest has a single writer. Re-running skips
the units whose shard the manifest already lists, and produces identical arrays for the same seed.
Only successful demonstrations are kept; failures are counted in the manifest's ``collection`` records.

``--no-images`` collects state-action trajectories only: no camera is rendered (the costly part of a robosuite
step) and only ``traj-*.tar`` shards are written; the manifest says ``"views": ["trajectory"]``, so Stage 1
can mix the dataset in and Stage 2 refuses it by name.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import queue as queue_lib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from actionprior.data.images import ImageFit
from actionprior.data.schema import DataError, Episode
from actionprior.data.video_frames import VideoSettings, add_frame_arguments, video_settings_from_args
from actionprior.data.writer import DatasetWriter
from actionprior.embodiments import DEFAULT_EMBODIMENT_DIR, EmbodimentRegistry
from actionprior.process import exit_with_parent
from actionprior.progress import progress_bar
from actionprior.sim.base import SimEnv, SimError, ensure_gl_backend
from actionprior.sim.suite import DEFAULT_SUITE, Suite, SuiteError, load_suite

DEFAULT_SHARD_EPISODES = 10


def episode_seed(base_seed: int, embodiment: str, task: str, unit: int, attempt: int) -> int:
    """A per-attempt seed, stable across runs, platforms and worker counts (no Python ``hash``)."""
    digest = hashlib.sha256(f"{base_seed}:{embodiment}:{task}:{unit}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Unit:
    """One shard's worth of work: up to ``target`` successful demonstrations of one suite entry."""

    embodiment: str
    task: str
    index: int
    target: int

    @property
    def name(self) -> str:
        return f"{self.embodiment}_{self.task}_{self.index:04d}"

    @property
    def max_attempts(self) -> int:
        return 2 * self.target + 2


@dataclass
class UnitResult:
    unit: Unit
    episodes: list[Episode]
    attempts: int
    seconds: float
    failed_seeds: list[int] = field(default_factory=list)
    # Simulator construction time (0 when the worker's cached env was reused); not part of per-episode cost.
    build_seconds: float = 0.0

    @property
    def record(self) -> dict[str, Any]:
        """Bookkeeping stored in the manifest's ``collection`` section for this shard."""
        return {
            "embodiment": self.unit.embodiment,
            "task": self.unit.task,
            "unit": self.unit.index,
            "target": self.unit.target,
            "attempts": self.attempts,
            "successes": len(self.episodes),
            "failures": self.attempts - len(self.episodes),
            "failed_seeds": self.failed_seeds,
            "seconds": round(self.seconds, 3),
            "build_seconds": round(self.build_seconds, 3),
        }


def plan_units(suite: Suite, episodes_per_task: int, shard_episodes: int) -> list[Unit]:
    if episodes_per_task <= 0:
        raise ValueError(f"episodes_per_task must be positive, got {episodes_per_task}")
    if shard_episodes <= 0:
        raise ValueError(f"shard_episodes must be positive, got {shard_episodes}")
    units = []
    for entry in suite.tasks:
        for index, start in enumerate(range(0, episodes_per_task, shard_episodes)):
            units.append(
                Unit(entry.embodiment, entry.task, index, min(shard_episodes, episodes_per_task - start))
            )
    return units


def run_episode(env: SimEnv, expert: Any, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """Roll the expert out once; arrays follow the shard convention (``action[t]`` executed at ``state[t]``)."""
    obs = env.reset(seed=seed)
    expert.reset(env)
    states, actions = [], []
    frames: dict[str, list[np.ndarray]] = {cam: [] for cam in obs["images"]}
    success = done = False
    while not done:
        action = expert.act(env)
        states.append(obs["state"])
        actions.append(action)
        for cam, img in obs["images"].items():
            frames[cam].append(img)
        obs, success, done = env.step(action)
    arrays = {"state": np.stack(states), "action": np.stack(actions).astype(np.float32)}
    arrays.update({f"frames/{cam}": np.stack(f) for cam, f in frames.items()})
    return arrays, success


def _fitted(frames: np.ndarray, size: int) -> np.ndarray:
    """A camera's ``[T, h, w, 3]`` frames as the image contract fits them: the simulators render square frames
    of the requested size, which pass unchanged; any other render is fitted like every other path's frames."""
    if frames.shape[1:3] == (size, size):
        return frames
    fit = ImageFit(size)
    return np.stack([fit(f) for f in frames])


# Per-worker state: the progress queue and the most recently used environment (units of one task are
# queued consecutively, so one cached env avoids most of the 3-6 s simulator builds).
_PROGRESS: Any = None
_ENV_CACHE: dict[tuple[str, str, int], tuple[SimEnv, Any]] = {}


def _init_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress
    exit_with_parent()
    ensure_gl_backend()


def _env_for(
    unit: Unit, suite: Suite, registry: EmbodimentRegistry, image_size: int, seed: int, images: bool = True
):
    from actionprior.sim import make_env, make_expert

    # The build seed is the base seed: robosuite draws model-time randomness (e.g. the Lift cube's size)
    # when the env is built, so it must not depend on which worker or unit happened to build it.
    key = (unit.embodiment, unit.task, image_size if images else 0)
    built = time.perf_counter()
    if key not in _ENV_CACHE:
        close_cached_envs()
        # No cameras at all without images: the renderer then never runs (the simulation is unchanged).
        cameras = None if images else ()
        env = make_env(
            unit.embodiment, unit.task, seed, image_size, cameras=cameras, suite=suite, registry=registry
        )
        _ENV_CACHE[key] = (env, make_expert(env))
    env, expert = _ENV_CACHE[key]
    return env, expert, time.perf_counter() - built


def close_cached_envs() -> None:
    """Close the simulators this process cached (before interpreter exit tears EGL down under them)."""
    for env, _ in _ENV_CACHE.values():
        env.close()
    _ENV_CACHE.clear()


def run_unit(
    unit: Unit,
    suite: Suite,
    registry: EmbodimentRegistry,
    base_seed: int,
    image_size: int,
    images: bool = True,
) -> UnitResult:
    start = time.perf_counter()
    entry = suite.entry(unit.embodiment, unit.task)
    spec = registry[unit.embodiment]
    env, expert, build_seconds = _env_for(unit, suite, registry, image_size, base_seed, images)
    episodes: list[Episode] = []
    failed: list[int] = []
    attempt = 0
    while len(episodes) < unit.target and attempt < unit.max_attempts:
        seed = episode_seed(base_seed, unit.embodiment, unit.task, unit.index, attempt)
        arrays, success = run_episode(env, expert, seed)
        if success:
            episodes.append(
                Episode(
                    key=f"{unit.name}_{attempt:03d}",
                    embodiment=spec.name,
                    task=entry.task,
                    instruction=env.instruction,
                    state=arrays["state"],
                    action=arrays["action"],
                    success=True,
                    control_rate_hz=spec.control_rate_hz,
                    frames={
                        k.split("/", 1)[1]: _fitted(v, image_size)
                        for k, v in arrays.items()
                        if k.startswith("frames/")
                    },
                    extra={
                        "seed": seed,
                        "base_seed": base_seed,
                        "unit": unit.index,
                        "attempt": attempt,
                        "sim_env": entry.env,
                        "simulator": spec.sim.get("simulator"),
                        "image_size": image_size if images else None,
                        "source": f"scripted-expert:{suite.name}",
                    },
                )
            )
        else:
            failed.append(seed)
        attempt += 1
        if _PROGRESS is not None:
            _PROGRESS.put((unit.name, success))
    seconds = time.perf_counter() - start - build_seconds
    return UnitResult(unit, episodes, attempt, seconds, failed, build_seconds)


@dataclass
class CollectReport:
    out_dir: Path
    # (embodiment, task) -> counters summed over this run's units and the shards found on disk.
    per_task: dict[tuple[str, str], dict[str, float]]
    units_run: int
    units_skipped: int
    empty_units: list[str]
    seconds: float

    @property
    def total_episodes(self) -> int:
        return int(sum(v["successes"] for v in self.per_task.values()))

    @property
    def total_discarded(self) -> int:
        return int(sum(v["attempts"] - v["successes"] for v in self.per_task.values()))

    def table(self) -> Table:
        table = Table(title=f"Scripted-expert demonstrations in {self.out_dir}")
        table.add_column("embodiment", no_wrap=True)
        table.add_column("task", no_wrap=True)
        for col in ("kept", "tries", "success", "discarded", "s/try"):
            table.add_column(col, justify="right", no_wrap=True)
        for (emb, task), v in sorted(self.per_task.items()):
            rate = v["successes"] / v["attempts"] if v["attempts"] else float("nan")
            per = v["seconds"] / v["run_attempts"] if v["run_attempts"] else float("nan")
            table.add_row(
                emb,
                task,
                str(int(v["successes"])),
                str(int(v["attempts"])),
                f"{rate:.0%}",
                str(int(v["attempts"] - v["successes"])),
                "resumed" if not v["run_attempts"] else f"{per:.2f}",
            )
        table.caption = (
            f"{self.total_episodes} episodes kept, {self.total_discarded} discarded; "
            f"{self.units_run} shards collected, {self.units_skipped} resumed from disk; {self.seconds:.1f} s"
        )
        return table


def collect(
    suite: str | Suite,
    episodes_per_task: int,
    out_dir: str | Path,
    workers: int = 2,
    seed: int = 0,
    image_size: int = 64,
    shard_episodes: int = DEFAULT_SHARD_EPISODES,
    registry: EmbodimentRegistry | None = None,
    console: Console | None = None,
    images: bool = True,
    video: VideoSettings | None = None,
) -> CollectReport:
    """Collect (or resume collecting) successful expert demonstrations of every suite entry into ``out_dir``.

    ``workers <= 1`` runs in this process (no process start-up cost); otherwise a 'spawn' pool is used,
    each worker building its own simulators. ``images=False`` renders no camera and writes a trajectory-only
    dataset (Stage 1 data; the observation view refuses it). ``video``: store each camera of an episode as one
    video member (see :mod:`actionprior.data.video_frames`); None: one PNG per frame.
    """
    start = time.perf_counter()
    console = console or Console()
    registry = registry or EmbodimentRegistry.from_dir(DEFAULT_EMBODIMENT_DIR)
    suite = suite if isinstance(suite, Suite) else load_suite(suite, registry)
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if video is not None and not images:
        raise ValueError(
            "--frames video stores camera frames, but --no-images renders none; drop one of them"
        )
    units = plan_units(suite, episodes_per_task, shard_episodes)
    views = ("trajectory", "observation") if images else ("trajectory",)
    writer = DatasetWriter(out_dir, registry, name=suite.name, views=views, video=video)
    todo = [u for u in units if not writer.has_shard(u.name)]
    per_task: dict[tuple[str, str], dict[str, float]] = {
        (e.embodiment, e.task): dict.fromkeys(("successes", "attempts", "run_attempts", "seconds"), 0.0)
        for e in suite.tasks
    }
    for u in units:
        if writer.has_shard(u.name):
            record = writer.manifest.get("collection", {}).get(u.name, {})
            counters = per_task[(u.embodiment, u.task)]
            counters["successes"] += record.get("successes", 0)
            counters["attempts"] += record.get("attempts", 0)

    empty: list[str] = []

    def write(result: UnitResult) -> None:
        counters = per_task[(result.unit.embodiment, result.unit.task)]
        counters["successes"] += len(result.episodes)
        counters["attempts"] += result.attempts
        counters["run_attempts"] += result.attempts
        counters["seconds"] += result.seconds
        if result.episodes:
            writer.add_shard(result.unit.name, result.episodes, collection=result.record)
        else:
            # No shard to record: a re-run retries this unit (deterministically, so it will likely fail again).
            empty.append(result.unit.name)

    targets = sum(u.target for u in todo)
    with progress_bar(console, "discarded {task.fields[discarded]}") as progress:
        bar = progress.add_task(f"collect {suite.name}", total=targets, discarded=0)
        discarded = 0

        def on_attempt(success: bool) -> None:
            nonlocal discarded
            discarded += not success
            progress.update(bar, advance=int(success), discarded=discarded)

        if workers <= 1:
            global _PROGRESS
            _PROGRESS = None
            try:
                for unit in todo:
                    result = run_unit(unit, suite, registry, seed, image_size, images)
                    for _ in range(len(result.episodes)):
                        on_attempt(True)
                    for _ in range(result.attempts - len(result.episodes)):
                        on_attempt(False)
                    write(result)
            finally:
                close_cached_envs()
        elif todo:
            ctx = mp.get_context("spawn")
            updates = ctx.Queue()
            with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(updates,)) as pool:
                pending = [
                    pool.apply_async(run_unit, (u, suite, registry, seed, image_size, images)) for u in todo
                ]
                while pending:
                    try:
                        _, success = updates.get(timeout=0.2)
                        on_attempt(success)
                    except queue_lib.Empty:
                        pass
                    for job in [j for j in pending if j.ready()]:
                        pending.remove(job)
                        write(job.get())  # re-raises a worker's exception here
                while True:  # progress messages that arrived after the last result
                    try:
                        on_attempt(updates.get_nowait()[1])
                    except queue_lib.Empty:
                        break

    if writer.manifest["shards"]:
        writer.finalize()
    return CollectReport(
        out_dir=Path(out_dir),
        per_task=per_task,
        units_run=len(todo),
        units_skipped=len(units) - len(todo),
        empty_units=empty,
        seconds=time.perf_counter() - start,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="actionprior data collect",
        description="Collect scripted-expert demonstrations of a simulation suite into WebDataset shards.",
    )
    p.add_argument("--suite", default=DEFAULT_SUITE, help="suite name in configs/suites/ or a YAML path")
    p.add_argument("--episodes-per-task", type=int, required=True, help="successful demonstrations per task")
    p.add_argument("--out", required=True, type=Path, help="dataset directory (created; re-running resumes)")
    p.add_argument("--workers", type=int, default=2, help="parallel simulator processes (<=1: in-process)")
    p.add_argument("--seed", type=int, default=0, help="base seed; episode seeds derive from it")
    p.add_argument("--image-size", type=int, default=64, help="square camera image size in pixels")
    p.add_argument(
        "--shard-episodes",
        type=int,
        default=DEFAULT_SHARD_EPISODES,
        help="demonstrations per shard (resume unit)",
    )
    p.add_argument(
        "--only",
        action="extend",
        nargs="+",
        metavar="EMBODIMENT[/TASK]",
        help="collect only these suite entries (several after one flag, or the flag repeated)",
    )
    p.add_argument(
        "--no-images",
        action="store_true",
        help="state-action trajectories only: no cameras rendered, traj shards only (Stage 1 data)",
    )
    add_frame_arguments(p)
    return p


def cli_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    # Rich falls back to 80 columns when piped (CI logs), which truncates the embodiment names.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    try:
        suite = load_suite(args.suite).select(args.only)
        report = collect(
            suite,
            args.episodes_per_task,
            args.out,
            workers=args.workers,
            seed=args.seed,
            image_size=args.image_size,
            shard_episodes=args.shard_episodes,
            console=console,
            images=not args.no_images,
            video=video_settings_from_args(args),
        )
    except (SuiteError, SimError, ValueError, DataError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(report.table())
    if report.empty_units:
        console.print(
            f"[yellow]warning:[/yellow] no successful demonstration in {report.empty_units}; "
            "their shards were not written (see the table's expert success)"
        )
    missing = [f"{e}/{t}" for (e, t), v in report.per_task.items() if v["successes"] == 0]
    if missing:
        console.print(f"[red]error:[/red] no demonstrations at all for {missing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
