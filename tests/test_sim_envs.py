"""Simulator adapters and scripted experts: the env contract, camera orientation and expert success."""

from __future__ import annotations

import numpy as np
import pytest

from actionprior.embodiments import EmbodimentRegistry
from actionprior.sim import SimError, Suite, SuiteError, load_suite, make_env, make_expert
from actionprior.sim.collect import run_episode

pytestmark = pytest.mark.sim

# One cheap task per embodiment; Stack and pick-place are exercised by the collection tests.
CASES = [
    ("metaworld_sawyer", "drawer-open"),
    ("robosuite_panda_osc", "lift"),
    ("robosuite_ur5e_joint", "lift"),
    ("robosuite_kinova3_joint", "lift"),
]


def test_default_suite_covers_four_embodiments_with_distinct_action_spaces():
    registry = EmbodimentRegistry.from_dir()
    suite = load_suite("sim-default")
    assert len(suite.embodiments) >= 4
    dims = {registry[e].action_dim for e in suite.embodiments}
    assert dims == {4, 7, 8}  # Sawyer 4-D, Panda OSC 7-D, UR5e 6 joints + gripper, Kinova3 7 joints + gripper
    modes = {registry[e].control_mode for e in suite.embodiments}
    assert modes == {"cartesian_delta", "osc_pose_delta", "joint_position_delta"}
    assert sum(t.embodiment == "metaworld_sawyer" for t in suite.tasks) >= 3
    for name in suite.embodiments:
        spec = registry[name]
        assert spec.cameras == ("scene", "wrist")
        assert spec.gripper_action_dims == (spec.action_dim - 1,)


def test_suite_errors_name_the_problem(tmp_path):
    with pytest.raises(SuiteError, match="unknown embodiment 'nope'"):
        Suite.from_dict(
            {
                "tasks": [
                    {"embodiment": "nope", "task": "t", "env": "e", "max_steps": 5, "instructions": ["x"]}
                ]
            }
        )
    with pytest.raises(SuiteError, match=r"tasks\[0\] is missing \['instructions'\]"):
        Suite.from_dict(
            {"tasks": [{"embodiment": "metaworld_sawyer", "task": "t", "env": "e", "max_steps": 5}]}
        )
    with pytest.raises(SuiteError, match="not found"):
        load_suite("no-such-suite")
    with pytest.raises(SuiteError, match="no task 'fly'"):
        load_suite().entry("metaworld_sawyer", "fly")


def test_instruction_is_picked_by_seed():
    entry = load_suite().entry("robosuite_panda_osc", "lift")
    picked = {entry.instruction_for(s) for s in range(20)}
    assert picked == set(entry.instructions) and len(picked) >= 3
    assert entry.instruction_for(7) == entry.instruction_for(7)


def _assert_right_side_up(scene: np.ndarray) -> None:
    # Both scene cameras look down at a table that fills the lower half of a right-side-up image, while the
    # upper half shows the background (dark sky in Meta-World, grey wall in robosuite): the lower half is
    # clearly brighter. An upside-down image reverses the inequality.
    gray = scene.astype(np.float64).mean(axis=2)
    h = gray.shape[0] // 2
    assert gray[h:].mean() > gray[:h].mean() + 20, (gray[:h].mean(), gray[h:].mean())


@pytest.mark.parametrize("embodiment,task", CASES)
def test_env_contract_orientation_and_expert_success(embodiment, task):
    spec = EmbodimentRegistry.from_dir()[embodiment]
    env = make_env(embodiment, task, seed=0, image_size=48)
    try:
        obs = env.reset(seed=1)
        assert set(obs) == {"state", "images", "instruction"}
        assert obs["state"].dtype == np.float32 and obs["state"].shape == (spec.state_dim,)
        assert set(obs["images"]) == set(spec.cameras)
        for cam, img in obs["images"].items():
            assert img.dtype == np.uint8 and img.shape == (48, 48, 3), cam
            assert img.std() > 5.0, f"{cam} image is blank"
        _assert_right_side_up(obs["images"]["scene"])
        assert obs["instruction"] in load_suite().entry(embodiment, task).instructions

        with pytest.raises(SimError, match=f"{spec.action_dim} dims"):
            env.step(np.zeros(spec.action_dim + 1))

        expert = make_expert(env)
        successes = []
        for seed in (0, 1):
            arrays, success = run_episode(env, expert, seed)
            successes.append(success)
            if success:
                break
        assert any(successes), f"{embodiment}/{task}: expert failed on seeds 0 and 1"
        steps = len(arrays["state"])
        assert arrays["action"].shape == (steps, spec.action_dim)
        assert np.abs(arrays["action"]).max() <= 1.0
        assert arrays["frames/scene"].shape == (steps, 48, 48, 3)
        # The episode ends settle_steps after success, long before the step limit.
        assert steps < load_suite().entry(embodiment, task).max_steps
    finally:
        env.close()


def test_metaworld_control_rate_matches_the_simulator():
    env = make_env("metaworld_sawyer", "push", seed=0, image_size=16, cameras=["scene"])
    try:
        raw = env._env
        assert env.spec.control_rate_hz == pytest.approx(1.0 / (raw.frame_skip * raw.model.opt.timestep))
        obs = env.reset(seed=0)
        assert set(obs["images"]) == {"scene"}
        with pytest.raises(SimError, match="no camera 'top'"):
            make_env("metaworld_sawyer", "push", seed=0, cameras=["top"])
    finally:
        env.close()


def test_same_seed_same_scene_different_seed_different_scene():
    env = make_env("metaworld_sawyer", "push", seed=0, image_size=32)
    try:
        a = env.reset(seed=5)["images"]["scene"]
        puck_a = env.raw_obs[4:7].copy()
        env.reset(seed=6)
        b = env.reset(seed=5)["images"]["scene"]
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(env.raw_obs[4:7], puck_a)
        env.reset(seed=6)
        # Different seeds place the puck (and goal) elsewhere.
        assert np.linalg.norm(env.raw_obs[4:7] - puck_a) > 1e-3
    finally:
        env.close()


def test_state_only_env_renders_nothing():
    env = make_env("metaworld_sawyer", "push", seed=0, cameras=())
    try:
        obs = env.reset(seed=0)
        assert obs["images"] == {} and obs["state"].shape == (4,)
        obs, _, _ = env.step(np.zeros(4))
        assert obs["images"] == {}
    finally:
        env.close()
