"""Rollouts in worker processes and the report, on a toy point-reaching env that follows the sim contract."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec
from actionprior.evaluation.report import aggregate, frame_grid, success_table, write_all
from actionprior.evaluation.rollout import RolloutError, make_jobs, run_rollouts
from actionprior.inference.base import BasePolicy, History, RandomPolicy
from actionprior.inference.execution import ExecutionConfig
from actionprior.inference.observation import ObservationSpec

IMG = 24


def registry() -> EmbodimentRegistry:
    return EmbodimentRegistry(
        [EmbodimentSpec("point", ("x", "y", "gx", "gy"), ("dx", "dy"), "delta", 10.0, cameras=("top",))]
    )


class ToyEnv:
    """A point that must reach a seeded goal; renders the point (red) and goal (green) from 'top'."""

    def __init__(self, task: str, seed: int):
        self.rng = np.random.default_rng(seed)
        self.task = task
        self.crash = task == "crash"

    def _obs(self) -> dict:
        img = np.full((IMG, IMG, 3), 40, np.uint8)
        for (x, y), color in ((self.goal, (0, 255, 0)), (self.pos, (255, 0, 0))):
            i, j = (np.clip((np.array([y, x]) + 1) / 2 * (IMG - 1), 0, IMG - 1)).round().astype(int)
            img[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] = color
        return {
            "state": np.concatenate([self.pos, self.goal]).astype(np.float32),
            "images": {"top": img},
            "instruction": f"reach the goal ({self.task})",
        }

    def reset(self) -> dict:
        self.pos = self.rng.uniform(-1, 1, 2)
        self.goal = self.rng.uniform(-1, 1, 2)
        while np.linalg.norm(self.goal - self.pos) < 0.5:  # never solved at the start
            self.goal = self.rng.uniform(-1, 1, 2)
        return self._obs()

    def step(self, action: np.ndarray):
        if self.crash:
            raise RuntimeError("simulated physics blew up")
        self.pos = np.clip(self.pos + np.clip(action, -0.2, 0.2), -1, 1)
        return self._obs(), bool(np.linalg.norm(self.pos - self.goal) < 0.1), False

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ToyEnvFactory:
    def __call__(self, embodiment: str, task: str, seed: int) -> ToyEnv:
        return ToyEnv(task, seed)


class ExpertPolicy(BasePolicy):
    """Moves towards the goal read from the state; plans 3-step chunks and replans every 2."""

    def __init__(self, execution: ExecutionConfig | None = None):
        super().__init__(ObservationSpec(registry(), ("top",), IMG), replan_every=2, execution=execution)

    def predict_chunk(self, observation, history: History) -> np.ndarray:
        s = observation["state"]
        step = np.clip(s[2:] - s[:2], -0.2, 0.2)
        return np.stack([step, step / 2, step / 4]).astype(np.float32)


@dataclass(frozen=True)
class ExpertFactory:
    execution: ExecutionConfig | None = None

    def __call__(self) -> ExpertPolicy:
        return ExpertPolicy(self.execution)


@dataclass(frozen=True)
class FrozenFactory:
    """Outputs zero actions: never reaches the goal."""

    def __call__(self) -> RandomPolicy:
        zero = (np.zeros(2), np.zeros(2))
        return RandomPolicy(ObservationSpec(registry(), ("top",), IMG), bounds={"point": zero})


def test_parallel_rollouts_score_policies_and_record_frames() -> None:
    entries = [("point", "reach-a", 30), ("point", "reach-b", 30)]
    jobs = make_jobs(entries, episodes_per_task=3, cameras={"point": ("top",)}, base_seed=7)
    assert len({j.seed for j in jobs}) == 6 and [j.record_video for j in jobs[:3]] == [True, False, False]
    seen = []
    expert = run_rollouts(jobs, ExpertFactory(), ToyEnvFactory(), workers=2, on_result=seen.append)
    assert len(seen) == 6 and [(r.task, r.episode) for r in expert] == [(j.task, j.episode) for j in jobs]
    assert all(r.success for r in expert) and all(1 <= r.steps < 30 for r in expert)
    # replanning every 2 actions: ceil(steps / 2) chunks
    assert all(r.replans == -(-r.steps // 2) for r in expert)
    frozen = run_rollouts(jobs, FrozenFactory(), ToyEnvFactory(), workers=0)
    assert not any(r.success for r in frozen) and all(r.steps == 30 for r in frozen)
    # same seeds → same episodes: the starting frame is identical between the two policies
    np.testing.assert_array_equal(expert[0].frames[0], frozen[0].frames[0])
    video = expert[0].frames
    assert video.dtype == np.uint8 and video.shape == (expert[0].steps + 1, IMG, IMG, 3)
    assert expert[1].frames is None
    # the point moves: frames differ over time
    assert np.abs(video[-1].astype(int) - video[0].astype(int)).sum() > 0


def test_crashing_episode_stops_the_evaluation_with_its_identity() -> None:
    jobs = make_jobs([("point", "crash", 5)], 2, {"point": ("top",)})
    # Either episode may be the first to fail in the worker pool; the message must name the one that did.
    crash = r"episode (\d) of point/crash \(seed \1\) failed: RuntimeError: simulated physics"
    with pytest.raises(RolloutError, match=crash):
        run_rollouts(jobs, ExpertFactory(), ToyEnvFactory(), workers=1)


def test_report_files_table_chart_and_tensorboard(tmp_path) -> None:
    jobs = make_jobs([("point", "reach-a", 30), ("point", "reach-b", 4)], 2, {"point": ("top",)})
    results = run_rollouts(jobs, ExpertFactory(), ToyEnvFactory(), workers=0)
    report = write_all(results, tmp_path, meta={"ckpt": "toy"})
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["meta"] == {"ckpt": "toy"} and len(on_disk["episodes"]) == 4
    rows = {r["task"]: r for r in on_disk["per_task"]}
    assert rows["reach-a"]["successes"] == 2 and rows["reach-a"]["success_rate"] == 1.0
    expected = sum(r.success for r in results) / 4
    assert on_disk["overall"]["success_rate"] == pytest.approx(expected)
    assert on_disk["per_embodiment"]["point"]["episodes"] == 4
    chart = np.asarray(Image.open(tmp_path / "success.png").convert("RGB"))
    assert chart.shape[0] > 40 and chart.std() > 10  # drawn, not a blank canvas
    gifs = sorted((tmp_path / "videos").glob("*.gif"))
    assert [g.name.split("__")[1] for g in gifs] == ["reach-a", "reach-b"]
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == results[0].steps + 1 and gif.size[0] >= 256
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000
    assert report["artifacts"]["videos"] == [str(g) for g in gifs]
    table = success_table(aggregate(results))
    assert table.row_count == 2 + 1 + 1  # two tasks, one embodiment row, the total
    # smoothness: per episode, per task (mean over episodes), in the table, TensorBoard and a companion chart
    assert on_disk["action_units"] == "raw"  # the toy policy has no normaliser
    for r, e in zip(results, on_disk["episodes"], strict=True):
        actions_ok = r.steps >= 4
        assert (e["rms_jerk"] is not None) == actions_ok and e["action_units"] == "raw"
    steps_a = [r for r in results if r.task == "reach-a"]
    assert rows["reach-a"]["rms_jerk"] == pytest.approx(np.mean([r.rms_jerk for r in steps_a]))
    assert [c.header for c in table.columns][-3:] == ["RMS jerk", "max jump", "TV/step"]
    smooth = np.asarray(Image.open(tmp_path / "smoothness.png").convert("RGB"))
    assert smooth.shape[1] > chart.shape[1] and smooth.std() > 10
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert {"eval/rms_jerk", "eval/max_boundary_jump/point/reach-a", "eval/action_tv"} <= set(scalars)


def test_delayed_and_ensembled_rollouts_in_process_and_through_the_server() -> None:
    """A simulated delay of one step and ensembling change the executed actions; the asynchronous client with
    that delay gives the in-process results exactly; smoothness sees the chunk boundaries."""
    from actionprior.evaluation.rollout import ServerPolicyFactory
    from actionprior.inference.server import PolicyServer

    jobs = make_jobs([("point", "reach-a", 30)], 2, {"point": ("top",)}, base_seed=3, videos_per_task=0)
    plain = run_rollouts(jobs, ExpertFactory(), ToyEnvFactory(), workers=0)
    delayed = ExecutionConfig(delay_steps=1)
    local = run_rollouts(jobs, ExpertFactory(delayed), ToyEnvFactory(), workers=0)
    assert [r.steps for r in local] != [r.steps for r in plain] and all(r.success for r in local)
    with PolicyServer(ExpertPolicy(), port=0) as server:
        remote = run_rollouts(
            jobs, ServerPolicyFactory(server.url, delay_steps=1), ToyEnvFactory(), workers=0
        )
    assert [(r.success, r.steps, r.replans, r.rms_jerk, r.max_boundary_jump) for r in remote] == [
        (r.success, r.steps, r.replans, r.rms_jerk, r.max_boundary_jump) for r in local
    ]
    ensembled = run_rollouts(jobs, ExpertFactory(ExecutionConfig("ensemble")), ToyEnvFactory(), workers=0)
    assert all(r.success for r in ensembled)
    # chunks [s, s/2, s/4] replanned every 2 steps jump back up at every boundary; averaging overlapping
    # chunks smooths that
    assert np.mean([r.max_boundary_jump for r in ensembled]) < np.mean([r.max_boundary_jump for r in plain])


def test_frame_grid_keeps_first_and_last_frames() -> None:
    frames = np.stack([np.full((4, 5, 3), i, np.uint8) for i in range(20)])
    grid = frame_grid(frames, max_frames=5)
    assert grid.shape == (4, 25, 3)
    assert grid[0, 0, 0] == 0 and grid[0, -1, 0] == 19


def test_rollouts_through_the_policy_server_match_in_process_results() -> None:
    from actionprior.evaluation.rollout import ServerPolicyFactory
    from actionprior.inference.server import PolicyServer

    jobs = make_jobs([("point", "reach-a", 30)], 2, {"point": ("top",)}, base_seed=3)
    local = run_rollouts(jobs, ExpertFactory(), ToyEnvFactory(), workers=0)
    with PolicyServer(ExpertPolicy(), port=0) as server:
        remote = run_rollouts(jobs, ServerPolicyFactory(server.url), ToyEnvFactory(), workers=0)
    assert [(r.success, r.steps, r.replans) for r in remote] == [
        (r.success, r.steps, r.replans) for r in local
    ]
    np.testing.assert_array_equal(remote[0].frames, local[0].frames)


def test_eval_refuses_a_policy_that_lacks_a_suite_embodiment() -> None:
    from actionprior.evaluation.evaluate import EvaluationError, _cameras

    info = ExpertPolicy().describe()
    assert _cameras(info, ["point"]) == {"point": ("top",)}
    with pytest.raises(
        EvaluationError, match=r"does not control embodiments \['robosuite_panda_osc'\].*--only"
    ):
        _cameras(info, ["point", "robosuite_panda_osc"])


def test_smoothness_leaves_the_gripper_dims_out() -> None:
    from actionprior.evaluation.rollout import run_episode
    from actionprior.evaluation.smoothness import action_tv, rms_jerk

    policy, executed = ExpertPolicy(), []
    act = policy.act
    policy.act = lambda obs: executed.append(act(obs)) or executed[-1]
    job = make_jobs([("point", "reach-a", 30)], 1, {"point": ("top",)}, gripper_dims={"point": (1,)})[0]
    result = run_episode(policy, ToyEnvFactory(), job)
    actions = np.stack(executed)
    assert job.gripper_dims == (1,) and len(actions) == result.steps >= 4
    assert result.rms_jerk == pytest.approx(rms_jerk(actions[:, :1]))
    assert result.action_tv == pytest.approx(action_tv(actions[:, :1]))
    assert result.rms_jerk != pytest.approx(rms_jerk(actions))


def test_eval_refuses_execution_settings_that_cannot_apply() -> None:
    from actionprior.evaluation.evaluate import EvaluationError, _policy_setup, build_parser

    args = build_parser().parse_args(["--via-server", "ws://127.0.0.1:1", "--execution", "rtc"])
    with pytest.raises(
        EvaluationError, match=r"--execution cannot change a served policy.*--delay-steps works"
    ):
        _policy_setup(args, ["point"])
    args = build_parser().parse_args(["--baseline", "random", "--execution", "rtc"])
    with pytest.raises(ValueError, match="RandomPolicy cannot execute 'rtc'"):
        _policy_setup(args, ["robosuite_panda_osc"])
    args = build_parser().parse_args(["--baseline", "random", "--delay-steps", "-2"])
    with pytest.raises(EvaluationError, match="--delay-steps must be >= 0"):
        _policy_setup(args, ["robosuite_panda_osc"])


def test_a_task_keeps_its_episodes_when_the_suite_is_restricted() -> None:
    full = make_jobs(
        [("point", "reach-a", 30), ("point", "reach-b", 30)], 2, {"point": ("top",)}, base_seed=500
    )
    only_b = make_jobs([("point", "reach-b", 30)], 2, {"point": ("top",)}, base_seed=500, slots=[1])
    assert [j.seed for j in full] == [500, 501, 1500, 1501]
    assert [j.seed for j in only_b] == [1500, 1501]  # as in the full suite (--only keeps the episodes)
    with pytest.raises(ValueError, match="2 suite positions for 1 entries"):
        make_jobs([("point", "reach-b", 30)], 2, {"point": ("top",)}, slots=[0, 1])
