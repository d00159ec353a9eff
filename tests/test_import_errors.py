"""Bad input to ``actionprior data import``: one line naming the file and episode; nothing at ``--out``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from actionprior.data.importers import cli_main

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot" / "v3_single_arm_video"
DATA = "data/chunk-000/file-000.parquet"
FRONT = "videos/observation.images.front/chunk-000/file-000.mp4"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(FIXTURE, copy)
    return copy


def run_failing(src: Path, capsys, *extra: str) -> str:
    out = src.parent / "out"
    code = cli_main(["lerobot", str(src), "--out", str(out), "--workers", "1", *extra])
    text = capsys.readouterr().out.strip()
    assert code == 2, text
    error_lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and error_lines[0] == text.splitlines()[-1], text
    assert not (out / "manifest.json").exists()  # never something that looks like a dataset
    return error_lines[0]


def rewrite_parquet(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def test_truncated_video(src: Path, capsys) -> None:
    video = src / FRONT
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    line = run_failing(src, capsys)
    assert str(video) in line and "episode" in line
    assert "video" in line


def test_video_missing_its_tail(src: Path, capsys, tmp_path: Path) -> None:
    """A video that decodes but stops early: the rows past its end have no frame near their timestamp."""
    import av

    video = src / FRONT
    with av.open(str(FIXTURE / FRONT)) as inp, av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == 70:  # episode 2 spans frames 60..89
                break
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), "rgb24")
            ):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    line = run_failing(src, capsys)
    assert f"{video}: episode 2 'observation.images.front': no video frame within 50 ms of t=7.000 s" in line


def test_parquet_missing_action_column(src: Path, capsys) -> None:
    rewrite_parquet(src / DATA, lambda t: t.drop_columns(["action"]))
    line = run_failing(src, capsys)
    assert f"{src / DATA}: episode 0: column 'action' missing" in line


def test_episode_index_gap(src: Path, capsys) -> None:
    rewrite_parquet(src / EPISODES, lambda t: t.filter(pc.not_equal(t["episode_index"], 1)))
    line = run_failing(src, capsys)
    assert f"{src / 'meta' / 'episodes'}: episode index gap: episode 1 is missing (next present is 2)" in line


def test_nan_in_state(src: Path, capsys) -> None:
    def poison(table: pa.Table) -> pa.Table:
        state = np.stack(table["observation.state"].to_pylist()).astype(np.float32)
        state[65, 2] = np.nan  # episode 2, t=5
        column = pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), 8)
        return table.set_column(
            table.schema.get_field_index("observation.state"), "observation.state", column
        )

    rewrite_parquet(src / DATA, poison)
    line = run_failing(src, capsys)
    assert f"{src / DATA}: episode 2: state has 1 NaN/Inf values (first at t=5, dim=2)" in line


def test_rows_disagree_with_episode_length(src: Path, capsys) -> None:
    rewrite_parquet(src / DATA, lambda t: t.filter(pc.not_equal(t["index"], 40)))  # drop a row of episode 1
    line = run_failing(src, capsys)
    assert f"{src / DATA}: episode 1: 36 rows in the data, the episode metadata says 37" in line


def test_unsupported_version_and_missing_feature(src: Path, capsys) -> None:
    info_path = src / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    line = run_failing(src, capsys)
    assert f"{info_path}: codebase_version 'v1.6' is not supported (supported: v2.0, v2.1, v3.0)" in line
    info_path.write_text(json.dumps(info))
    line = run_failing(src, capsys, "--state-key", "observation.joints")
    assert f"{info_path}: feature 'observation.joints' not found" in line


def test_failed_import_can_be_rerun_after_the_fix(src: Path, capsys) -> None:
    """A failure in the third shard leaves OUT.partial (two shards); fixing the source and re-running resumes."""
    original = (src / DATA).read_bytes()
    rewrite_parquet(src / DATA, lambda t: t.filter(pc.not_equal(t["index"], 89)))  # episode 2 one row short
    run_failing(src, capsys, "--shard-episodes", "1")
    partial = src.parent / "out.partial"
    shards = json.loads((partial / "manifest.json").read_text())["shards"]
    assert [s["name"] for s in shards] == ["franka_sim_000000", "franka_sim_000001"]
    (src / DATA).write_bytes(original)
    argv = ["lerobot", str(src), "--out", str(src.parent / "out"), "--workers", "1", "--shard-episodes", "1"]
    assert cli_main(argv) == 0
    assert "1 shards written, 2 resumed" in capsys.readouterr().out
    assert not partial.exists()
