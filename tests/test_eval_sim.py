"""A short closed-loop evaluation in the real simulators, end to end through `actionprior eval`.

In-process (`--workers 0`) to stay quick; the worker-process path is covered by test_eval_rollout.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageSequence
from policy_builders import write_tiny_checkpoint

pytestmark = pytest.mark.sim
pytest.importorskip("mujoco")
pytest.importorskip("metaworld")
pytest.importorskip("robosuite")

TASKS = ["metaworld_sawyer/drawer-open", "robosuite_panda_osc/lift"]


def test_eval_cli_on_two_simulators_writes_report_and_real_videos(tmp_path) -> None:
    from actionprior.embodiments import EmbodimentRegistry
    from actionprior.evaluation.evaluate import cli_main

    registry = EmbodimentRegistry.from_dir(names=["metaworld_sawyer", "robosuite_panda_osc"])
    ckpt = write_tiny_checkpoint(tmp_path / "sim.ckpt", registry=registry, cameras=("scene", "wrist"))
    out = tmp_path / "eval"
    argv = ["--ckpt", str(ckpt), "--only", *TASKS, "--episodes-per-task", "2", "--max-steps", "6"]
    argv += [
        "--workers",
        "0",
        "--out",
        str(out),
        "--image-size",
        "32",
        "--history-len",
        "2",
        "--replan-every",
        "4",
    ]
    assert cli_main(argv) == 0

    report = json.loads((out / "report.json").read_text())
    assert {(r["embodiment"], r["task"]) for r in report["per_task"]} == {tuple(t.split("/")) for t in TASKS}
    assert report["overall"]["episodes"] == 4 and len(report["episodes"]) == 4
    assert all(r["episodes"] == 2 and 0.0 <= r["success_rate"] <= 1.0 for r in report["per_task"])
    assert set(report["per_embodiment"]) == {"metaworld_sawyer", "robosuite_panda_osc"}
    assert report["meta"]["policy"]["image_size"] == 32 and report["meta"]["policy"]["replan_every"] == 4
    # 6 steps with replan_every=4: two chunks, unless the task was solved on the way
    assert all(e["replans"] == -(-e["steps"] // 4) for e in report["episodes"])
    assert (out / "success.png").stat().st_size > 0 and list(
        (out / "tensorboard").glob("events.out.tfevents.*")
    )

    videos = sorted((out / "videos").glob("*.gif"))
    assert len(videos) == 2 and all(str(v) in report["artifacts"]["videos"] for v in videos)
    for video in videos:
        with Image.open(video) as gif:
            frames = np.stack(
                [np.asarray(f.convert("RGB"), dtype=np.float32) for f in ImageSequence.Iterator(gif)]
            )
        steps = next(
            e["steps"]
            for e in report["episodes"]
            if video.name.startswith(f"{e['embodiment']}__{e['task']}__")
        )
        assert len(frames) == steps + 1
        # rendered scenes, not blank or saturated canvases: mid-range brightness and real contrast
        assert 20 < frames.mean() < 235 and frames.std() > 15
        assert len(np.unique(frames[0].reshape(-1, 3), axis=0)) > 50
        # the robot moves: consecutive frames differ
        assert np.abs(np.diff(frames, axis=0)).mean() > 0.1


def test_eval_cli_rtc_under_a_simulated_delay_reports_smoothness(tmp_path) -> None:
    from actionprior.embodiments import EmbodimentRegistry
    from actionprior.evaluation.evaluate import EvaluationError, cli_main

    registry = EmbodimentRegistry.from_dir(names=["robosuite_panda_osc"])
    ckpt = write_tiny_checkpoint(tmp_path / "sim.ckpt", registry=registry, cameras=("scene", "wrist"))
    out = tmp_path / "eval"
    argv = ["--ckpt", str(ckpt), "--only", "robosuite_panda_osc/lift", "--episodes-per-task", "1"]
    argv += ["--max-steps", "8", "--workers", "0", "--image-size", "32", "--history-len", "2"]
    argv += ["--videos-per-task", "0", "--no-tensorboard", "--replan-every", "2"]
    assert cli_main([*argv, "--out", str(out), "--execution", "rtc", "--delay-steps", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["delay_steps"] == 1 and report["meta"]["policy"]["execution"]["mode"] == "rtc"
    assert report["action_units"] == "normalised"
    episode = report["episodes"][0]
    if episode["steps"] == 8:  # chunks at steps 0, 2, 4, 6 (4 actions each) take over at 3, 5, 7
        assert episode["replans"] == 4 and episode["max_boundary_jump"] is not None
    assert episode["rms_jerk"] is not None and (out / "smoothness.png").stat().st_size > 0
    # the tiny checkpoint's chunks hold 4 actions: replanning every 2 leaves room for a delay of 2, not 3
    with pytest.raises(EvaluationError, match=r"need max\(replan_every, delay\) \+ delay <= 4"):
        cli_main([*argv, "--out", str(tmp_path / "bad"), "--delay-steps", "3"])
