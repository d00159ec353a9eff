"""``actionprior data export lerobot``: our shards as a LeRobot v3.0 dataset.

Round trips through ``actionprior data import lerobot`` (states and actions bit-exact; frames identical with
``--frames images``, within a stated tolerance with AV1 video), and the written files checked against the
dataset LeRobot 0.4.4's own writer made (tests/fixtures/lerobot/v3_single_arm_video): info.json keys and
feature entries, Arrow schemas of the data, episode and task parquet files, statistics layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from actionprior.cli import main as actionprior_main
from actionprior.data.exporters import lerobot as ex
from actionprior.data.exporters import video
from actionprior.data.importers import lerobot as lr
from actionprior.data.importers.common import run_import
from actionprior.data.schema import DataError, Episode
from actionprior.data.shards import iter_episodes
from actionprior.data.splits import in_split
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.data.writer import load_manifest
from actionprior.embodiments import EmbodimentRegistry

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot" / "v3_single_arm_video"
EMBODIMENT = "synth_arm7"  # 9-D state, 7-D action, cameras scene and wrist
# AV1 at crf 30 (LeRobot's encoder settings) on the synthetic frames (8x8 blocks of random colour, the
# hardest case for 4:2:0 chroma): measured mean absolute error 5.6 of 255, per frame at most ~7.
VIDEO_MEAN_TOLERANCE = 8.0
VIDEO_FRAME_TOLERANCE = 12.0


def _read(path: Path) -> list[Episode]:
    manifest = load_manifest(path)
    registry = EmbodimentRegistry.from_dicts(manifest["embodiments"].values())
    return list(iter_episodes(path, registry, with_frames=True))


def _import(src: Path, out: Path) -> list[Episode]:
    source, units, spec, record = lr.plan(src)
    run_import(source, units, out, spec, record, workers=1)
    return _read(out)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Episode]]:
    """Three embodiments, 4 episodes each, 64x64 frames (AV1 needs frames of a real size)."""
    path = tmp_path_factory.mktemp("export") / "src"
    episodes = write_synthetic_dataset(path, episodes_per_embodiment=4, length_range=(8, 20), image_size=64)
    return path, [ep for ep in episodes if ep.embodiment == EMBODIMENT]


@pytest.fixture(scope="module")
def exported_images(dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("images") / "lerobot"
    ex.export(dataset[0], out, embodiment=EMBODIMENT, frames="images")
    return out


@pytest.fixture(scope="module")
def exported_video(dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("video") / "lerobot"
    ex.export(dataset[0], out, embodiment=EMBODIMENT, frames="video")
    return out


def test_images_round_trip_is_exact(dataset, exported_images: Path, tmp_path: Path) -> None:
    _, original = dataset
    back = _import(exported_images, tmp_path / "back")
    assert len(back) == len(original) == 4
    for a, b in zip(original, back, strict=True):
        assert b.embodiment == EMBODIMENT  # robot_type
        np.testing.assert_array_equal(b.state, a.state)  # bit-exact float32
        np.testing.assert_array_equal(b.action, a.action)
        assert b.instruction == a.instruction
        assert b.control_rate_hz == a.control_rate_hz == 20.0
        assert sorted(b.frames) == ["scene", "wrist"]
        for cam in a.frames:
            np.testing.assert_array_equal(b.frames[cam], a.frames[cam])
    spec = EmbodimentRegistry.from_dicts(load_manifest(tmp_path / "back")["embodiments"].values())[EMBODIMENT]
    original_spec = EmbodimentRegistry.from_dicts(load_manifest(dataset[0])["embodiments"].values())[
        EMBODIMENT
    ]
    assert spec.state_names == original_spec.state_names
    assert spec.action_names == original_spec.action_names


@pytest.mark.timeout(300)
def test_video_round_trip_within_tolerance(dataset, exported_video: Path, tmp_path: Path) -> None:
    _, original = dataset
    back = _import(exported_video, tmp_path / "back")
    errors = []
    for a, b in zip(original, back, strict=True):
        np.testing.assert_array_equal(b.state, a.state)
        np.testing.assert_array_equal(b.action, a.action)
        for cam in a.frames:
            assert b.frames[cam].shape == a.frames[cam].shape
            diff = np.abs(b.frames[cam].astype(np.int16) - a.frames[cam].astype(np.int16)).mean(
                axis=(1, 2, 3)
            )
            assert diff.max() < VIDEO_FRAME_TOLERANCE, (cam, diff.max())
            errors.append(diff)
            # Each decoded frame is nearest to its own original: no frame of another step came back.
            to_all = np.abs(
                b.frames[cam][:, None].astype(np.int16) - a.frames[cam][None].astype(np.int16)
            ).mean(axis=(2, 3, 4))
            np.testing.assert_array_equal(to_all.argmin(axis=1), np.arange(len(a)))
    assert np.concatenate(errors).mean() < VIDEO_MEAN_TOLERANCE


def _fixture_info() -> dict:
    return json.loads((FIXTURE / "meta" / "info.json").read_text())


@pytest.mark.parametrize("mode", ["images", "video"])
def test_info_json_follows_the_v3_layout(mode: str, exported_images: Path, exported_video: Path) -> None:
    """Every key the importer and LeRobot read, with LeRobot's own values where they are fixed."""
    root = exported_images if mode == "images" else exported_video
    info = json.loads((root / "meta" / "info.json").read_text())
    reference = _fixture_info()
    assert list(info) == list(reference)  # same keys, same order as LeRobot writes them
    assert info["codebase_version"] == "v3.0"
    assert info["robot_type"] == EMBODIMENT
    assert info["fps"] == 20 and isinstance(info["fps"], int)
    for key in ("chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "data_path"):
        assert info[key] == reference[key]
    assert info["video_path"] == (reference["video_path"] if mode == "video" else None)
    assert info["total_episodes"] == 4 and info["splits"] == {"train": "0:4"}
    assert info["total_frames"] == sum(r["length"] for r in _read_lerobot_rows(root))
    assert info["total_tasks"] == len(pq.read_table(root / "meta" / "tasks.parquet"))

    features = info["features"]
    assert list(features) == [
        "observation.state",
        "action",
        "observation.images.scene",
        "observation.images.wrist",
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
    ]
    assert features["observation.state"] == {
        "dtype": "float32",
        "shape": [9],
        "names": [f"q{i}" for i in range(8)] + ["gripper_width"],
    }
    assert features["action"]["shape"] == [7] and features["action"]["names"][-1] == "gripper"
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert features[key] == reference["features"][key]
    for cam in ("scene", "wrist"):
        ft = features[f"observation.images.{cam}"]
        ref = reference["features"]["observation.images.front"]  # also 64x64x3 AV1 in the fixture
        assert ft["dtype"] == ("video" if mode == "video" else "image")
        assert ft["shape"] == [64, 64, 3] and ft["names"] == ref["names"]
        if mode == "video":
            assert ft["info"] == {**ref["info"], "video.fps": 20}
        else:
            assert "info" not in ft
    # the path templates resolve to the files that are there
    for row in pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist():
        data = info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        assert (root / data).is_file()
        if mode == "video":
            for cam in ("scene", "wrist"):
                key = f"observation.images.{cam}"
                video = info["video_path"].format(
                    video_key=key,
                    chunk_index=row[f"videos/{key}/chunk_index"],
                    file_index=row[f"videos/{key}/file_index"],
                )
                assert (root / video).is_file()


def _read_lerobot_rows(root: Path) -> list[dict]:
    return pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()


@pytest.mark.parametrize("mode", ["images", "video"])
def test_parquet_schemas_match_lerobots_own(mode: str, exported_images: Path, exported_video: Path) -> None:
    root = exported_images if mode == "images" else exported_video
    ours = pq.read_schema(root / "data" / "chunk-000" / "file-000.parquet")
    ref = pq.read_schema(FIXTURE / "data" / "chunk-000" / "file-000.parquet")
    for name in ref.names:
        if name in ("observation.state", "action"):
            assert ours.field(name).type.value_type == ref.field(name).type.value_type
            assert ours.field(name).type.value_field.name == "element"
        else:
            assert ours.field(name).type == ref.field(name).type, name
    hf = json.loads(ours.metadata[b"huggingface"])["info"]["features"]
    ref_hf = json.loads(ref.metadata[b"huggingface"])["info"]["features"]
    assert hf["timestamp"] == ref_hf["timestamp"] and hf["index"] == ref_hf["index"]
    assert hf["action"] == {**ref_hf["action"], "length": 7}
    if mode == "images":
        assert hf["observation.images.scene"] == {"_type": "Image"}  # as LeRobot's datasets.Image() writes
        assert str(ours.field("observation.images.scene").type) == "struct<bytes: binary, path: string>"
    else:
        assert not any(n.startswith("observation.images.") for n in ours.names)

    # episode metadata: the fixture's columns with our cameras (front/wrist -> scene/wrist)
    ref_eps = pq.read_schema(FIXTURE / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    ours_eps = pq.read_schema(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    expected = {re.sub(r"images\.front", "images.scene", f.name): f.type for f in ref_eps}
    if mode == "images":
        expected = {k: v for k, v in expected.items() if not k.startswith("videos/")}
    assert {f.name: f.type for f in ours_eps} == expected

    ref_tasks, our_tasks = (
        pq.read_schema(FIXTURE / "meta" / "tasks.parquet"),
        pq.read_schema(root / "meta" / "tasks.parquet"),
    )
    assert our_tasks.remove_metadata().equals(ref_tasks.remove_metadata())
    assert json.loads(our_tasks.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]


def test_rows_stats_and_episode_metadata(dataset, exported_images: Path) -> None:
    _, original = dataset
    table = pq.read_table(exported_images / "data" / "chunk-000" / "file-000.parquet")
    state = np.stack(table["observation.state"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(state, np.concatenate([e.state for e in original]))
    lengths = [len(e) for e in original]
    np.testing.assert_array_equal(table["index"].to_numpy(), np.arange(sum(lengths)))
    np.testing.assert_array_equal(
        table["frame_index"].to_numpy(), np.concatenate([np.arange(n) for n in lengths])
    )
    np.testing.assert_array_equal(
        table["timestamp"].to_numpy(),
        np.concatenate([(np.arange(n) / 20.0).astype(np.float32) for n in lengths]),
    )
    tasks = pq.read_table(exported_images / "meta" / "tasks.parquet").to_pylist()
    by_index = {t["task_index"]: t["__index_level_0__"] for t in tasks}
    rows = _read_lerobot_rows(exported_images)
    start = 0
    for i, (row, ep) in enumerate(zip(rows, original, strict=True)):
        assert row["episode_index"] == i and row["length"] == len(ep) and row["tasks"] == [ep.instruction]
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (start, start + len(ep))
        assert by_index[table["task_index"][start].as_py()] == ep.instruction
        np.testing.assert_allclose(row["stats/action/mean"], ep.action.astype(np.float64).mean(0))
        assert row["stats/action/count"] == [len(ep)]
        assert np.shape(row["stats/observation.images.scene/mean"]) == (3, 1, 1)
        start += len(ep)

    stats = json.loads((exported_images / "meta" / "stats.json").read_text())
    ref = json.loads((FIXTURE / "meta" / "stats.json").read_text())
    assert set(stats) == set(ref) - {"observation.images.front"} | {"observation.images.scene"}
    for feature, values in stats.items():
        assert list(values) == list(ref[feature if feature in ref else "observation.images.front"])
    actions = np.concatenate([e.action for e in original]).astype(np.float64)
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(stats["action"]["min"], actions.min(0))
    np.testing.assert_array_equal(stats["action"]["max"], actions.max(0))
    assert stats["action"]["count"] == [sum(lengths)]
    pixels = np.concatenate([e.frames["wrist"].reshape(-1, 3) for e in original]).astype(np.float64) / 255
    np.testing.assert_allclose(np.ravel(stats["observation.images.wrist"]["mean"]), pixels.mean(0), rtol=1e-9)
    assert np.shape(stats["observation.images.wrist"]["q99"]) == (3, 1, 1)
    assert stats["episode_index"]["max"] == [3] and isinstance(stats["episode_index"]["min"][0], int)


def test_split_by_embodiment_and_train_split(dataset, tmp_path: Path) -> None:
    src = dataset[0]
    reports = ex.export(src, tmp_path / "all", split_by_embodiment=True, frames="images")
    names = ["synth_arm4", "synth_arm7", "synth_arm8"]
    assert [r.embodiment for r in reports] == names
    for name, dims in zip(names, ([6, 4], [9, 7], [11, 8]), strict=True):
        info = json.loads((tmp_path / "all" / name / "meta" / "info.json").read_text())
        assert info["robot_type"] == name
        assert [
            info["features"]["observation.state"]["shape"][0],
            info["features"]["action"]["shape"][0],
        ] == dims
        assert info["total_episodes"] == 4

    keys = [e.key for e in dataset[1]]
    train = [k for k in keys if in_split(k, "train", 0.5)]
    assert 0 < len(train) < len(keys)  # the split is not trivial for these keys
    ex.export(
        src, tmp_path / "train", embodiment=EMBODIMENT, frames="images", split="train", val_fraction=0.5
    )
    ex.export(src, tmp_path / "val", embodiment=EMBODIMENT, frames="images", split="val", val_fraction=0.5)
    infos = [json.loads((tmp_path / s / "meta" / "info.json").read_text()) for s in ("train", "val")]
    assert infos[0]["total_episodes"] == len(train)
    assert infos[0]["total_episodes"] + infos[1]["total_episodes"] == len(keys)


def test_files_roll_over_like_lerobots(dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiny size limits the data and video files roll over (data: at every episode; video: once the
    encoder has emitted packets, it holds a few dozen frames back); the import reads them all."""
    monkeypatch.setattr(ex, "DATA_FILES_SIZE_IN_MB", 1e-4)
    monkeypatch.setattr(ex, "VIDEO_FILES_SIZE_IN_MB", 1e-4)
    out = tmp_path / "rolled"
    ex.export(dataset[0], out, embodiment=EMBODIMENT, frames="video")
    rows = _read_lerobot_rows(out)
    assert [r["data/file_index"] for r in rows] == [0, 1, 2, 3]
    assert len(list((out / "data" / "chunk-000").glob("file-*.parquet"))) == 4
    prefix = "videos/observation.images.wrist/"
    files = [r[prefix + "file_index"] for r in rows]
    assert files[-1] > 0 and files == sorted(files)
    for previous, row in zip(rows, rows[1:], strict=False):
        new_file = row[prefix + "file_index"] != previous[prefix + "file_index"]
        assert row[prefix + "from_timestamp"] == (0.0 if new_file else previous[prefix + "to_timestamp"])
    back = _import(out, tmp_path / "back")
    for a, b in zip(dataset[1], back, strict=True):
        np.testing.assert_array_equal(b.action, a.action)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = actionprior_main(["data", "export", "lerobot", *argv])
    return code, capsys.readouterr().err.strip()


def test_errors_are_one_line(dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = str(dataset[0])
    code, err = _cli([src, "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds 3 embodiments (synth_arm4, synth_arm7, synth_arm8)" in err and "--embodiment" in err

    code, err = _cli([src, "--out", str(tmp_path / "a"), "--embodiment", "panda"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "no episodes of embodiment 'panda'" in err and "synth_arm7" in err

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, err = _cli([src, "--out", str(busy), "--embodiment", EMBODIMENT], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "exists and is not empty" in err
    assert (busy / "keep.txt").read_text() == "mine" and sorted(p.name for p in busy.iterdir()) == [
        "keep.txt"
    ]

    code, err = _cli(
        [src, "--out", str(tmp_path / "b"), "--embodiment", EMBODIMENT, "--split-by-embodiment"], capsys
    )
    assert code == 2 and "exclude each other" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_writes_a_dataset(dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    out.mkdir()  # an existing empty folder is fine
    code = actionprior_main(
        [
            "data",
            "export",
            "lerobot",
            str(dataset[0]),
            "--out",
            str(out),
            "--embodiment",
            EMBODIMENT,
            "--frames",
            "images",
        ]
    )
    assert code == 0
    assert "exported 4 episodes" in capsys.readouterr().out
    assert (out / "meta" / "info.json").is_file() and not out.with_name("cli.partial").exists()


@pytest.mark.timeout(300)
def test_a_stuck_encode_is_killed_and_run_again(tmp_path: Path) -> None:
    """SVT-AV1 can deadlock flushing a stream; an encode past its time limit is killed and retried, and
    after the last try the export stops with one line instead of hanging."""
    frames = np.stack([np.full((64, 64, 3), 10 * t, dtype=np.uint8) for t in range(6)])
    # A limit no encode can meet (the worker takes longer than that just to start): every try is killed.
    impatient = video.EpisodeEncoder(timeout_s=0.001, per_frame_s=0.0, tries=2)
    with pytest.raises(DataError, match=r"the AV1 encoder hung 2 times .*--frames images"):
        impatient.encode(tmp_path / "a.mp4", frames, 20.0)
    assert impatient.restarts == 2 and not (tmp_path / "a.mp4").exists()
    impatient.close()
    encoder = video.EpisodeEncoder()
    try:
        assert encoder.encode(tmp_path / "b.mp4", frames, 20.0) == (tmp_path / "b.mp4").stat().st_size > 0
    finally:
        encoder.close()
    assert encoder.restarts == 0
