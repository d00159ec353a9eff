"""A scripted expert with privileged object poses writes demonstrations of one LIBERO pick-and-place task in
LIBERO's own HDF5 layout, so that the whole path a GPU user takes with the real datasets (import -> Stage 1 ->
Stage 2 -> serve -> eval-libero) can run without them. Runs in the LIBERO environment (make libero-env, which
installs h5py for this):

    MUJOCO_GL=egl .venv-libero/bin/python benchmarks/libero/expert_demos.py --suite libero_object --task 0 \\
        --demos 5 --render-size 64 --out runs/libero/expert/object0.hdf5

The expert reads the positions of the task's object of interest and its target container from the observation
(``<object>_pos``: privileged, a policy never sees them), and drives the hand through waypoints with LIBERO's 7-D
OSC delta actions: above the object, down, close, up, above the target, open. Demos start from the task's init
states ``--first-init``, ``--first-init + 1``, ... (use ones the evaluation does not, e.g. 40-49, to keep them
apart); only successful ones are written (failures are counted). The file follows LIBERO's create_dataset.py:
``data/demo_<i>/{actions, states, obs/{ee_pos, ee_ori, ee_states, gripper_states, joint_states, agentview_rgb,
eye_in_hand_rgb}}``, ``data`` attributes ``env_args`` and ``problem_info``; frames as rendered (upside down).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from actionprior.evaluation.libero.mapping import WARMUP_STEPS, quat2axisangle

STEP_M = 0.05  # OSC delta: one unit of action is 5 cm


def goal_objects(bddl_text: str) -> tuple[str, str]:
    """(object to move, container) from the bddl's goal ``(In obj container_region)`` / ``(On obj target)``."""
    import re

    m = re.search(r"\(:goal\s*\(And\s*\((?:In|On)\s+([^\s()]+)\s+([^\s()]+)\)", bddl_text)
    if not m:
        raise ValueError("the task's goal is not a single (In|On obj target): not a pick-and-place task")
    obj, target = m.group(1), m.group(2)
    return obj, re.sub(r"_(contain|top_side|side)_region$", "", target)


def move(eef: np.ndarray, target: np.ndarray, gripper: float, gain: float = 1.0) -> np.ndarray:
    delta = np.clip(gain * (target - eef) / STEP_M, -1.0, 1.0)
    return np.concatenate([delta, np.zeros(3), [gripper]])


class Expert:
    """Waypoint phases; each ends when the hand is within ``tol`` of its point (or after a step budget)."""

    def __init__(self, obj: str, target: str):
        self.obj, self.target = obj, target
        self.phase, self.count = 0, 0

    def act(self, obs: dict) -> np.ndarray:
        eef = obs["robot0_eef_pos"]
        o = obs[f"{self.obj}_pos"]
        t = obs[f"{self.target}_pos"]
        grasp = o + np.array([0.0, 0.0, 0.01])
        phases = [
            ("above", grasp + [0, 0, 0.12], -1.0, 0.01, 60),
            ("down", grasp, -1.0, 0.008, 40),
            ("close", None, 1.0, None, 12),
            ("lift", np.array([eef[0], eef[1], grasp[2] + 0.25]), 1.0, 0.02, 40),
            ("over", t + [0, 0, 0.25], 1.0, 0.015, 80),
            ("lower", t + [0, 0, 0.12], 1.0, 0.015, 30),
            ("open", None, -1.0, None, 15),
        ]
        if self.phase >= len(phases):
            return np.array([0, 0, 0, 0, 0, 0, -1.0])
        _, point, grip, tol, budget = phases[self.phase]
        self.count += 1
        if point is None:
            action = np.array([0, 0, 0, 0, 0, 0, grip])
            done = self.count >= budget
        else:
            action = move(eef, point, grip)
            done = np.linalg.norm(point - eef) < tol or self.count >= budget
        if done:
            self.phase, self.count = self.phase + 1, 0
        return action

    @property
    def finished(self) -> bool:
        return self.phase >= 7


def main(argv: list[str] | None = None) -> int:
    import h5py
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--demos", type=int, default=5)
    p.add_argument("--first-init", type=int, default=40)
    p.add_argument("--render-size", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument(
        "--no-render", action="store_true", help="try the expert without cameras (no file written)"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    suite = benchmark.get_benchmark(args.suite)(task_order_index=0)
    task = suite.get_task(args.task)
    bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    obj, target = goal_objects(bddl.read_text())
    init_states = suite.get_task_init_states(args.task)
    kwargs = {
        "bddl_file_name": str(bddl),
        "camera_heights": args.render_size,
        "camera_widths": args.render_size,
    }
    if args.no_render:
        kwargs.update(has_offscreen_renderer=False, use_camera_obs=False)
    env = OffScreenRenderEnv(**kwargs)
    env.seed(0)
    demos, failures, start = [], 0, time.perf_counter()
    init = args.first_init
    while len(demos) < args.demos and init < len(init_states):
        env.reset()
        obs = env.set_init_state(init_states[init])
        for _ in range(WARMUP_STEPS):
            obs, _, _, _ = env.step([0.0] * 6 + [-1.0])
        expert, rows, success = Expert(obj, target), [], False
        for _ in range(args.max_steps):
            action = expert.act(obs)
            rows.append((obs, action, env.sim.get_state().flatten()))
            obs, _, done, _ = env.step(action.tolist())
            if env.check_success():
                success = True
                break
        print(f"init state {init}: {'success' if success else 'failure'} after {len(rows)} steps", flush=True)
        (demos.append((init, rows)) if success else None)
        failures += int(not success)
        init += 1
    env.close()
    print(f"{len(demos)} demos, {failures} failures, {time.perf_counter() - start:.0f} s")
    if args.no_render or args.out is None or not demos:
        return 0 if demos else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(args.out, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {
                "type": 1,
                "env_name": "Libero",
                "env_kwargs": {
                    "bddl_file_name": str(bddl),
                    "control_freq": 20,
                    "controller_configs": {"type": "OSC_POSE"},
                    "camera_heights": args.render_size,
                    "camera_widths": args.render_size,
                },
            }
        )
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": task.problem_folder, "language_instruction": task.language}
        )
        data.attrs["bddl_file_name"] = str(bddl)
        data.attrs["total"] = sum(len(rows) for _, rows in demos)
        for i, (init, rows) in enumerate(demos):
            g = data.create_group(f"demo_{i}")
            g.attrs["init_state"] = init
            g.attrs["num_samples"] = len(rows)
            g.create_dataset("actions", data=np.stack([a for _, a, _ in rows]).astype(np.float64))
            g.create_dataset("states", data=np.stack([s for _, _, s in rows]))
            ee = np.stack(
                [
                    np.concatenate([o["robot0_eef_pos"], quat2axisangle(o["robot0_eef_quat"])])
                    for o, _, _ in rows
                ]
            )
            o = g.create_group("obs")
            o.create_dataset("ee_states", data=ee)
            o.create_dataset("ee_pos", data=ee[:, :3])
            o.create_dataset("ee_ori", data=ee[:, 3:])
            o.create_dataset("gripper_states", data=np.stack([r[0]["robot0_gripper_qpos"] for r in rows]))
            o.create_dataset("joint_states", data=np.stack([r[0]["robot0_joint_pos"] for r in rows]))
            o.create_dataset("agentview_rgb", data=np.stack([r[0]["agentview_image"] for r in rows]))
            o.create_dataset(
                "eye_in_hand_rgb", data=np.stack([r[0]["robot0_eye_in_hand_image"] for r in rows])
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
