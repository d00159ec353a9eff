"""One worker of ``actionprior eval-libero``: runs LIBERO episodes against a policy server. Runs INSIDE the LIBERO
environment (``make libero-env``), which has numpy, msgpack and websockets but neither torch nor Lightning; started
by :mod:`actionprior.evaluation.libero.evaluate`, or by hand::

    .venv-libero/bin/python -m actionprior.evaluation.libero.runner --suite libero_spatial \\
        --server ws://127.0.0.1:8765 --jobs 0:0,0:1 --out runs/libero/episodes/manual.jsonl

Each finished episode is one JSON line appended to ``--out`` (flushed and synced at once, so a killed worker loses
only the episode it was running). The protocol is in :mod:`actionprior.evaluation.libero.mapping`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actionprior.evaluation.libero.episodes import EpisodeKey, parse_jobs
from actionprior.evaluation.libero.mapping import (
    DEFAULT_RENDER_SIZE,
    EMBODIMENT,
    NOOP_ACTION,
    SUITE_MAX_STEPS,
    WARMUP_STEPS,
    check_cameras,
    check_suite,
    rotate180,
    to_env_action,
    to_observation,
)
from actionprior.evaluation.smoothness import smoothness


class LiberoTask:
    """One task of a suite: its name, instruction, fixed init states and (built on first use) its environment."""

    def __init__(self, suite: Any, task_id: int, render_size: int, seed: int):
        from libero.libero import get_libero_path  # the LIBERO environment only

        self.task = suite.get_task(task_id)
        self.init_states = np.asarray(suite.get_task_init_states(task_id))
        self.bddl = Path(get_libero_path("bddl_files")) / self.task.problem_folder / self.task.bddl_file
        self.render_size = render_size
        self.seed = seed
        self._env: Any = None

    @property
    def env(self) -> Any:
        if self._env is None:
            from libero.libero.envs import OffScreenRenderEnv

            self._env = OffScreenRenderEnv(
                bddl_file_name=str(self.bddl), camera_heights=self.render_size, camera_widths=self.render_size
            )
            self._env.seed(self.seed)
        return self._env

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def run_episode(
    task: LiberoTask,
    episode: int,
    policy: Any,
    cameras: Sequence[str],
    max_steps: int,
    warmup_steps: int,
    record_video: bool,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Reset to init state ``episode``, ``warmup_steps`` no-ops, then policy steps until success or ``max_steps``."""
    if not 0 <= episode < len(task.init_states):
        raise ValueError(
            f"task '{task.task.name}' has {len(task.init_states)} init states, episode {episode} asked"
        )
    start = time.perf_counter()
    env = task.env
    env.reset()
    obs = env.set_init_state(task.init_states[episode])
    policy.reset()
    for _ in range(warmup_steps):
        obs, _, _, _ = env.step(list(NOOP_ACTION))
    instruction = " ".join(str(task.task.language).split())
    frames: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    boundaries: list[int] = []
    success, steps, replans, act_s, env_s = False, 0, 0, 0.0, 0.0
    while steps < max_steps:
        observation = to_observation(obs, instruction, cameras)
        if record_video:
            frames.append(rotate180(obs["agentview_image"]))
        t0 = time.perf_counter()
        action = to_env_action(policy.act(observation))
        act_s += time.perf_counter() - t0
        replanned = bool(getattr(policy, "last_replanned", True))
        replans += int(replanned)
        if getattr(policy, "last_switched", replanned):
            boundaries.append(steps)
        actions.append(action.astype(np.float32))
        t0 = time.perf_counter()
        obs, _, done, _ = env.step(action.tolist())
        env_s += time.perf_counter() - t0
        steps += 1
        # LIBERO's done is its check_success(); asked again so that an early `done` is never read as success
        if done or env.check_success():
            success = bool(env.check_success())
            break
    if record_video:
        frames.append(rotate180(obs["agentview_image"]))
    executed = np.stack(actions)[:, :6] if actions else np.zeros((0, 6), np.float32)  # gripper left out
    record = {
        "task_id": -1,  # set by the caller
        "episode": episode,
        "task": str(task.task.name),
        "instruction": instruction,
        "success": success,
        "steps": steps,
        "wall_s": time.perf_counter() - start,
        "env_step_ms": 1e3 * env_s / max(steps, 1),  # physics + rendering of one control step
        "act_ms": 1e3 * act_s / max(steps, 1),  # one act() as this client sees it (network included)
        "replans": replans,
        **smoothness(executed, boundaries),
    }
    return record, frames


