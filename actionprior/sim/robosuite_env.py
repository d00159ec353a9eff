"""robosuite (1.5.2) adapter: one robot arm, a configurable arm controller, cameras rendered directly."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actionprior.embodiments import EmbodimentSpec
from actionprior.sim.base import CameraRenderer, SimEnv, SimError, camera_map, ensure_gl_backend
from actionprior.sim.suite import TaskEntry

# robosuite logs INFO lines for every controller it loads, and warnings about optional robots, IK solvers
# (robosuite_models, mink) and a private macro file that the default suite does not use. Keep the rest.
_OPTIONAL_EXTRAS = ("robosuite_models", "mink-based whole-body IK", "private macro file", "setup_macros.py")


def _quiet_robosuite(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING and not any(x in record.getMessage() for x in _OPTIONAL_EXTRAS)


logging.getLogger("robosuite_logs").addFilter(_quiet_robosuite)


def controller_config(robot: str, controller: dict[str, Any]) -> dict[str, Any]:
    """The robot's composite controller config with its right-arm part replaced as the spec asks.

    ``controller`` holds ``type`` (a robosuite part controller such as OSC_POSE or JOINT_POSITION) and
    optional overrides of that controller's JSON defaults (e.g. ``kp``). The robot's gripper is kept.
    """
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    cfg = copy.deepcopy(load_composite_controller_config(robot=robot))
    arm = cfg["body_parts"]["right"]
    overrides = dict(controller)
    ctype = str(overrides.pop("type", arm["type"]))
    if ctype != arm["type"]:
        path = Path(robosuite.__file__).parent / "controllers/config/default/parts" / f"{ctype.lower()}.json"
        if not path.exists():
            raise SimError(f"robosuite has no part controller '{ctype}' ({path} missing)")
        new_arm = json.loads(path.read_text())
        new_arm["gripper"] = arm.get("gripper", {"type": "GRIP"})
        arm = new_arm
    unknown = sorted(set(overrides) - set(arm))
    if unknown:
        raise SimError(
            f"controller overrides {unknown} are not fields of robosuite's {ctype} config {sorted(arm)}"
        )
    arm.update(overrides)
    cfg["body_parts"]["right"] = arm
    return cfg


def _samplers(sampler: Any) -> list[Any]:
    """A placement sampler and, for composite samplers, every sampler inside it."""
    if sampler is None:
        return []
    out = [sampler]
    for child in getattr(sampler, "samplers", {}).values():
        out.extend(_samplers(child))
    return out


class RobosuiteEnv(SimEnv):
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
        import robosuite

        sim = spec.sim
        for key in ("robot", "state_keys", "controller"):
            if key not in sim:
                raise SimError(f"embodiment '{spec.name}': sim.{key} is missing in its YAML")
        self._state_keys = list(sim["state_keys"])
        try:
            # Cameras are rendered by CameraRenderer, not robosuite's observables: robosuite's offscreen
            # context renders with shadows and multisampling (~5x slower at 64x64) and upside down.
            self._env = robosuite.make(
                entry.env,
                robots=sim["robot"],
                controller_configs=controller_config(sim["robot"], dict(sim["controller"])),
                control_freq=int(spec.control_rate_hz),
                use_camera_obs=False,
                use_object_obs=True,
                has_renderer=False,
                has_offscreen_renderer=False,
                hard_reset=False,
                ignore_done=True,
                horizon=entry.max_steps + 1,
                reward_shaping=False,
                seed=seed,
            )
        except Exception as exc:
            raise SimError(
                f"{spec.name}/{entry.task}: robosuite cannot build env '{entry.env}': {exc}"
            ) from exc
        self._raw_obs: dict[str, np.ndarray] = self._env.reset()
        missing = [k for k in self._state_keys if k not in self._raw_obs]
        if missing:
            raise SimError(
                f"embodiment '{spec.name}': sim.state_keys {missing} are not robosuite observations"
            )
        self._renderer = CameraRenderer(
            self._env.sim.model._model, self._env.sim.data._data, camera_map(spec, cameras), image_size
        )

    @property
    def env(self) -> Any:
        return self._env

    @property
    def raw_obs(self) -> dict[str, np.ndarray]:
        """robosuite's observation dict, including privileged object poses the experts read."""
        return self._raw_obs

    def _reset_sim(self, seed: int) -> None:
        # robosuite draws placements and joint noise from env.rng; samplers keep a reference taken at build time.
        rng = np.random.default_rng(seed)
        self._env.rng = rng
        for sampler in _samplers(getattr(self._env, "placement_initializer", None)):
            sampler.rng = rng
        self._raw_obs = self._env.reset()

    def _apply(self, action: np.ndarray) -> bool:
        self._raw_obs, _, _, _ = self._env.step(action)
        return bool(self._env._check_success())

    def _state(self) -> np.ndarray:
        return np.concatenate(
            [np.asarray(self._raw_obs[k], dtype=np.float64).reshape(-1) for k in self._state_keys]
        )

    def _images(self) -> dict[str, np.ndarray]:
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()
        self._env.close()
