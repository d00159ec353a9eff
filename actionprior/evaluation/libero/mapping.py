"""LIBERO's standard evaluation protocol and the mapping between its observations/actions and ours (numpy only).

The protocol is the one the published LIBERO numbers use (openpi's ``examples/libero/main.py``, LeRobot's and the
vla-evaluation-harness's LIBERO clients): each task's 50 fixed initial states in order (episode ``i`` starts from
init state ``i``), ``WARMUP_STEPS`` no-op steps first (objects fall and settle; they do not count), then at most
``SUITE_MAX_STEPS[suite]`` policy steps, success when LIBERO's ``check_success()`` holds (its ``done``).

Observation -> ours (embodiment ``libero_panda``, configs/embodiments/libero_panda.yaml): the state is the
end-effector position, its orientation as an axis-angle vector and the two finger joint positions (8-D); LIBERO's
HDF5 datasets store exactly these as ``obs/ee_pos``, ``obs/ee_ori`` and ``obs/gripper_states``, which
``actionprior data import hdf5 --state-keys ee_pos,ee_ori,gripper_states`` concatenates in this order. Cameras
come from MuJoCo upside down; both the importer (``--flip-images``) and this mapping rotate them by 180 degrees.
The action is LIBERO's 7-D OSC delta (dx, dy, dz, droll, dpitch, dyaw in [-1, 1], gripper -1 open / +1 close),
the dataset's own units, passed through (robosuite clips it to its input range).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EMBODIMENT = "libero_panda"
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
SUITES = tuple(SUITE_MAX_STEPS)
WARMUP_STEPS = 10  # openpi's num_steps_wait
INIT_STATES_PER_TASK = 50  # LIBERO's fixed initial states per task (its .pruned_init files)
TASKS_PER_SUITE = 10
DEFAULT_RENDER_SIZE = 256  # openpi's LIBERO_ENV_RESOLUTION; LIBERO's own datasets were rendered at 128
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # no motion, gripper open
# our camera name -> LIBERO's observation key
CAMERAS = {"scene": "agentview_image", "wrist": "robot0_eye_in_hand_image"}
STATE_KEYS = (("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2))
STATE_DIM = 8
ACTION_DIM = 7


class LiberoMappingError(ValueError):
    """A LIBERO observation or a policy action does not have the expected keys, shapes or values."""


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite's ``transform_utils.quat2axisangle`` (quaternion x, y, z, w -> axis * angle), which LIBERO's
    dataset script applied to ``robot0_eef_quat`` to write ``ee_ori``; copied so that no robosuite is needed."""
    q = np.asarray(quat, dtype=np.float64).copy()
    q[3] = min(max(q[3], -1.0), 1.0)
    den = math.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(q[3]) / den


def libero_state(obs: Mapping[str, Any]) -> np.ndarray:
    """float32 [8]: eef position, eef axis-angle, gripper finger positions."""
    parts = []
    for key, size in STATE_KEYS:
        if key not in obs:
            raise LiberoMappingError(f"LIBERO observation has no '{key}' (keys: {sorted(obs)[:20]})")
        value = np.asarray(obs[key], dtype=np.float64).reshape(-1)
        if value.shape != (size,) or not np.isfinite(value).all():
            raise LiberoMappingError(f"LIBERO observation '{key}' must be {size} finite numbers, got {value}")
        parts.append(value)
    pos, quat, gripper = parts
    return np.concatenate([pos, quat2axisangle(quat), gripper]).astype(np.float32)


def rotate180(image: np.ndarray) -> np.ndarray:
    """The frame turned right way up: MuJoCo's offscreen frames are upside down (rows and columns reversed)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise LiberoMappingError(f"expected a uint8 [h, w, 3] frame, got {image.dtype} {list(image.shape)}")
    return np.ascontiguousarray(image[::-1, ::-1])


def check_cameras(cameras: Sequence[str]) -> tuple[str, ...]:
    unknown = [c for c in cameras if c not in CAMERAS]
    if unknown:
        raise LiberoMappingError(
            f"the policy asks for cameras {unknown}; LIBERO renders {sorted(CAMERAS)} "
            f"(configs/embodiments/{EMBODIMENT}.yaml)"
        )
    return tuple(cameras)


def to_observation(obs: Mapping[str, Any], instruction: str, cameras: Sequence[str]) -> dict[str, Any]:
    """Our policy observation (the server's ``act`` request) from a LIBERO observation."""
    images = {}
    for camera in check_cameras(cameras):
        key = CAMERAS[camera]
        if key not in obs:
            raise LiberoMappingError(f"LIBERO observation has no camera '{key}' (is rendering on?)")
        images[camera] = rotate180(obs[key])
    return {
        "embodiment": EMBODIMENT,
        "state": libero_state(obs),
        "images": images,
        "instruction": instruction,
    }


def to_env_action(action: Any) -> np.ndarray:
    """float64 [7] for ``env.step``; a policy answer of another size or with NaN/inf is refused, not clipped."""
    arr = np.asarray(action, dtype=np.float64)
    if arr.shape != (ACTION_DIM,):
        raise LiberoMappingError(
            f"the policy returned an action of shape {list(arr.shape)}; LIBERO takes {ACTION_DIM} numbers "
            "(dx, dy, dz, droll, dpitch, dyaw, gripper)"
        )
    if not np.isfinite(arr).all():
        raise LiberoMappingError(f"the policy returned a non-finite action {arr.tolist()}")
    return arr


def check_suite(suite: str) -> str:
    if suite not in SUITE_MAX_STEPS:
        raise LiberoMappingError(f"unknown LIBERO suite '{suite}'; choose one of {', '.join(SUITES)}")
    return suite
