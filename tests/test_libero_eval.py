"""``actionprior eval-libero``: the episode plan, the resumable record, the report, and the whole orchestration
(server check -> runner processes -> records -> report -> resume) against a real policy server, with a stand-in
``libero`` package in place of LIBERO's simulator (tests/fixtures/libero/fake). The real LIBERO environment is
exercised by test_libero_env_smoke, which is skipped unless `make libero-env` has been run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actionprior.embodiments import EmbodimentRegistry
from actionprior.evaluation.libero import episodes as ep
from actionprior.evaluation.libero import evaluate as ev
from actionprior.inference.base import RandomPolicy
from actionprior.inference.observation import ObservationSpec
from actionprior.inference.server import PolicyServer
from actionprior.study.stats import wilson as study_wilson

REPO = Path(__file__).resolve().parents[1]
FAKE_LIBERO = Path(__file__).parent / "fixtures" / "libero" / "fake"
SETTINGS = {"suite": "libero_spatial", "max_steps": 6, "warmup_steps": 10, "render_size": 32, "seed": 7}


def test_plan_tasks_and_split() -> None:
    assert ep.parse_tasks(None) == list(range(10))
    assert ep.parse_tasks("7, 0,2-4") == [0, 2, 3, 4, 7]
    with pytest.raises(ep.EpisodeRecordError, match="'10' is outside the suite's task ids 0-9"):
        ep.parse_tasks("10")
    with pytest.raises(ep.EpisodeRecordError, match="'a' is not a task id"):
        ep.parse_tasks("a")
    planned = ep.plan([1, 3], 3)
    assert [k.token() for k in planned] == ["1:0", "1:1", "1:2", "3:0", "3:1", "3:2"]
    with pytest.raises(ep.EpisodeRecordError, match="50 fixed init states"):
        ep.plan([0], 51)
    blocks = ep.split(planned, 4)
    assert [len(b) for b in blocks] == [2, 2, 1, 1] and sum(blocks, []) == planned
    assert ep.split(planned[:1], 4) == [planned[:1]]
    assert ep.parse_jobs(ep.format_jobs(planned)) == planned


def record(task_id: int, episode: int, success: bool = True, **over) -> dict:
    return {
        **SETTINGS, "task_id": task_id, "episode": episode, "task": f"task_{task_id}", "instruction": "do it",
        "success": success, "steps": 4, "wall_s": 1.0, "env_step_ms": 10.0, "act_ms": 2.0, "replans": 1, **over,
    }  # fmt: skip


def test_resume_bookkeeping(tmp_path: Path) -> None:
    assert ep.read_finished(tmp_path, SETTINGS) == {} and ep.next_launch(tmp_path) == 0
    files = tmp_path / "episodes"
    files.mkdir()
    good = "\n".join(json.dumps(record(0, e)) for e in range(3)) + "\n"
    # a worker killed while writing leaves a line without its newline: that episode runs again
    (files / "launch000-w00.jsonl").write_text(good + json.dumps(record(0, 3))[:40])
    (files / "launch000-w01.jsonl").write_text(json.dumps(record(0, 1, success=False)) + "\n")  # a repeat
    finished = ep.read_finished(tmp_path, SETTINGS)
    assert sorted(k.token() for k in finished) == ["0:0", "0:1", "0:2"]
    assert finished[ep.EpisodeKey(0, 1)]["success"] is True  # the first record of a key is kept
    assert ep.pending(ep.plan([0], 5), finished) == [ep.EpisodeKey(0, 3), ep.EpisodeKey(0, 4)]
    assert ep.next_launch(tmp_path) == 1
    assert ep.record_file(tmp_path, 1, 2).name == "launch001-w02.jsonl"

    (files / "launch001-w00.jsonl").write_text(json.dumps(record(1, 0, max_steps=220)) + "\n")
    with pytest.raises(ep.EpisodeRecordError, match="launch001-w00.jsonl:1: recorded under other settings "
                       "\\(max_steps 220 there, 6 now\\); use another --out"):  # fmt: skip
        ep.read_finished(tmp_path, SETTINGS)
    (files / "launch001-w00.jsonl").write_text("{not json\n")
    with pytest.raises(ep.EpisodeRecordError, match="launch001-w00.jsonl:1: not JSON"):
        ep.read_finished(tmp_path, SETTINGS)
    (files / "launch001-w00.jsonl").write_text(json.dumps({**record(1, 0), "success": "yes"}) + "\n")
    with pytest.raises(ep.EpisodeRecordError, match="field 'success' missing or not bool"):
        ep.read_finished(tmp_path, SETTINGS)


def test_wilson_known_values() -> None:
    # 0/10: the upper bound is z^2 / (n + z^2); 5/10: the textbook [23.7, 76.3] %.
    low, high = ev.wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(1.959963984540054**2 / (10 + 1.959963984540054**2), abs=1e-12)
    assert ev.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert ev.wilson(10, 10)[1] == 1.0
    assert ev.wilson(0, 0) == (0.0, 1.0)
    assert ev.wilson(7, 50) == pytest.approx((study_wilson(7, 50).low, study_wilson(7, 50).high), abs=1e-12)


def test_report_per_task_and_suite(tmp_path: Path) -> None:
    records = [record(0, e, success=e < 3) for e in range(4)] + [
        record(2, e, success=False) for e in range(4)
    ]
    report = ev.write_report(records, tmp_path, {**SETTINGS, "server": "ws://x"})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["libero"] == report["libero"] and (tmp_path / "success.png").is_file()
    rows = saved["libero"]["per_task"]
    assert [(r["task_id"], r["successes"], r["episodes"]) for r in rows] == [(0, 3, 4), (2, 0, 4)]
    assert rows[0]["wilson95"] == pytest.approx([study_wilson(3, 4).low, study_wilson(3, 4).high])
    total = saved["libero"]["suite_total"]
    assert (total["successes"], total["episodes"], total["success_rate"]) == (3, 8, 0.375)
    # our standard report too: the suite in the embodiment column, one row per task
    assert saved["per_embodiment"]["libero_spatial"]["successes"] == 3
    assert [r["task"] for r in saved["per_task"]] == ["00_task_0", "02_task_2"]


@pytest.fixture()
def server():
    registry = EmbodimentRegistry.from_dir(names=["libero_panda"])
    policy = RandomPolicy(ObservationSpec(registry, ("scene", "wrist"), 32), chunk_len=4, seed=0)
    with PolicyServer(policy, port=0) as srv:
        yield srv


def run_cli(argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setenv("PYTHONPATH", str(FAKE_LIBERO))
    assert ev.cli_main(argv) == 0
    return capsys.readouterr().out


def test_eval_libero_end_to_end_with_resume(server, tmp_path: Path, monkeypatch, capsys) -> None:
    """Two runner processes, each a real client of the server; the stand-in simulator succeeds on even init
    states after 3 policy steps (counting only non-no-op actions, so the 10 warm-up no-ops must not count) and
    never on odd ones. Then a resume with more episodes runs only the new ones."""
    out = tmp_path / "run"
    base = ["--suite", "libero_spatial", "--server", server.url, "--out", str(out), "--libero-python",
            sys.executable, "--max-steps", "6", "--render-size", "32", "--tasks", "0,4"]  # fmt: skip
    text = run_cli([*base, "--episodes", "2", "--workers", "2"], monkeypatch, capsys)
    assert "4 to run on 2 workers" in text
    report = json.loads((out / "report.json").read_text())
    got = {(e["task"], e["episode"]): (e["success"], e["steps"]) for e in report["episodes"]}
    assert got == {
        ("00_fake_task_0", 0): (True, 3), ("00_fake_task_0", 1): (False, 6),
        ("04_fake_task_4", 0): (True, 3), ("04_fake_task_4", 1): (False, 6),
    }  # fmt: skip
    assert report["libero"]["suite_total"]["successes"] == 2
    assert len(report["artifacts"]["videos"]) == 2 and all(
        Path(v).is_file() for v in report["artifacts"]["videos"]
    )
    assert sorted(p.name for p in (out / "episodes").iterdir()) == [
        "launch000-w00.jsonl",
        "launch000-w01.jsonl",
    ]

    text = run_cli([*base, "--episodes", "3", "--workers", "2"], monkeypatch, capsys)
    assert "6 episodes planned, 4 already finished" in text and "2 to run" in text
    report = json.loads((out / "report.json").read_text())
    assert len(report["episodes"]) == 6 and report["libero"]["suite_total"]["successes"] == 4
    new = [
        json.loads(line)
        for p in sorted((out / "episodes").glob("launch001-*"))
        for line in p.read_text().splitlines()
    ]
    assert sorted((r["task_id"], r["episode"]) for r in new) == [(0, 2), (4, 2)]

    with pytest.raises(ep.EpisodeRecordError, match="recorded under other settings"):
        run_cli([*base[:-4], "--render-size", "64", "--tasks", "0,4", "--episodes", "3"], monkeypatch, capsys)


def test_refusals(server, tmp_path: Path, monkeypatch, capsys) -> None:
    with pytest.raises(ev.LiberoEvalError, match="no LIBERO environment at .*: run `make libero-env`"):
        ev.cli_main(
            ["--suite", "libero_goal", "--server", server.url, "--libero-python", str(tmp_path / "none")]
        )
    registry = EmbodimentRegistry.from_dir(names=["robosuite_panda_osc"])
    other = RandomPolicy(ObservationSpec(registry, ("scene",), 32))
    with (
        PolicyServer(other, port=0) as srv,
        pytest.raises(ev.LiberoEvalError, match="does not control 'libero_panda'"),
    ):
        ev.check_server(srv.url)
    # a runner that fails says why, in one line naming its log
    monkeypatch.setenv("FAKE_LIBERO_FAIL", "1")
    with pytest.raises(ev.LiberoEvalError, match="worker 0 exited with 2: .*simulated LIBERO failure .*log:"):
        run_cli(["--suite", "libero_spatial", "--server", server.url, "--out", str(tmp_path / "f"), "--libero-python",
                 sys.executable, "--episodes", "1", "--tasks", "0", "--max-steps", "2"], monkeypatch, capsys)  # fmt: skip


LIBERO_PYTHON = Path(os.environ.get(ev.LIBERO_PYTHON_ENV) or ev.DEFAULT_LIBERO_VENV / "bin" / "python")


@pytest.mark.slow
@pytest.mark.skipif(
    not LIBERO_PYTHON.is_file(), reason=f"no LIBERO environment at {LIBERO_PYTHON} (make libero-env)"
)
def test_libero_env_smoke(server, tmp_path: Path) -> None:
    """The real LIBERO: one episode of libero_spatial task 0, 3 policy steps at 32 px, through the server."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "actionprior.cli", "eval-libero", "--suite", "libero_spatial", "--server", server.url,
         "--out", str(out), "--libero-python", str(LIBERO_PYTHON), "--episodes", "1", "--tasks", "0",
         "--max-steps", "3", "--render-size", "32", "--videos-per-task", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    report = json.loads((out / "report.json").read_text())
    [episode] = report["episodes"]
    assert episode["steps"] == 3 and episode["success"] is False  # 3 random steps do not solve the task
    assert report["libero"]["per_task"][0]["instruction"].startswith("pick up the black bowl")
    assert np.isfinite(report["libero"]["suite_total"]["env_step_ms"])
