"""Video-native observation shards (issue 23): lossless video decodes bit-equal to the PNG frames and the
observation view's batches are identical; lossy video stays within a stated PSNR; the trajectory view never
touches video; ``data convert`` round-trips; ``data check`` gives one line for a broken video member; the
per-worker frame cache is bounded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from tiny_video import encoded_video

from actionprior.data import shards, video_frames
from actionprior.data.check import check_dataset
from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.schema import DataError
from actionprior.data.shards import iter_episodes
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.data.tario import iter_tar_samples
from actionprior.data.video_frames import (
    FrameCache,
    VideoMember,
    VideoSettings,
    decode_video_frames,
    encode_video,
)
from actionprior.data.writer import DatasetWriter

LOSSLESS = VideoSettings(lossless=True, gop=4)
# The stated bound for the default lossy setting (CRF 23, yuv420p: chroma at half resolution) on a smooth scene
# (32.0 dB measured; 34.5 dB on 224 px simulator renders, benchmarks/data_throughput.py --storage).
LOSSY_MIN_PSNR_DB = 30.0


def smooth_frames(length: int, h: int, w: int) -> np.ndarray:
    """A moving soft-edged disc on gradients: temporally coherent like a camera, unlike the synthetic blocky
    noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((length, h, w, 3), dtype=np.uint8)
    for t in range(length):
        r = np.sqrt((y - h * 0.5) ** 2 + (x - w * (0.2 + 0.6 * t / max(1, length - 1))) ** 2)
        disc = np.clip((h / 5 - r) / 3 + 0.5, 0, 1)
        out[t, ..., 0] = np.clip(255 * x / w, 0, 255)
        out[t, ..., 1] = np.clip(255 * y / h, 0, 255)
        out[t, ..., 2] = 40 + 190 * disc
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same episodes written with PNG frames and with lossless video."""
    root = tmp_path_factory.mktemp("video")
    kwargs = dict(episodes_per_embodiment=2, length_range=(9, 14), shard_sizes=(4, 2), image_size=16)
    write_synthetic_dataset(root / "png", **kwargs)
    write_synthetic_dataset(root / "video", video=LOSSLESS, **kwargs)
    return root / "png", root / "video"


def _module(path: Path, view: str = "observation", **kwargs) -> ActionPriorDataModule:
    args = dict(batch_size=6, num_workers=0, val_fraction=0.0, batches_per_epoch=3, shuffle_buffer=16)
    return ActionPriorDataModule([str(path)], view=view, **{**args, **kwargs})  # type: ignore[arg-type]


def test_lossless_video_round_trips_bit_equal_including_odd_non_square_sizes() -> None:
    frames = smooth_frames(11, 13, 22)
    data = encode_video(frames, VideoSettings(lossless=True, gop=3))
    assert np.array_equal(np.stack(decode_video_frames(data, "m", 11)), frames)
    # Sampled steps, in any order and repeated, seek to the key frame before each.
    steps = [10, 0, 4, 4, 7]
    got = decode_video_frames(data, "m", 11, steps, gop=3)
    assert all(np.array_equal(g, frames[t]) for g, t in zip(got, steps, strict=True))


def test_lossy_video_is_within_the_stated_psnr_and_much_smaller_than_png() -> None:
    from actionprior.data.schema import encode_png

    frames = smooth_frames(24, 48, 64)
    data = encode_video(frames, VideoSettings())
    decoded = np.stack(decode_video_frames(data, "m", 24))
    assert decoded.shape == frames.shape  # non-square, stored size kept
    assert psnr(decoded, frames) >= LOSSY_MIN_PSNR_DB
    png_bytes = sum(len(encode_png(f)) for f in frames)
    assert len(data) * 3 < png_bytes
    # Odd sizes (which 4:2:0 cannot hold) fall back to yuv444p and keep their size.
    odd = smooth_frames(6, 15, 21)
    assert np.stack(decode_video_frames(encode_video(odd, VideoSettings()), "m", 6)).shape == odd.shape


def test_observation_batches_and_episodes_are_identical_from_png_and_lossless_video(pair) -> None:
    png, video = pair
    manifest = json.loads((video / "manifest.json").read_text())
    assert manifest["frames"]["storage"] == "video" and manifest["frames"]["encoder"] == "libx264rgb"
    assert manifest["frames"]["gop"] == 4
    # One member per camera per episode, and the trajectory shards are byte-identical.
    sample = next(iter_tar_samples((video / "obs-00000.tar").read_bytes(), "obs"))
    assert sorted(k for k in sample if not k.startswith("__")) == [
        "action.npy",
        "meta.json",
        "scene.mp4",
        "state.npy",
        "wrist.mp4",
    ]
    for shard in manifest["shards"]:  # the same trajectory samples, member for member
        a, b = (list(iter_tar_samples((d / shard["traj"]).read_bytes(), "t")) for d in (png, video))
        assert [{k: v for k, v in s.items() if k != "__url__"} for s in a] == [
            {k: v for k, v in s.items() if k != "__url__"} for s in b
        ]
    for a, b in zip(_module(png).train_dataloader(), _module(video).train_dataloader(), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if hasattr(a[key], "shape"):
                assert a[key].shape == b[key].shape and (a[key] == b[key]).all(), key
            else:
                assert a[key] == b[key], key
    registry = _module(png).registry
    for a, b in zip(
        iter_episodes(png, registry, with_frames=True),
        iter_episodes(video, registry, with_frames=True),
        strict=True,
    ):
        assert a.key == b.key and a.frames.keys() == b.frames.keys()
        for cam in a.frames:
            assert np.array_equal(a.frames[cam], b.frames[cam])


def test_trajectory_view_never_touches_video(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    _, video = pair

    def refuse(*args, **kwargs):
        raise AssertionError("the trajectory view opened a video member")

    monkeypatch.setattr(video_frames.VideoMember, "__init__", refuse)
    monkeypatch.setattr(video_frames, "encode_video", refuse)
    batches = list(_module(video, view="trajectory").train_dataloader())
    assert len(batches) == 3 and "images" not in batches[0]
    # Nor does the trajectory view need the codec: a build without H.264 still trains Stage 1.
    monkeypatch.setattr(shards, "codec_problem", lambda name: "no h264 here")
    assert len(list(_module(video, view="trajectory").train_dataloader())) == 3
    with pytest.raises(DataError, match="no h264 here"):
        _module(video)


def test_convert_round_trip_and_check(pair, tmp_path: Path) -> None:
    from actionprior.data.convert import cli_main

    png, _ = pair
    assert (
        cli_main(
            [
                str(png),
                "--frames",
                "video",
                "--video-lossless",
                "--video-gop",
                "3",
                "--out",
                str(tmp_path / "v"),
            ]
        )
        == 0
    )
    assert cli_main([str(tmp_path / "v"), "--frames", "png", "--out", str(tmp_path / "p")]) == 0
    assert check_dataset(tmp_path / "v") == [] and check_dataset(tmp_path / "p") == []
    for name in ("v", "p"):
        assert (tmp_path / name / "stats.json").read_text() == (png / "stats.json").read_text()
    registry = _module(png).registry
    for a, b in zip(
        iter_episodes(png, registry, with_frames=True),
        iter_episodes(tmp_path / "p", registry, with_frames=True),
        strict=True,
    ):
        assert a.key == b.key and all(np.array_equal(a.frames[c], b.frames[c]) for c in a.frames)
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert manifest["converted_from"]["frames"] == {"storage": "png"} and manifest["frames"]["gop"] == 3
    # Refusals: one line each.
    assert cli_main([str(png), "--frames", "video", "--video-crf", "60", "--out", str(tmp_path / "x")]) == 2
    assert cli_main([str(png), "--frames", "video", "--out", str(png)]) == 2


def test_resume_with_other_frame_storage_is_refused(tmp_path: Path) -> None:
    from actionprior.data.synthetic import synthetic_registry

    write_synthetic_dataset(
        tmp_path, episodes_per_embodiment=1, length_range=(3, 4), image_size=8, video=VideoSettings()
    )
    DatasetWriter(tmp_path, synthetic_registry(), video=VideoSettings())  # the same settings resume
    with pytest.raises(
        DataError, match=r"stores frames as video \(libx264, CRF 23, GOP 8\) but this run writes PNG"
    ):
        DatasetWriter(tmp_path, synthetic_registry())


def _replace_member(path: Path, field: str, content) -> None:
    """Rewrite the first sample's ``field`` of a shard with ``content(old, sample)``."""
    samples = [dict(s) for s in iter_tar_samples(path.read_bytes(), str(path))]
    samples[0][field] = content(samples[0][field], samples[0])
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            s.pop("__url__")
            sink.write(s)


