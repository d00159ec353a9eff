"""Scripted experts that produce the demonstrations.

* Meta-World: the simulator's own hand-written policies (:mod:`actionprior.sim.metaworld`).
* robosuite: one Cartesian waypoint plan per task (pick the cube, lift it / put it on the other cube),
  turned into actions by the embodiment's controller type:
  - ``osc_waypoint``: OSC pose deltas toward the next waypoint, holding the start orientation;
  - ``joint_ik``: joint-position deltas from damped-least-squares IK on the end-effector site Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from actionprior.sim.base import Expert, SimEnv, SimError
from actionprior.sim.metaworld import MetaWorldEnv, MetaWorldPolicyExpert
from actionprior.sim.robosuite_env import RobosuiteEnv

Vec = np.ndarray
OPEN, CLOSE = -1.0, 1.0


@dataclass
class Phase:
    """Move toward ``target(obs)`` with the gripper at ``grip`` until within ``tol`` (or ``hold`` steps pass)."""

    name: str
    target: Callable[[dict[str, Vec]], Vec]
    grip: float
    tol: float | None = 0.01
    hold: int | None = None
    max_steps: int = 60


def _pick(obj: str) -> list[Phase]:
    return [
        Phase("hover", lambda o: o[obj] + [0, 0, 0.10], OPEN, tol=0.015),
        Phase("descend", lambda o: o[obj] + [0, 0, -0.005], OPEN, tol=0.008),
        Phase("grasp", lambda o: o[obj] + [0, 0, -0.005], CLOSE, tol=None, hold=10),
    ]


def waypoint_plan(env_name: str) -> list[Phase]:
    """The Cartesian plan for a robosuite task; object positions come from robosuite's object observations."""
    if env_name == "Lift":
        return [*_pick("cube_pos"), Phase("lift", lambda o: o["lift_from"] + [0, 0, 0.20], CLOSE, tol=None)]
    if env_name == "Stack":
        # cubeA (half size 0.02) lands on cubeB (half size 0.025): centres 0.045 apart, plus a small gap.
        return [
            *_pick("cubeA_pos"),
            Phase("lift", lambda o: o["lift_from"] + [0, 0, 0.12], CLOSE, tol=0.02),
            Phase("carry", lambda o: o["cubeB_pos"] + [0, 0, 0.11], CLOSE, tol=0.012),
            Phase("lower", lambda o: o["cubeB_pos"] + [0, 0, 0.05], CLOSE, tol=0.008),
            Phase("release", lambda o: o["cubeB_pos"] + [0, 0, 0.05], OPEN, tol=None, hold=8),
            Phase("retreat", lambda o: o["cubeB_pos"] + [0, 0, 0.15], OPEN, tol=None),
        ]
    raise SimError(f"no scripted robosuite plan for env '{env_name}'; available: Lift, Stack")


def _rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame axis-angle taking rotation matrix ``current`` to ``target``."""
    import mujoco

    qt, qc, qerr, qc_inv = np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4)
    mujoco.mju_mat2Quat(qt, target.reshape(-1))
    mujoco.mju_mat2Quat(qc, current.reshape(-1))
    mujoco.mju_negQuat(qc_inv, qc)
    mujoco.mju_mulQuat(qerr, qt, qc_inv)
    if qerr[0] < 0:  # the short way round
        qerr = -qerr
    vel = np.zeros(3)
    mujoco.mju_quat2Vel(vel, qerr, 1.0)
    return vel


class RobosuiteWaypointExpert(Expert):
    """Follows :func:`waypoint_plan`, emitting OSC or joint-position actions depending on the embodiment."""

    def __init__(self, env: RobosuiteEnv):
        self._mode = str(env.spec.sim.get("expert", ""))
        if self._mode not in ("osc_waypoint", "joint_ik"):
            raise SimError(
                f"embodiment '{env.spec.name}': sim.expert must be 'osc_waypoint' or 'joint_ik', got '{self._mode}'"
            )
        self._plan = waypoint_plan(env.entry.env)
        robot = env.env.robots[0]
        self._site = robot.eef_site_id["right"]
        self._dofs = list(robot._ref_joint_vel_indexes)
        arm = robot.part_controllers["right"]
        # Actions in [-1, 1] map linearly to [output_min, output_max] per step (robosuite controller scaling).
        self._out_max = np.broadcast_to(
            np.asarray(arm.output_max, dtype=np.float64), (arm.control_dim,)
        ).copy()
        self._phase = 0
        self._phase_steps = 0
        self._lift_from = np.zeros(3)
        self._start_rot = np.eye(3)

    def reset(self, env: SimEnv) -> None:
        assert isinstance(env, RobosuiteEnv)
        self._phase, self._phase_steps = 0, 0
        self._start_rot = env.env.sim.data.site_xmat[self._site].reshape(3, 3).copy()

    def _objects(self, env: RobosuiteEnv) -> dict[str, Vec]:
        obs = {k: np.asarray(v, dtype=np.float64) for k, v in env.raw_obs.items() if k.endswith("_pos")}
        obs["lift_from"] = self._lift_from
        return obs

    def act(self, env: SimEnv) -> np.ndarray:
        assert isinstance(env, RobosuiteEnv)
        objects = self._objects(env)
        eef = env.env.sim.data.site_xpos[self._site].copy()
        phase = self._plan[self._phase]
        err = phase.target(objects) - eef
        self._phase_steps += 1
        reached = phase.tol is not None and np.linalg.norm(err) < phase.tol
        held = phase.hold is not None and self._phase_steps >= phase.hold
        timed_out = self._phase_steps >= phase.max_steps and phase.tol is not None
        if (reached or held or timed_out) and self._phase < len(self._plan) - 1:
            if phase.name == "grasp":
                self._lift_from = eef.copy()
            self._phase += 1
            self._phase_steps = 0
            phase = self._plan[self._phase]
            err = phase.target(self._objects(env)) - eef
        rot_err = _rotation_error(self._start_rot, env.env.sim.data.site_xmat[self._site].reshape(3, 3))
        if self._mode == "osc_waypoint":
            arm = np.concatenate([err, rot_err]) / self._out_max
        else:
            arm = self._ik(env, err, rot_err) / self._out_max
        return np.concatenate([np.clip(arm, -1.0, 1.0), [phase.grip]]).astype(np.float32)

    def _ik(self, env: RobosuiteEnv, err: Vec, rot_err: Vec, damping: float = 0.05) -> Vec:
        """Damped least squares: the joint step that moves the end effector by (a capped) ``err``."""
        import mujoco

        model, data = env.env.sim.model._model, env.env.sim.data._data
        jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        mujoco.mj_jacSite(model, data, jacp, jacr, self._site)
        jac = np.vstack([jacp[:, self._dofs], jacr[:, self._dofs]])
        # Cap the Cartesian step (2 cm, ~0.1 rad) so the linearisation holds and joints stay within limits.
        step = np.concatenate([err * min(1.0, 0.02 / (np.linalg.norm(err) + 1e-9)), 0.5 * rot_err])
        return jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(6), step)


def make_expert(env: SimEnv) -> Expert:
    if isinstance(env, MetaWorldEnv):
        return MetaWorldPolicyExpert(env.entry.env)
    if isinstance(env, RobosuiteEnv):
        return RobosuiteWaypointExpert(env)
    raise SimError(f"no scripted expert for {type(env).__name__}")