def write_gif(frames: list[np.ndarray], path: Path, fps: float) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="actionprior.evaluation.libero.runner", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--suite", required=True)
    p.add_argument("--server", required=True, help="ws://host:port of `actionprior serve`")
    p.add_argument("--jobs", required=True, help="task_id:episode,... in the order to run them")
    p.add_argument(
        "--out", type=Path, required=True, help="JSON-lines file the finished episodes are appended to"
    )
    p.add_argument("--max-steps", type=int, default=None, help="default: the suite's published limit")
    p.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS)
    p.add_argument("--render-size", type=int, default=DEFAULT_RENDER_SIZE)
    p.add_argument("--seed", type=int, default=7, help="environment seed (openpi's default)")
    p.add_argument("--video-dir", type=Path, default=None)
    p.add_argument("--videos-per-task", type=int, default=0, help="GIFs of the first N episodes of each task")
    p.add_argument("--fps", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one server reply")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from actionprior.inference.client import PolicyClient

    args = build_parser().parse_args(argv)
    suite_name = check_suite(args.suite)
    max_steps = args.max_steps or SUITE_MAX_STEPS[suite_name]
    jobs = parse_jobs(args.jobs)
    from libero.libero import benchmark

    suite = benchmark.get_benchmark(suite_name)(task_order_index=0)
    settings = {
        "suite": suite_name,
        "max_steps": max_steps,
        "warmup_steps": args.warmup_steps,
        "render_size": args.render_size,
        "seed": args.seed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with PolicyClient(args.server, timeout=args.timeout) as policy:
        info = policy.info()
        spec = (info.get("embodiments") or {}).get(EMBODIMENT)
        if spec is None:
            raise SystemExit(f"the server at {args.server} does not serve the embodiment '{EMBODIMENT}'")
        cameras = check_cameras(spec.get("cameras") or ())
        with args.out.open("a", encoding="utf-8") as out:
            for task_id, keys in itertools.groupby(jobs, key=lambda k: k.task_id):
                task = LiberoTask(suite, task_id, args.render_size, args.seed)
                try:
                    for key in keys:
                        _run_one(task, key, policy, cameras, max_steps, args, settings, out)
                finally:
                    task.close()
    return 0


def _run_one(task, key: EpisodeKey, policy, cameras, max_steps: int, args, settings, out) -> None:
    video = args.video_dir is not None and key.episode < args.videos_per_task
    record, frames = run_episode(task, key.episode, policy, cameras, max_steps, args.warmup_steps, video)
    record.update(settings, task_id=key.task_id)
    if video and frames:
        path = (
            args.video_dir
            / f"{key.task_id:02d}_{task.task.name[:80]}__ep{key.episode:02d}__{'success' if record['success'] else 'failure'}.gif"
        )
        write_gif(frames, path, args.fps)
        record["video"] = str(path)
    out.write(json.dumps(record) + "\n")
    out.flush()
    os.fsync(out.fileno())
    print(
        f"task {key.task_id} episode {key.episode}: {'success' if record['success'] else 'failure'} after "
        f"{record['steps']} steps, {record['env_step_ms']:.0f} ms/env step, {record['act_ms']:.0f} ms/act",
        flush=True,
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, ConnectionError, RuntimeError) as exc:  # one line; the traceback is not the story
        print(f"libero runner: {' '.join(str(exc).split())[:2000]}", file=sys.stderr)
        sys.exit(2)