def _without_obs_checksums(data: Path) -> None:
    """Drop the obs checksums (as if written before checksums) so that only the member checks speak."""
    manifest = json.loads((data / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard["checksums"].pop("obs")
    (data / "manifest.json").write_text(json.dumps(manifest))


def _length(sample) -> int:
    return json.loads(sample["meta.json"])["length"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("truncated", lambda old, s: old[: len(old) // 2], "scene.mp4: .*(truncated or corrupt)"),
        (
            "frame-count",
            lambda old, s: encode_video(smooth_frames(_length(s) - 1, 16, 16), LOSSLESS),
            "scene.mp4: video holds .* frames but meta.json length is",
        ),
        ("garbage", lambda old, s: bytes(range(256)) * 8, "scene.mp4: cannot open video member"),
        (
            "other-codec",
            lambda old, s: encoded_video(_length(s), "mpeg4", size=16),
            "scene.mp4: video codec 'mpeg4' is not one actionprior decodes",
        ),
    ],
)
def test_check_gives_one_line_per_broken_video_member(pair, tmp_path: Path, name, content, message) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(pair[1], data)
    _without_obs_checksums(data)
    _replace_member(data / "obs-00000.tar", "scene.mp4", content)
    problems = check_dataset(data)
    assert len(problems) == 1, problems
    assert problems[0].file.endswith("obs-00000.tar") and problems[0].key
    import re

    assert re.search(message, problems[0].message), problems[0].message
    assert "\n" not in problems[0].message
    # The stream refuses the same member in one line naming it.
    with pytest.raises(DataError, match="obs-00000.tar"):
        list(iter_episodes(data, _module(pair[0]).registry, with_frames=True))


def test_check_names_a_codec_this_pyav_lacks(pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import av

    data = tmp_path / "data"
    shutil.copytree(pair[1], data)
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"h264"})
    problems = check_dataset(data)
    assert len(problems) == 1 and problems[0].file.endswith("manifest.json")
    assert "video codec 'h264' is not available in this PyAV build" in problems[0].message
    with pytest.raises(DataError, match="manifest.json: video codec 'h264' is not available"):
        _module(data)


def test_frame_cache_is_bounded_and_spares_decoding() -> None:
    frames = smooth_frames(12, 16, 16)
    data = encode_video(frames, VideoSettings(lossless=True, gop=4))
    one = frames[0].nbytes
    cache = FrameCache(max_bytes=5 * one, max_entries=100)
    got = decode_video_frames(data, "m", 12, [6], cache, gop=4)  # decodes 4, 5, 6 from the key frame at 4
    assert np.array_equal(got[0], frames[6]) and len(cache) == 3 and cache.nbytes == 3 * one
    with VideoMember(data, "m", 12, gop=4) as member:
        hits = cache.hits
        out = member.frames([5, 4], cache, key="m")
        assert cache.hits == hits + 2 and np.array_equal(out[5], frames[5])
    decode_video_frames(data, "m", 12, [11], cache, gop=4)  # 8..11: the oldest entries go
    assert cache.nbytes <= 5 * one and len(cache) == 5
    small = FrameCache(max_bytes=10 * one, max_entries=2)
    decode_video_frames(data, "m", 12, [3], small, gop=4)
    assert len(small) == 2
    with pytest.raises(DataError, match="frame 12 asked of a 12-step episode"):
        decode_video_frames(data, "m", 12, [12])


def test_settings_are_validated() -> None:
    with pytest.raises(DataError, match="CRF must be in"):
        VideoSettings(crf=52)
    with pytest.raises(DataError, match="GOP"):
        VideoSettings(gop=0)
    assert video_frames.frames_record_problems({"storage": "video", "codec": "vp8"})
    assert VideoSettings.from_record(VideoSettings(crf=30, gop=2).record(), "m") == VideoSettings(
        crf=30, gop=2
    )


@pytest.mark.sim
def test_collect_writes_video_shards(tmp_path: Path, capsys) -> None:
    from actionprior.sim.collect import cli_main

    out = tmp_path / "sim"
    argv = ["--only", "metaworld_sawyer/drawer-open", "--episodes-per-task", "1", "--workers", "1"]
    assert (
        cli_main([*argv, "--image-size", "32", "--out", str(out), "--frames", "video", "--video-gop", "4"])
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames"]["storage"] == "video" and manifest["frames"]["gop"] == 4
    sample = next(iter_tar_samples((out / manifest["shards"][0]["obs"]).read_bytes(), "obs"))
    assert {k for k in sample if k.endswith(".mp4")} == {"scene.mp4", "wrist.mp4"}
    assert not any(k.endswith(".png") for k in sample)
    assert check_dataset(out) == []
    # Resuming with PNG frames, or video without images, is refused in one line.
    assert cli_main([*argv, "--image-size", "32", "--out", str(out)]) == 2
    assert "stores frames as video" in " ".join(capsys.readouterr().out.split())
    assert cli_main([*argv, "--out", str(tmp_path / "x"), "--frames", "video", "--no-images"]) == 2
    assert "--no-images renders none" in " ".join(capsys.readouterr().out.split())
