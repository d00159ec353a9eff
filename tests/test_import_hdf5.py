"""``actionprior data import hdf5``: robomimic-layout files (robomimic's dataset docs; LIBERO's variant with
``problem_info`` and upside-down frames), written by tests/fixtures/import_layouts.py."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from fixtures.import_layouts import frame, state_action, write_robomimic_hdf5

from actionprior.data.check import check_dataset
from actionprior.data.images import fit_image
from actionprior.data.importers import cli_main
from actionprior.data.importers import hdf5 as h5
from actionprior.data.importers.common import ImportFailure, run_import
from actionprior.data.schema import decode_png, decode_trajectory
from actionprior.data.shards import shard_source
from actionprior.data.stream import WindowStream
from actionprior.data.tario import iter_tar_samples
from actionprior.data.writer import load_manifest
from actionprior.embodiments import EmbodimentRegistry


def samples(out: Path) -> list[dict]:
    result = []
    for shard in load_manifest(out)["shards"]:
        path = out / shard["obs"]
        result.extend(iter_tar_samples(path.read_bytes(), str(path)))
    return result


def test_robomimic_file_with_mask_filter(tmp_path: Path, capsys) -> None:
    """Layout source: robomimic's dataset docs ("Dataset Structure": data/demo_<i>/actions, states, obs/<key>,
    the env_args attribute, mask/<filter>); 84x84 images as in robomimic's image datasets."""
    src = tmp_path / "lift.hdf5"
    lengths = [6, 8, 5, 7]
    write_robomimic_hdf5(src, lengths=lengths, masks={"train": [0, 2, 3], "valid": [1]})
    out = tmp_path / "out"
    argv = [
        "hdf5",
        str(src),
        "--out",
        str(out),
        "--filter",
        "train",
        "--instruction",
        "lift the cube",
        "--workers",
        "1",
        "--image-size",
        "84",
    ]
    assert cli_main(argv) == 0, capsys.readouterr().out
    spec = yaml.safe_load((out / "embodiment.yaml").read_text())
    assert spec["name"] == "hdf5_lift" and spec["control_rate_hz"] == 20.0
    assert spec["action_names"] == ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    assert spec["control_mode"] == "osc_pose_delta" and spec["gripper_action_dims"] == [6]
    assert spec["state_names"][:3] == ["eef_x", "eef_y", "eef_z"] and spec["gripper_state_dims"] == [7, 8]
    assert spec["cameras"] == ["agentview", "robot0_eye_in_hand"]
    got = samples(out)
    assert len(got) == 3
    for sample, ep in zip(got, (0, 2, 3), strict=True):
        state, action, meta = decode_trajectory(sample, "x")
        exp_state, exp_action = state_action(ep, lengths[ep], 9, 7)
        np.testing.assert_array_equal(state, exp_state)  # eef_pos | eef_quat | gripper_qpos
        np.testing.assert_array_equal(action, exp_action)
        assert meta["instruction"] == "lift the cube" and meta["source_demo"] == f"demo_{ep}"
        for t in range(len(state)):  # robomimic images are raw uint8 arrays: lossless, same size
            np.testing.assert_array_equal(
                decode_png(sample[f"agentview.{t:05d}.png"], "x"), frame(t, ep, 84, 84)
            )
    assert check_dataset(out) == []


def test_libero_flipped_frames_instruction_from_attributes(tmp_path: Path) -> None:
    """Layout source: LIBERO's HDF5 files (robomimic layout, ``problem_info`` JSON attribute holding
    ``language_instruction``, frames rendered upside down)."""
    src = tmp_path / "libero.hdf5"
    write_robomimic_hdf5(
        src, lengths=[5, 4], image_hw=(64, 96), flipped=True, instruction="put the bowl on the plate"
    )
    source, units, spec, record = h5.plan(
        src,
        flip_images=True,
        state_keys="robot0_eef_pos,robot0_gripper_qpos",
        cameras="scene=agentview_image",
        embodiment="libero_panda",
    )
    out = tmp_path / "out"
    run_import(source, units, out, spec, record, workers=1)
    manifest = load_manifest(out)
    assert manifest["import"]["flip_images"] is True and manifest["embodiments"]["libero_panda"][
        "cameras"
    ] == ["scene"]
    for ep, sample in enumerate(samples(out)):
        state, _, meta = decode_trajectory(sample, "x")
        assert state.shape[1] == 5 and meta["instruction"] == "put the bowl on the plate"
        assert meta["image_flipped"] is True and meta["source_image_hw"] == {"scene": [64, 96]}
        for t in range(len(state)):  # flipped back, then letterboxed like the original would be
            np.testing.assert_array_equal(
                decode_png(sample[f"scene.{t:05d}.png"], "x"), fit_image(frame(t, ep, 64, 96), 64, "pad")
            )
    registry = EmbodimentRegistry.from_dicts(manifest["embodiments"].values())
    stream = WindowStream(
        [shard_source(out, "observation", "all", 0.0)],
        registry,
        None,
        view="observation",
        split="all",
        chunk_len=2,
        history_len=1,
        batch_size=3,
        windows_per_episode=2,
        shuffle_buffer=4,
    )
    batch = next(iter(stream))
    assert batch["images"].shape == (3, 1, 3, 64, 64)


def test_hdf5_errors(tmp_path: Path) -> None:
    src = tmp_path / "bad.hdf5"
    write_robomimic_hdf5(src, lengths=[4, 5, 3])
    with pytest.raises(ImportFailure, match=rf"{src}: demo_0: no language instruction .* pass --instruction"):
        h5.plan(src)
    with pytest.raises(ImportFailure, match=r"no filter 'mask/train'"):
        h5.plan(src, instruction="x", filter_key="train")
    with pytest.raises(ImportFailure, match=r"obs key 'joint_pos' missing"):
        h5.plan(src, instruction="x", state_keys="joint_pos")
    with h5py.File(src, "a") as f:
        del f["data/demo_1/actions"]
        f["data/demo_1"].create_dataset("actions", data=np.zeros((4, 7)))
    source, units, spec, record = h5.plan(src, instruction="x")
    with pytest.raises(ImportFailure, match=rf"{src}: demo_1: 5 states but 4 actions"):
        run_import(source, units, tmp_path / "o2", spec, record, workers=1)
    assert not (tmp_path / "o2").exists()
    with h5py.File(src, "a") as f:
        f.move("data/demo_2", "data/demo_5")
    with pytest.raises(ImportFailure, match=rf"{src}: data: episode index gap: episode 2 is missing"):
        h5.plan(src, instruction="x")
