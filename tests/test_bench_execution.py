"""benchmarks/execution_modes.py (the grid of eval runs, resumable; summary, goals, plots) and
benchmarks/rtc_cost.py (per-chunk cost of rtc) on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import execution_modes

REPO = Path(__file__).resolve().parents[1]


def _report(successes: list[bool], jerk: float, jump: float, mode: str, delay: int, every: int) -> dict:
    episodes = [
        {"embodiment": "arm", "task": t, "episode": i, "success": s}
        for i, (t, s) in enumerate(zip(["a", "b"] * (len(successes) // 2), successes, strict=True))
    ]
    n, k = len(successes), sum(successes)
    overall = {"episodes": n, "successes": k, "success_rate": k / n, "mean_act_ms": 1.0}
    overall.update(rms_jerk=jerk, max_boundary_jump=jump, action_tv=jerk / 2)
    return {
        "meta": {"policy": {"replan_every": every, "execution": {"mode": mode}}, "delay_steps": delay},
        "action_units": "normalised",
        "overall": overall,
        "per_task": [
            {
                "embodiment": "arm",
                "task": "a",
                "successes": k,
                "episodes": n,
                **{key: overall[key] for key in ("rms_jerk", "max_boundary_jump", "action_tv")},
            }
        ],
        "episodes": episodes,
    }


def test_smoother_mode_shown_more_successful_meets_the_jerk_goal_and_one_shown_worse_does_not() -> None:
    import argparse

    args = argparse.Namespace(replan_every=8, delays=[0])
    replan = _report([True] * 10 + [False] * 30, 0.4, 1.2, "replan", 0, 8)
    goal = "ensemble lowers RMS jerk >= 2x against replan at d=0, at equal success"
    for ensemble_wins, met in ((30, True), (10, True), (0, False)):
        ensemble = _report(
            [True] * ensemble_wins + [False] * (40 - ensemble_wins), 0.1, 0.3, "ensemble", 0, 1
        )
        g = {
            g["goal"]: g
            for g in execution_modes.goals(args, {("replan", 0): replan, ("ensemble", 0): ensemble})
        }
        assert g[goal]["rms_jerk_replan_over_mode"] == pytest.approx(4.0)
        assert g[goal]["met"] is met, (ensemble_wins, g[goal]["success_minus_replan"])


def test_grid_runs_each_cell_once_and_summarises_goals(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "grid"
    calls: list[list[str]] = []
    # replan succeeds on 8/10 at d=0, rtc keeps 8/10 at d=2 with 4x smaller boundary jumps; ensemble is smoother
    outcomes = {
        ("replan", 0): ([True] * 8 + [False] * 2, 0.4, 1.2),
        ("replan", 2): ([True] * 5 + [False] * 5, 0.5, 1.6),
        ("ensemble", 0): ([True] * 8 + [False] * 2, 0.1, 0.2),
        ("ensemble", 2): ([True] * 6 + [False] * 4, 0.15, 0.3),
        ("rtc", 0): ([True] * 8 + [False] * 2, 0.3, 0.35),
        ("rtc", 2): ([True] * 8 + [False] * 2, 0.3, 0.4),
    }

    def fake_eval(argv: list[str]) -> int:
        calls.append(argv)
        mode, delay = argv[argv.index("--execution") + 1], int(argv[argv.index("--delay-steps") + 1])
        every = int(argv[argv.index("--replan-every") + 1])
        folder = Path(argv[argv.index("--out") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(_report(*outcomes[(mode, delay)], mode, delay, every)))
        return 0

    monkeypatch.setattr("actionprior.evaluation.evaluate.cli_main", fake_eval)
    argv = ["--ckpt", "x.ckpt", "--out", str(out), "--delays", "0", "2", "--episodes-per-task", "5"]
    summary = execution_modes.main([*argv, "--only", "arm/a", "--rtc-max-guidance", "3"])
    assert len(calls) == 6
    rtc_call = next(c for c in calls if "rtc" in c)
    assert rtc_call[rtc_call.index("--replan-every") + 1] == "8" and "--rtc-max-guidance" in rtc_call
    ensemble_call = next(c for c in calls if "ensemble" in c)
    assert ensemble_call[ensemble_call.index("--replan-every") + 1] == "1"
    rows = {(r["mode"], r["delay_steps"]): r for r in summary["rows"]}
    assert rows[("rtc", 2)]["successes"] == 8 and rows[("rtc", 2)]["success"]["low"] < 0.8
    goals = {g["goal"]: g for g in summary["goals"]}
    rtc2 = goals["rtc at d=2 (25 % of s=8)"]
    assert rtc2["in_goal_range"] and rtc2["boundary_jump_replan_over_rtc"] == pytest.approx(4.0)
    assert rtc2["rtc_minus_replan_same_d"]["estimate"] == pytest.approx(0.3) and rtc2["met"]
    ens = goals["ensemble lowers RMS jerk >= 2x against replan at d=0, at equal success"]
    assert ens["rms_jerk_replan_over_mode"] == pytest.approx(4.0) and ens["met"]
    assert not goals["rtc lowers RMS jerk >= 2x against replan at d=0, at equal success"]["met"]
    text = (out / "summary.md").read_text()
    assert "| rtc | 2 | 8/10 = 80.0 [" in text and "python -m benchmarks.execution_modes" in text
    for name in ("success_vs_delay.png", "smoothness_vs_delay.png"):
        image = Image.open(out / name).convert("L")
        assert image.size[0] > 300 and len(set(image.getdata())) > 10
    # a finished grid is not run again; other settings are
    execution_modes.main([*argv, "--only", "arm/a", "--rtc-max-guidance", "3"])
    assert len(calls) == 6
    execution_modes.main([*argv, "--only", "arm/a", "--modes", "rtc"])  # guidance changed: rtc only, again
    assert len(calls) == 8
    with pytest.raises(SystemExit, match="run without --report-only"):
        execution_modes.main([*argv, "--report-only", "--seed", "1"])


def test_rtc_cost_benchmark_times_plain_and_guided_chunks(tmp_path: Path, monkeypatch) -> None:
    from benchmarks.rtc_cost import main

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["rtc_cost"])
    report = main(["--iters", "2", "--warmup", "1", "--image-size", "32", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report))
    for name in ("chunk plain", "chunk rtc", "chunk rtc-identity", "decoder plain", "decoder rtc"):
        assert report[name]["wall_median_ms"] > 0
    # the guided decoder runs a backward pass per Euler step: it costs more than plain sampling
    assert report["decoder rtc ratio"]["cpu"] > 1.0
    assert report["target"]["measured_cpu_ratio"] == report["chunk rtc ratio"]["cpu"]
    assert report["frozen"] == 2 and report["executed"] == report["chunk_len"] // 2
