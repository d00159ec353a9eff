"""LIBERO observation -> our observation, our action -> LIBERO's, on a recorded LIBERO observation
(tests/fixtures/libero/observation.npz, written by record_observation.py in the LIBERO environment), and the
agreement with what ``data import hdf5`` writes from a LIBERO-layout file. No LIBERO needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from actionprior.data.importers import cli_main as import_main
from actionprior.data.schema import decode_png, decode_trajectory
from actionprior.data.tario import iter_tar_samples
from actionprior.data.writer import load_manifest
from actionprior.embodiments import EmbodimentSpec
from actionprior.evaluation.libero import mapping as m

FIXTURE = Path(__file__).parent / "fixtures" / "libero" / "observation.npz"
SPEC = Path(__file__).resolve().parents[1] / "configs" / "embodiments" / "libero_panda.yaml"


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def test_state_is_position_axis_angle_gripper(recorded) -> None:
    state = m.libero_state(recorded)
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state[:3], recorded["robot0_eef_pos"], rtol=1e-6)
    # robosuite 1.4.0's own quat2axisangle, recorded beside the observation
    np.testing.assert_allclose(state[3:6], recorded["robosuite_axisangle"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state[6:], recorded["robot0_gripper_qpos"], rtol=1e-6)
    # the recorded hand is turned: the angle is a real rotation, not the degenerate case
    assert np.linalg.norm(state[3:6]) > 0.5


def test_quat2axisangle_known_rotations() -> None:
    # 90 degrees about z (x, y, z, w)
    q = np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    np.testing.assert_allclose(m.quat2axisangle(q), [0.0, 0.0, math.pi / 2], atol=1e-12)
    np.testing.assert_array_equal(m.quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0])), np.zeros(3))
    # w slightly past 1 from rounding is clipped, not NaN
    assert np.isfinite(m.quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0000001]))).all()


def test_images_rotated_180_degrees(recorded) -> None:
    obs = m.to_observation(recorded, "pick up the bowl", ["scene", "wrist"])
    assert obs["embodiment"] == "libero_panda" and obs["instruction"] == "pick up the bowl"
    for ours, theirs in (("scene", "agentview_image"), ("wrist", "robot0_eye_in_hand_image")):
        raw = recorded[theirs]
        got = obs["images"][ours]
        assert got.flags["C_CONTIGUOUS"] and got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.rot90(raw, 2))
        np.testing.assert_array_equal(got[0, 0], raw[-1, -1])
    assert not np.array_equal(
        obs["images"]["scene"], recorded["agentview_image"]
    )  # a real (non-symmetric) frame
    only_wrist = m.to_observation(recorded, "x", ["wrist"])
    assert list(only_wrist["images"]) == ["wrist"]


def test_refusals_are_one_clear_line(recorded) -> None:
    with pytest.raises(m.LiberoMappingError, match="cameras \\['top'\\]; LIBERO renders"):
        m.to_observation(recorded, "x", ["top"])
    broken = {k: v for k, v in recorded.items() if k != "robot0_eef_quat"}
    with pytest.raises(m.LiberoMappingError, match="no 'robot0_eef_quat'"):
        m.libero_state(broken)
    with pytest.raises(m.LiberoMappingError, match="must be 3 finite numbers"):
        m.libero_state({**recorded, "robot0_eef_pos": np.array([0.0, np.nan, 0.0])})
    with pytest.raises(m.LiberoMappingError, match="shape \\[8\\]; LIBERO takes 7"):
        m.to_env_action(np.zeros(8))
    with pytest.raises(m.LiberoMappingError, match="non-finite"):
        m.to_env_action([0, 0, 0, 0, 0, np.inf, 1])
    with pytest.raises(m.LiberoMappingError, match="unknown LIBERO suite 'libero_100'"):
        m.check_suite("libero_100")


def test_actions_pass_through_unclipped() -> None:
    action = np.array([0.5, -1.5, 0.0, 0.1, 0.2, -0.3, 1.0], np.float32)
    got = m.to_env_action(action)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, action.astype(np.float64))  # robosuite clips to its input range itself


def test_protocol_constants() -> None:
    assert m.SUITE_MAX_STEPS == {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
    }
    assert m.WARMUP_STEPS == 10 and m.INIT_STATES_PER_TASK == 50
    assert m.NOOP_ACTION == (0.0,) * 6 + (-1.0,)


def test_shipped_spec_matches_the_mapping() -> None:
    spec = EmbodimentSpec.from_yaml(SPEC)
    assert spec.name == m.EMBODIMENT
    assert (spec.state_dim, spec.action_dim) == (m.STATE_DIM, m.ACTION_DIM)
    assert sorted(spec.cameras) == sorted(m.CAMERAS)
    assert spec.gripper_action_dims == (6,) and spec.gripper_state_dims == (6, 7)
    assert spec.control_rate_hz == 20.0 and spec.control_mode == "osc_pose_delta"


def write_libero_hdf5(path: Path, obs: dict[str, np.ndarray], steps: int = 3) -> np.ndarray:
    """One demo in LIBERO's layout, as its create_dataset script writes it: ee_pos, ee_ori = axis-angle of the eef
    quaternion, gripper_states, agentview_rgb/eye_in_hand_rgb as rendered (upside down)."""
    ee_ori = m.quat2axisangle(obs["robot0_eef_quat"])
    actions = np.tile(np.array([0.1, 0.0, -0.1, 0.0, 0.0, 0.05, -1.0], np.float32), (steps, 1))
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {
                "env_name": "LIBERO",
                "env_kwargs": {"control_freq": 20, "controller_configs": {"type": "OSC_POSE"}},
            }
        )
        data.attrs["problem_info"] = json.dumps({"language_instruction": "pick up the black bowl"})
        demo = data.create_group("demo_0")
        demo.create_dataset("actions", data=actions)
        demo.create_dataset("states", data=np.zeros((steps, 10)))
        o = demo.create_group("obs")
        o.create_dataset("ee_pos", data=np.tile(obs["robot0_eef_pos"], (steps, 1)))
        o.create_dataset("ee_ori", data=np.tile(ee_ori, (steps, 1)))
        o.create_dataset("gripper_states", data=np.tile(obs["robot0_gripper_qpos"], (steps, 1)))
        o.create_dataset("agentview_rgb", data=np.stack([obs["agentview_image"]] * steps))
        o.create_dataset("eye_in_hand_rgb", data=np.stack([obs["robot0_eye_in_hand_image"]] * steps))
    return actions


def test_hdf5_import_and_live_mapping_agree(recorded, tmp_path: Path, capsys) -> None:
    """A policy trained on a LIBERO file imported as docs/libero.md says sees, in eval-libero, the same state
    vector, the same camera names and the same frame orientation."""
    src = tmp_path / "libero_demo.hdf5"
    actions = write_libero_hdf5(src, recorded)
    out = tmp_path / "shards"
    argv = [
        "hdf5", str(src), "--out", str(out), "--spec", str(SPEC), "--flip-images",
        "--state-keys", "ee_pos,ee_ori,gripper_states", "--cameras", "scene=agentview_rgb,wrist=eye_in_hand_rgb",
        "--image-size", "32", "--workers", "1",
    ]  # fmt: skip
    assert import_main(argv) == 0, capsys.readouterr().out
    [shard] = load_manifest(out)["shards"]
    [sample] = list(iter_tar_samples((out / shard["obs"]).read_bytes(), "x"))
    state, action, meta = decode_trajectory(sample, "x")
    live = m.to_observation(recorded, meta["instruction"], ["scene", "wrist"])
    np.testing.assert_allclose(state[0], live["state"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(action, actions)
    assert meta["embodiment"] == "libero_panda" and meta["instruction"] == "pick up the black bowl"
    for camera in ("scene", "wrist"):
        np.testing.assert_array_equal(decode_png(sample[f"{camera}.00000.png"], "x"), live["images"][camera])
