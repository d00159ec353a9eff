"""Meta-World (v3 environments, metaworld 3.0.0) adapter and its shipped scripted policies as experts."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from actionprior.embodiments import EmbodimentSpec
from actionprior.sim.base import CameraRenderer, Expert, SimEnv, SimError, camera_map, ensure_gl_backend
from actionprior.sim.suite import TaskEntry


class MetaWorldEnv(SimEnv):
    """A goal-observable Meta-World environment (the scripted policies read the goal from the observation)."""

    def __init__(
        self,
        spec: EmbodimentSpec,
        entry: TaskEntry,
        seed: int,
        image_size: int = 64,
        cameras: Sequence[str] | None = None,
    ):
        super().__init__(spec, entry, seed)
        ensure_gl_backend()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        key = f"{entry.env}-goal-observable"
        if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
            raise SimError(
                f"{spec.name}/{entry.task}: unknown Meta-World env '{entry.env}'; "
                "use a v3 name such as 'drawer-open-v3'"
            )
        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key](seed=seed)
        # Longer than any suite episode, so Meta-World never refuses a step.
        self._env.max_path_length = max(self._env.max_path_length, entry.max_steps + 1)
        self._raw_obs: np.ndarray = np.zeros(0)
        self._renderer = CameraRenderer(
            self._env.model, self._env.data, camera_map(spec, cameras), image_size
        )

    @property
    def raw_obs(self) -> np.ndarray:
        """Meta-World's 39-D observation (hand, gripper, object poses, goal): what its scripted policies read."""
        return self._raw_obs

    def _reset_sim(self, seed: int) -> None:
        env = self._env
        # Draw a fresh object/goal placement from this episode's seed, then freeze it for the episode.
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.seed(seed)
        self._raw_obs, _ = env.reset()
        env._freeze_rand_vec = True

    def _apply(self, action: np.ndarray) -> bool:
        self._raw_obs, _, _, _, info = self._env.step(action.astype(np.float32))
        return bool(info["success"])

    def _state(self) -> np.ndarray:
        # Hand xyz and normalised gripper opening: the proprioceptive part of Meta-World's observation.
        return self._raw_obs[:4]

    def _images(self) -> dict[str, np.ndarray]:
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()
        self._env.close()


def _policy_class_name(env_name: str) -> str:
    # "pick-place-v3" -> "SawyerPickPlaceV3Policy", the naming of metaworld.policies.
    parts = re.split(r"[-_]", env_name)
    return "Sawyer" + "".join(p.capitalize() for p in parts) + "Policy"


class MetaWorldPolicyExpert(Expert):
    """Meta-World's hand-written policy for the task (``metaworld.policies``)."""

    def __init__(self, env_name: str):
        from metaworld import policies

        name = _policy_class_name(env_name)
        if not hasattr(policies, name):
            raise SimError(f"metaworld ships no scripted policy '{name}' for env '{env_name}'")
        self._policy: Any = getattr(policies, name)()
        # Some shipped policies use gains > 1 on purpose; the env clips, and so do we: the warning is noise.
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)

    def reset(self, env: SimEnv) -> None:
        pass

    def act(self, env: SimEnv) -> np.ndarray:
        assert isinstance(env, MetaWorldEnv)
        return np.clip(self._policy.get_action(env.raw_obs), -1.0, 1.0).astype(np.float32)
