"""The demo's orchestration: the commands it runs, in order, and how it resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from actionprior import demo


@pytest.fixture
def recorded(monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "_run", lambda cmd: calls.append(cmd))
    return calls


def _subcommand(cmd: list[str]) -> list[str]:
    return cmd[cmd.index("actionprior.cli") + 1 :]


def test_demo_runs_collect_stage1_stage2_eval_with_consistent_paths(tmp_path: Path, recorded) -> None:
    runs, data = tmp_path / "runs", tmp_path / "data"
    assert demo.cli_main(["--runs", str(runs), "--data", str(data), "--stage1-steps", "7"]) == 0
    collect, stage1, stage2, evaluate = (_subcommand(c) for c in recorded)
    assert collect[:2] == ["data", "collect"] and collect[collect.index("--out") + 1] == str(data)
    assert stage1[:3] == ["fit", "-c", "configs/stage1.yaml"]
    assert f"--trainer.default_root_dir={runs / 'stage1'}" in stage1
    assert "--trainer.max_steps=7" in stage1
    assert f"--data.datasets=[{{path: {data}}}]" in stage1
    assert f"--stage1_ckpt={runs / 'stage1' / 'checkpoints' / 'last.ckpt'}" in stage2
    assert not any(a.startswith("--ckpt_path") for a in stage1 + stage2)  # nothing to resume yet
    assert evaluate[evaluate.index("--ckpt") + 1] == str(runs / "stage2" / "checkpoints" / "last.ckpt")
    assert evaluate[evaluate.index("--out") + 1] == str(runs / "eval")
    # The episodes docs/policy_quality.md measures on, 10 per task.
    assert evaluate[evaluate.index("--seed") + 1] == "500"
    assert evaluate[evaluate.index("--episodes-per-task") + 1] == "10"


def test_an_interrupted_demo_resumes_training_from_last_checkpoint(tmp_path: Path, recorded) -> None:
    runs = tmp_path / "runs"
    (runs / "stage1" / "checkpoints").mkdir(parents=True)
    (runs / "stage1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    demo.cli_main(["--runs", str(runs), "--data", str(tmp_path / "data")])
    stage1, stage2 = (_subcommand(c) for c in recorded[1:3])
    assert "--ckpt_path=last" in stage1
    assert "--ckpt_path=last" not in stage2


def test_fresh_deletes_the_runs_but_keeps_the_dataset(tmp_path: Path, recorded) -> None:
    runs, data = tmp_path / "runs", tmp_path / "data"
    (runs / "stage1" / "checkpoints").mkdir(parents=True)
    (runs / "stage1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    demo.cli_main(["--runs", str(runs), "--data", str(data), "--fresh"])
    assert not (runs / "stage1").exists()
    assert (data / "manifest.json").exists()
    assert "--ckpt_path=last" not in _subcommand(recorded[1])
