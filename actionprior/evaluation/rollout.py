"""Closed-loop rollouts in parallel worker processes.

Each worker process builds its policy once (from a picklable factory: a checkpoint path or a server
URL) and then runs episodes: build the seeded environment, reset, ``act``/``step`` until success, the
environment's own end, or ``max_steps``. Processes are started with ``spawn``: forking a process that
already holds torch threads or an EGL context can deadlock.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from actionprior.evaluation.smoothness import smoothness
from actionprior.inference.base import PolicyLike
from actionprior.inference.execution import ExecutionConfig
from actionprior.process import exit_with_parent

if TYPE_CHECKING:
    from actionprior.inference.policy import Policy


class SimEnv(Protocol):
    """The simulator contract (docs/contracts.md)."""

    def reset(self) -> dict[str, Any]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool, bool]: ...

    def close(self) -> None: ...


EnvFactory = Callable[[str, str, int], SimEnv]
PolicyFactory = Callable[[], PolicyLike]


class RolloutError(RuntimeError):
    """An episode crashed (environment or policy); the text names the episode and holds the traceback."""


@dataclass(frozen=True)
class EpisodeJob:
    embodiment: str
    task: str
    episode: int  # index among this (embodiment, task)'s episodes
    seed: int
    max_steps: int
    cameras: tuple[str, ...]  # the cameras handed to the policy, in its order
    record_video: bool = False
    # action dims left out of the smoothness figures: binary gripper commands, whose switches are intended
    gripper_dims: tuple[int, ...] = ()


@dataclass
class EpisodeResult:
    embodiment: str
    task: str
    episode: int
    seed: int
    success: bool
    steps: int
    wall_s: float
    act_ms_mean: float  # time per act() call as the caller sees it (includes the network for a server)
    replans: int
    instruction: str = ""
    # smoothness of the executed actions (actionprior.evaluation.smoothness), in ``action_units``
    rms_jerk: float | None = None
    max_boundary_jump: float | None = None
    action_tv: float | None = None
    action_units: str = "raw"  # "normalised" (the policy's Normalizer) or "raw" (the simulator's range)
    frames: np.ndarray | None = field(default=None, repr=False)  # uint8 [T, h, w, 3] of the video camera

    def summary(self) -> dict[str, Any]:
        """JSON-friendly fields (no frames)."""
        return {k: v for k, v in self.__dict__.items() if k != "frames"}


@dataclass(frozen=True)
class SimEnvFactory:
    """Builds environments through ``actionprior.sim.make_env`` (imported in the worker only)."""

    image_size: int
    cameras: dict[str, tuple[str, ...]]  # embodiment -> cameras to render
    suite: str = "sim-default"

    def __call__(self, embodiment: str, task: str, seed: int) -> SimEnv:
        from actionprior.sim import make_env

        return make_env(
            embodiment, task, seed, self.image_size, self.cameras.get(embodiment, ()), suite=self.suite
        )


@dataclass(frozen=True)
class CheckpointPolicyFactory:
    ckpt: str
    device: str = "cpu"
    replan_every: int | None = None
    sample_steps: int | None = None
    expected_stats: str | None = None
    image_size: int | None = None
    history_len: int | None = None
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def __call__(self) -> Policy:
        from actionprior.inference.policy import Policy

        return Policy.load(
            self.ckpt,
            device=self.device,
            replan_every=self.replan_every,
            sample_steps=self.sample_steps,
            expected_stats=self.expected_stats,
            image_size=self.image_size,
            history_len=self.history_len,
            execution=self.execution,
        )


@dataclass(frozen=True)
class ServerPolicyFactory:
    """A client of a policy server; with ``delay_steps`` an asynchronous one whose chunks are used exactly
    that many steps after their observation (simulated latency; the server's execution mode)."""

    url: str
    timeout: float = 60.0
    delay_steps: int | None = None

    def __call__(self) -> PolicyLike:
        from actionprior.inference.client import PolicyClient

        if self.delay_steps is None:
            return PolicyClient(self.url, timeout=self.timeout)
        return PolicyClient(self.url, timeout=self.timeout, asynchronous=True, delay_steps=self.delay_steps)


def run_episode(policy: PolicyLike, env_factory: EnvFactory, job: EpisodeJob) -> EpisodeResult:
    start = time.perf_counter()
    env = env_factory(job.embodiment, job.task, job.seed)
    try:
        policy.reset()
        raw = env.reset()
        frames: list[np.ndarray] = []
        video_cam = job.cameras[0] if job.cameras else None
        if job.record_video:
            video_cam = video_cam or _first_camera(raw)
            frames.append(_frame(raw, video_cam))
        success, steps, replans, act_s = False, 0, 0, 0.0
        actions: list[np.ndarray] = []
        boundaries: list[int] = []  # steps at which a new chunk took effect
        while steps < job.max_steps:
            obs = {
                "embodiment": job.embodiment,
                "state": np.asarray(raw["state"], dtype=np.float32),
                "images": {c: raw["images"][c] for c in job.cameras if c in raw["images"]},
                "instruction": raw["instruction"],
            }
            t0 = time.perf_counter()
            action = policy.act(obs)
            act_s += time.perf_counter() - t0
            replanned = bool(getattr(policy, "last_replanned", True))
            replans += int(replanned)
            if getattr(policy, "last_switched", replanned):
                boundaries.append(steps)
            actions.append(np.asarray(action, dtype=np.float32))
            raw, success, done = env.step(np.asarray(action))
            steps += 1
            if job.record_video:
                frames.append(_frame(raw, video_cam))
            if success or done:
                break
        executed, units = _in_policy_units(policy, job.embodiment, actions)
        arm = [i for i in range(executed.shape[1]) if i not in job.gripper_dims] or list(
            range(executed.shape[1])
        )
        executed = executed[:, arm]
        return EpisodeResult(
            embodiment=job.embodiment,
            task=job.task,
            episode=job.episode,
            seed=job.seed,
            success=bool(success),
            steps=steps,
            wall_s=time.perf_counter() - start,
            act_ms_mean=1e3 * act_s / max(steps, 1),
            replans=replans,
            instruction=str(raw.get("instruction", "")),
            frames=np.stack(frames) if frames else None,
            **smoothness(executed, boundaries),
            action_units=units,
        )
    finally:
        env.close()


def _in_policy_units(
    policy: PolicyLike, embodiment: str, actions: list[np.ndarray]
) -> tuple[np.ndarray, str]:
    """The executed actions ``[T, Da]`` in the policy's normalised units when it has them, else raw."""
    if not actions:
        return np.zeros((0, 0), np.float32), "raw"
    raw = np.stack(actions)
    normalize = getattr(policy, "normalize_action", None)
    normalised = normalize(embodiment, raw) if normalize is not None else None
    return (raw, "raw") if normalised is None else (np.asarray(normalised), "normalised")


def _first_camera(obs: dict[str, Any]) -> str | None:
    images = obs.get("images") or {}
    return next(iter(images), None)


def _frame(obs: dict[str, Any], camera: str | None) -> np.ndarray:
    if camera is None or camera not in obs.get("images", {}):
        raise RolloutError(f"cannot record video: observation has no camera {camera!r}")
    return np.asarray(obs["images"][camera], dtype=np.uint8)


# Per-process state of a worker: built once by the pool initializer, reused for every episode.
_WORKER: dict[str, Any] = {}


def _init_worker(policy_factory: PolicyFactory, env_factory: EnvFactory) -> None:
    import torch

    exit_with_parent()
    # Workers share the machine's cores; one torch thread each avoids oversubscription.
    torch.set_num_threads(1)
    _WORKER["policy_factory"] = policy_factory
    _WORKER["env_factory"] = env_factory


def _worker_episode(job: EpisodeJob) -> EpisodeResult:
    try:
        # Built on first use, not in the initializer: an initializer's exception only surfaces as an
        # opaque BrokenProcessPool, while this one reaches the caller with its message.
        if "policy" not in _WORKER:
            _WORKER["policy"] = _WORKER["policy_factory"]()
        return run_episode(_WORKER["policy"], _WORKER["env_factory"], job)
    except Exception as exc:
        raise RolloutError(
            f"episode {job.episode} of {job.embodiment}/{job.task} (seed {job.seed}) failed: "
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        ) from None


def make_jobs(
    entries: Iterable[tuple[str, str, int]],
    episodes_per_task: int,
    cameras: dict[str, tuple[str, ...]],
    base_seed: int = 0,
    videos_per_task: int = 1,
    gripper_dims: dict[str, tuple[int, ...]] | None = None,
    slots: Sequence[int] | None = None,
) -> list[EpisodeJob]:
    """Jobs for ``(embodiment, task, max_steps)`` entries; seeds are distinct across the whole suite.

    Episode ``ep`` of the entry in suite position ``slot`` gets seed ``base_seed + 1000 * slot + ep``. ``slots``
    are the entries' positions in the whole suite (default: their order here): an evaluation restricted with
    ``--only`` gives each task the same episodes as the full suite, so the two can be compared.
    ``gripper_dims``: per embodiment, the action dims the smoothness figures leave out."""
    jobs = []
    entries = list(entries)
    positions = list(slots) if slots is not None else list(range(len(entries)))
    if len(positions) != len(entries):
        raise ValueError(f"{len(positions)} suite positions for {len(entries)} entries")
    for i, (embodiment, task, max_steps) in zip(positions, entries, strict=True):
        for ep in range(episodes_per_task):
            jobs.append(
                EpisodeJob(
                    embodiment=embodiment,
                    task=task,
                    episode=ep,
                    seed=base_seed + 1000 * i + ep,
                    max_steps=max_steps,
                    cameras=tuple(cameras.get(embodiment, ())),
                    record_video=ep < videos_per_task,
                    gripper_dims=tuple((gripper_dims or {}).get(embodiment, ())),
                )
            )
    return jobs


def run_rollouts(
    jobs: Sequence[EpisodeJob],
    policy_factory: PolicyFactory,
    env_factory: EnvFactory,
    workers: int = 1,
    on_result: Callable[[EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Run every job; results come back in job order. ``workers=0`` runs in this process.

    The first crashed episode cancels the rest and raises :class:`RolloutError`: a policy that cannot
    act (wrong checkpoint, wrong cameras) should stop the evaluation, not be scored as failures.
    """
    if workers <= 0:
        policy = policy_factory()
        results = []
        for job in jobs:
            try:
                res = run_episode(policy, env_factory, job)
            except Exception as exc:
                raise RolloutError(
                    f"episode {job.episode} of {job.embodiment}/{job.task} (seed {job.seed}) failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            results.append(res)
            if on_result:
                on_result(res)
        return results

    by_index: dict[int, EpisodeResult] = {}
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)) or 1,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(policy_factory, env_factory),
    ) as pool:
        pending: dict[Future, int] = {pool.submit(_worker_episode, job): i for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    idx = pending.pop(fut)
                    res = fut.result()  # re-raises the worker's RolloutError
                    by_index[idx] = res
                    if on_result:
                        on_result(res)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [by_index[i] for i in range(len(jobs))]
