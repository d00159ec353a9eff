"""``actionprior data import lerobot``: the LeRobot v3.0 fixture written by lerobot itself, plus v2.1 layouts
made here (see tests/fixtures/import_layouts.py for where each layout comes from)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures.import_layouts import expected_centre, frame, square_centre, state_action, write_lerobot_v21

from actionprior.cli import main as actionprior_main
from actionprior.data.check import check_dataset
from actionprior.data.images import fit_image
from actionprior.data.importers import cli_main
from actionprior.data.importers import lerobot as lr
from actionprior.data.importers.common import PARTIAL_SUFFIX, run_import
from actionprior.data.schema import decode_png, decode_trajectory
from actionprior.data.shards import shard_source
from actionprior.data.stream import WindowStream
from actionprior.data.tario import iter_tar_samples
from actionprior.data.writer import load_manifest
from actionprior.embodiments import EmbodimentRegistry

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot" / "v3_single_arm_video"
EXPECTED = json.loads((FIXTURE / "_expected.json").read_text())


def import_lerobot(src: Path, out: Path, workers: int = 1, **kwargs) -> Path:
    source, units, spec, record = lr.plan(src, **kwargs)
    run_import(source, units, out, spec, record, workers=workers)
    return out


def episodes_of(out: Path) -> list[tuple[np.ndarray, np.ndarray, dict, dict]]:
    """(state, action, meta, raw obs sample) of every episode, in manifest order."""
    result = []
    for shard in load_manifest(out)["shards"]:
        path = out / shard["obs"]
        for sample in iter_tar_samples(path.read_bytes(), str(path)):
            state, action, meta = decode_trajectory(sample, str(path))
            result.append((state, action, meta, sample))
    return result


def frames_of(sample: dict, camera: str, length: int) -> np.ndarray:
    return np.stack([decode_png(sample[f"{camera}.{t:05d}.png"], camera) for t in range(length)])


@pytest.fixture(scope="module")
def v3_import(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_lerobot(FIXTURE, tmp_path_factory.mktemp("v3") / "franka")


def test_v3_fixture_matches_expected_json(v3_import: Path) -> None:
    episodes = episodes_of(v3_import)
    assert len(episodes) == EXPECTED["total_episodes"] == 3
    for (state, action, meta, _), exp in zip(episodes, EXPECTED["episodes"], strict=True):
        assert len(state) == len(action) == meta["length"] == exp["length"]
        assert meta["instruction"] == meta["task"] == exp["task"]
        assert meta["source_episode"] == exp["episode_index"]
        assert meta["control_rate_hz"] == EXPECTED["fps"]
        # bit-exact float32 values as lerobot wrote them
        np.testing.assert_array_equal(state[0], np.float32(exp["first_state"]))
        np.testing.assert_array_equal(state[-1], np.float32(exp["last_state"]))
        np.testing.assert_array_equal(action[0], np.float32(exp["first_action"]))
        np.testing.assert_array_equal(action[-1], np.float32(exp["last_action"]))
    sample = episodes[0][3]
    for short, key in (("front", "observation.images.front"), ("wrist", "observation.images.wrist")):
        cam = EXPECTED["episode0_frame0_cameras"][key]
        first = decode_png(sample[f"{short}.00000.png"], short).astype(np.float64)
        assert first.shape == (64, 64, 3)
        # video is lossy; lerobot's own decode is the reference (PyAV decodes the same pixels)
        assert abs(first.mean() / 255 - cam["mean"]) < 2 / 255
        np.testing.assert_allclose(first.mean((0, 1)) / 255, cam["per_channel_mean_rgb"], atol=2 / 255)
        assert abs(first.mean() - cam["source_mean_0_255"]) < 4


def test_v3_every_row_gets_the_frame_at_its_timestamp(v3_import: Path) -> None:
    """Episodes 1 and 2 start mid-file (from_timestamp 2.3 s, 6.0 s): the square position encodes (t, ep)."""
    for ep, (state, _, _, sample) in enumerate(episodes_of(v3_import)):
        for short, key in (("front", "observation.images.front"), ("wrist", "observation.images.wrist")):
            size = EXPECTED["episode0_frame0_cameras"][key]["square_size"]
            frames = frames_of(sample, short, len(state))
            for t, img in enumerate(frames):
                # front: red square on grey; wrist: yellow (240, 220, 40) on blue (20, 60, 120)
                got = square_centre(img) if short == "front" else square_centre(img[..., [0, 2]], 60)
                want = expected_centre(t, ep, 64, 64, size)
                # the neighbouring frames are 2 rows and 3 columns away
                assert np.abs(np.subtract(got, want)).max() < 1.5, (ep, t, short, got, want)


def test_v3_spec_manifest_check_and_streaming(v3_import: Path) -> None:
    spec = yaml.safe_load((v3_import / "embodiment.yaml").read_text())
    assert spec["name"] == "franka_sim"
    assert spec["state_names"] == EXPECTED["features"]["observation.state"]["names"]
    assert spec["action_names"] == EXPECTED["features"]["action"]["names"]
    assert spec["control_rate_hz"] == 10.0
    assert spec["cameras"] == ["front", "wrist"]
    assert spec["gripper_state_dims"] == [7] and spec["gripper_action_dims"] == [6]
    assert spec["sim"]["image"]["resize"] == "pad" and spec["sim"]["image"]["size"] == 64
    manifest = load_manifest(v3_import)
    assert manifest["import"]["image"]["resize"] == "pad"
    assert manifest["embodiments"]["franka_sim"]["state_names"] == spec["state_names"]
    assert manifest["num_episodes"] == 3 and manifest["num_transitions"] == 90
    assert check_dataset(v3_import) == []
    assert not (v3_import.parent / (v3_import.name + PARTIAL_SUFFIX)).exists()

    registry = EmbodimentRegistry.from_dicts(manifest["embodiments"].values())
    source = shard_source(v3_import, "observation", "all", 0.0)
    stream = WindowStream(
        [source],
        registry,
        None,
        view="observation",
        split="all",
        chunk_len=4,
        history_len=2,
        batch_size=5,
        windows_per_episode=2,
        shuffle_buffer=8,
        camera_names=["front", "wrist"],
    )
    batch = next(iter(stream))
    assert batch["images"].shape == (5, 2, 3, 64, 64)
    assert batch["state"].shape[0] == 5 and batch["action"].shape[1:] == (4, 7)
    assert batch["camera_mask"].all()
    assert set(batch["instruction"]) <= {e["task"] for e in EXPECTED["episodes"]}


def test_cli_import_is_resumable_and_deterministic(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    argv = ["lerobot", str(FIXTURE), "--out", str(out), "--shard-episodes", "1", "--workers", "2"]
    assert actionprior_main(["data", "import", *argv]) == 0  # through the `actionprior` command's table
    assert "imported 3 episodes, 90 steps" in capsys.readouterr().out
    assert actionprior_main(["data", "check", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    assert len(load_manifest(out)["shards"]) == 3
    assert cli_main(argv) == 0  # the same command again: nothing to do
    assert "already imported" in capsys.readouterr().out

    # interrupt after the first shard, then resume with the same flags (and another worker count)
    out2 = tmp_path / "resumed"
    source, units, spec, record = lr.plan(FIXTURE, shard_episodes=1)

    def stop(unit):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_import(source, units, out2, spec, record, workers=1, on_unit=stop)
    assert not out2.exists()  # nothing that looks like a dataset
    partial = tmp_path / ("resumed" + PARTIAL_SUFFIX)
    assert len(load_manifest(partial)["shards"]) == 1
    with pytest.raises(lr.ImportFailure, match="interrupted import with other settings"):
        other = lr.plan(FIXTURE, shard_episodes=1, image_size=32)
        run_import(*other[:2], out2, *other[2:], workers=1)
    report = run_import(source, units, out2, spec, record, workers=1)
    assert (report.units_run, report.units_skipped) == (2, 1)
    assert check_dataset(out2) == []
    for a, b in zip(episodes_of(out), episodes_of(out2), strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2] == b[2]
        fields = sorted(k for k in a[3] if not k.startswith("__"))
        assert fields == sorted(k for k in b[3] if not k.startswith("__"))
        assert all(a[3][k] == b[3][k] for k in fields)  # identical bytes of every field, PNGs included
    assert (out / "stats.json").read_text() == (out2 / "stats.json").read_text()


def test_v21_video_non_square_other_fps(tmp_path: Path) -> None:
    """LeRobot v2.1 (one parquet and one H.264 mp4 per episode), 15 fps, a 48x80 camera letterboxed to 64.

    Layout source: LeRobot's v2.1 format (lerobot 0.3.x ``LeRobotDataset``: ``meta/info.json`` data_path and
    video_path templates, ``meta/episodes.jsonl``, ``meta/tasks.jsonl``), see write_lerobot_v21."""
    src = tmp_path / "v21"
    lengths = [12, 9]
    write_lerobot_v21(
        src,
        lengths=lengths,
        fps=15,
        cameras={"observation.images.top": ("video", 48, 80), "observation.images.wrist": ("video", 32, 32)},
    )
    out = import_lerobot(src, tmp_path / "out", embodiment="so100_test")
    spec = yaml.safe_load((out / "embodiment.yaml").read_text())
    assert spec["control_rate_hz"] == 15.0
    assert spec["state_names"] == [
        "joint0",
        "joint1",
        "joint2",
        "joint3",
        "joint4",
        "gripper",
    ]  # {"motors": [...]}
    assert spec["gripper_state_dims"] == [5] and spec["gripper_action_dims"] == [4]
    assert spec["cameras"] == ["top", "wrist"]
    episodes = episodes_of(out)
    for ep, (state, action, meta, sample) in enumerate(episodes):
        exp_state, exp_action = state_action(ep, lengths[ep], 6, 5)
        np.testing.assert_array_equal(state, exp_state)
        np.testing.assert_array_equal(action, exp_action)
        assert meta["instruction"] == f"task number {ep}"
        assert meta["source_image_hw"] == {"top": [48, 80], "wrist": [32, 32]}
        top = frames_of(sample, "top", len(state))
        # pad: 48x80 -> 38x64 centred; rows 0..12 and 51..63 are black bars
        assert top.shape == (len(state), 64, 64, 3)
        assert (top[:, :13] == 0).all() and (top[:, 51:] == 0).all() and top[:, 13:51].min() > 0
        for t, img in enumerate(top):
            want = expected_centre(t, ep, 48, 80, scale=0.8, top=13)
            # the neighbouring frames are 1.6 rows and 2.4 columns away
            assert np.abs(np.subtract(square_centre(img), want)).max() < 1.2, (ep, t)
        wrist = frames_of(sample, "wrist", len(state))
        for t, img in enumerate(wrist):  # 32 -> 64: scaled by 2
            want = expected_centre(t, ep, 32, 32, scale=2.0)
            assert np.abs(np.subtract(square_centre(img), want)).max() < 1.5, (ep, t)
    # inference applies fit_image to full-size RGB frames: it must give what the import stored
    import av

    with av.open(str(src / "videos/chunk-000/observation.images.top/episode_000000.mp4")) as video:
        full = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    stored = frames_of(episodes[0][3], "top", lengths[0]).astype(int)
    at_inference = np.stack([fit_image(f, 64, "pad") for f in full]).astype(int)
    assert np.abs(stored - at_inference).mean() < 1.0
    assert check_dataset(out) == []


def test_v21_image_cameras_png_and_jpeg_crop(tmp_path: Path) -> None:
    """Cameras stored as PNG / JPEG bytes inside the parquet (dtype image); --resize crop.

    Layout source: LeRobot v2.1 image features, stored as Hugging Face ``datasets.Image`` structs
    ``{bytes, path}`` in the episode parquet."""
    src = tmp_path / "img"
    lengths = [5, 7, 4]
    write_lerobot_v21(
        src,
        lengths=lengths,
        fps=30,
        cameras={
            "observation.images.png_cam": ("png", 40, 40),
            "observation.images.jpg_cam": ("jpeg", 40, 60),
        },
    )
    out = import_lerobot(src, tmp_path / "out", resize="crop", image_size=40, episodes="1:3")
    manifest = load_manifest(out)
    assert manifest["import"]["image"]["resize"] == "crop" and manifest["import"]["episodes"] == [1, 2]
    episodes = episodes_of(out)
    assert [m["source_episode"] for _, _, m, _ in episodes] == [1, 2]
    for (state, _, _, sample), ep in zip(episodes, (1, 2), strict=True):
        png = frames_of(sample, "png_cam", len(state))
        np.testing.assert_array_equal(
            png, np.stack([frame(t, ep, 40, 40) for t in range(len(state))])
        )  # lossless
        jpg = frames_of(sample, "jpg_cam", len(state))
        expected = np.stack([fit_image(frame(t, ep, 40, 60), 40, "crop") for t in range(len(state))])
        assert np.abs(jpg.astype(int) - expected).mean() < 3  # JPEG q95, then the centre 40x40 cut
    assert check_dataset(out) == []


def test_fit_image_pad_and_crop() -> None:
    wide = np.full((30, 60, 3), 200, dtype=np.uint8)
    padded = fit_image(wide, 32, "pad")
    assert padded.shape == (32, 32, 3) and (padded[:8] == 0).all() and (padded[8:24] == 200).all()
    assert (padded[24:] == 0).all()
    cropped = fit_image(wide, 32, "crop")
    assert cropped.shape == (32, 32, 3) and (cropped == 200).all()
    same = np.zeros((32, 32, 3), dtype=np.uint8)
    assert fit_image(same, 32) is same


def test_given_spec_and_camera_mapping(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    data = {
        "name": "my_franka",
        "state_names": [f"s{i}" for i in range(8)],
        "action_names": [f"a{i}" for i in range(7)],
        "control_mode": "ee_delta",
        "control_rate_hz": 10,
        "gripper_action_dims": [6],
        "cameras": ["scene"],
    }
    spec_file.write_text(yaml.safe_dump(data))
    out = import_lerobot(
        FIXTURE, tmp_path / "out", spec_path=spec_file, cameras="scene=observation.images.front", episodes="0"
    )
    manifest = load_manifest(out)
    spec = manifest["embodiments"]["my_franka"]
    assert spec["control_mode"] == "ee_delta" and spec["cameras"] == ["scene"]
    ((state, _, meta, sample),) = episodes_of(out)
    assert meta["cameras"] == ["scene"] and len(state) == 23
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({**data, "state_names": ["s0"]}))
    with pytest.raises(lr.ImportFailure, match="state/action dims 1/7, the source has 8/7"):
        lr.plan(FIXTURE, spec_path=wrong, cameras="scene=observation.images.front")
