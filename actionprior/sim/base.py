"""The simulator environment contract shared by every adapter, and cheap MuJoCo camera rendering.

``SimEnv`` follows docs/contracts.md: ``reset() -> obs``, ``step(action) -> (obs, success, done)``,
``close()``, with ``obs = {"state": float32 [Ds], "images": {camera: uint8 [h, w, 3]}, "instruction": str}``.
Cameras use the embodiment's canonical names (``scene``, ``wrist``); the spec's ``sim.cameras`` maps them to
simulator cameras.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from actionprior.embodiments import EmbodimentSpec
from actionprior.sim.suite import TaskEntry

Obs = dict[str, Any]


class SimError(RuntimeError):
    """A simulator adapter cannot be built or driven as configured."""


def ensure_gl_backend() -> None:
    """Select headless EGL rendering unless the user chose a backend; must run before ``import mujoco``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    # PyOpenGL reads this one; keeping them equal avoids a mixed GLX/EGL setup.
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def camera_map(spec: EmbodimentSpec, cameras: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Canonical camera -> ``{"name": simulator camera, "rotate180": bool}`` for the requested cameras."""
    mapping = spec.sim.get("cameras") or {}
    wanted = list(spec.cameras) if cameras is None else list(cameras)
    out = {}
    for cam in wanted:
        if cam not in spec.cameras:
            raise SimError(f"embodiment '{spec.name}' has no camera '{cam}'; it has {list(spec.cameras)}")
        if cam not in mapping or "name" not in mapping[cam]:
            raise SimError(f"embodiment '{spec.name}': sim.cameras.{cam}.name is missing in its YAML")
        out[cam] = {
            "name": str(mapping[cam]["name"]),
            "rotate180": bool(mapping[cam].get("rotate180", False)),
        }
    return out


class CameraRenderer:
    """Renders named MuJoCo cameras into small uint8 images, as cheaply as software EGL allows.

    Shadows, reflections and multisampling are off: at 64x64 they cost most of the render time
    (Meta-World ~80 ms -> ~7 ms per frame) and add nothing a policy needs.
    """

    def __init__(self, model: Any, data: Any, cameras: Mapping[str, Mapping[str, Any]], size: int):
        import mujoco

        self._data = data
        self._cameras = dict(cameras)
        self._renderer: Any = None
        if not self._cameras:  # state-only rollouts: no GL context at all
            return
        for cam in self._cameras.values():
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam["name"]) < 0:
                raise SimError(f"the simulator model has no camera '{cam['name']}'")
        model.vis.quality.offsamples = 0
        # The offscreen buffer must hold the requested size.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        self._renderer = mujoco.Renderer(model, size, size)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0

    def render(self) -> dict[str, np.ndarray]:
        images: dict[str, np.ndarray] = {}
        for canonical, cam in self._cameras.items():
            self._renderer.update_scene(self._data, camera=cam["name"])
            img = self._renderer.render()
            # mujoco.Renderer already returns row 0 = top; a camera mounted upside down needs a 180° turn
            # (a rotation, not a mirror: the scene must keep its handedness).
            if cam["rotate180"]:
                img = img[::-1, ::-1]
            images[canonical] = np.ascontiguousarray(img, dtype=np.uint8)
        return images

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class SimEnv(abc.ABC):
    """One (embodiment, task) environment. ``reset(seed)`` re-randomises the scene reproducibly."""

    spec: EmbodimentSpec
    entry: TaskEntry

    def __init__(self, spec: EmbodimentSpec, entry: TaskEntry, seed: int):
        self.spec = spec
        self.entry = entry
        self._next_seed = seed
        self.episode_seed = seed
        self.instruction = entry.instruction_for(seed)
        self._steps = 0
        self._success_steps = 0

    @abc.abstractmethod
    def _reset_sim(self, seed: int) -> None: ...

    @abc.abstractmethod
    def _apply(self, action: np.ndarray) -> bool:
        """Execute one action; return whether the task is solved now."""

    @abc.abstractmethod
    def _state(self) -> np.ndarray: ...

    @abc.abstractmethod
    def _images(self) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def reset(self, seed: int | None = None) -> Obs:
        """Start an episode. Without ``seed``, consecutive resets use seed, seed + 1, ..."""
        if seed is None:
            seed = self._next_seed
        self._next_seed = seed + 1
        self.episode_seed = seed
        self.instruction = self.entry.instruction_for(seed)
        self._steps = 0
        self._success_steps = 0
        self._reset_sim(seed)
        return self._obs()

    def step(self, action: np.ndarray) -> tuple[Obs, bool, bool]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.spec.action_dim,):
            raise SimError(
                f"{self.spec.name}/{self.entry.task}: action must have {self.spec.action_dim} dims "
                f"({list(self.spec.action_names)}), got shape {action.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise SimError(f"{self.spec.name}/{self.entry.task}: action has NaN/Inf: {action}")
        success = self._apply(np.clip(action, -1.0, 1.0))
        self._steps += 1
        self._success_steps = self._success_steps + 1 if success else 0
        # Episodes end a few steps after success so a demonstration shows the task staying solved.
        done = self._success_steps > self.entry.settle_steps or self._steps >= self.entry.max_steps
        return self._obs(), success, done

    def _obs(self) -> Obs:
        state = np.asarray(self._state(), dtype=np.float32)
        if state.shape != (self.spec.state_dim,):
            raise SimError(
                f"{self.spec.name}: simulator state has shape {state.shape}, the spec names "
                f"{self.spec.state_dim} dims {list(self.spec.state_names)}"
            )
        return {"state": state, "images": self._images(), "instruction": self.instruction}

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Expert(abc.ABC):
    """A scripted policy with access to privileged simulator state (object poses)."""

    @abc.abstractmethod
    def reset(self, env: SimEnv) -> None: ...

    @abc.abstractmethod
    def act(self, env: SimEnv) -> np.ndarray: ...
