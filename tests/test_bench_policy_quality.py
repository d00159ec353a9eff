"""benchmarks/policy_quality.py: rows of eval reports on the same episodes -> per-task counts, rates, differences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import policy_quality as pq


def _report(path: Path, successes: dict[tuple[str, str], list[int]], seed0: int = 500) -> Path:
    episodes = [
        {"embodiment": emb, "task": task, "episode": i, "seed": seed0 + i, "success": bool(s)}
        for (emb, task), outcome in successes.items()
        for i, s in enumerate(outcome)
    ]
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps({"episodes": episodes}))
    return path


def test_table_counts_rates_and_paired_difference(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", {("r1", "lift"): [1, 0, 0, 0], ("r2", "push"): [0, 0, 0, 0]})
    b = _report(tmp_path / "b", {("r1", "lift"): [1, 1, 1, 0], ("r2", "push"): [1, 1, 0, 0]})
    rows = [pq.parse_row(f"base@100={a}"), pq.parse_row(f"new={b}/report.json")]
    assert rows[0].samples == 100 and rows[1].samples is None
    _, records = pq.table(rows)
    assert records[0]["per_task"] == {"r1/lift": 1, "r2/push": 0}
    assert records[1]["per_task"] == {"r1/lift": 3, "r2/push": 2}
    assert records[0]["overall"]["estimate"] == pytest.approx((0.25 + 0) / 2)
    assert records[1]["overall"]["estimate"] == pytest.approx((0.75 + 0.5) / 2)
    diff = records[1]["minus_first"]
    assert diff["estimate"] == pytest.approx(0.5)
    assert diff["low"] < 0.5 < diff["high"] and records[0]["minus_first"] is None


def test_reports_of_other_episodes_or_unequal_seeds_are_refused(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", {("r1", "lift"): [1, 0]})
    b = _report(tmp_path / "b", {("r1", "lift"): [1, 0]}, seed0=900)
    with pytest.raises(SystemExit, match="different episodes"):
        pq.table([pq.parse_row(f"x={a}"), pq.parse_row(f"y={b}")])
    c = _report(tmp_path / "c", {("r1", "lift"): [0, 0]})
    with pytest.raises(SystemExit, match="same number of training seeds"):
        pq.table([pq.parse_row(f"x={a},{c}"), pq.parse_row(f"y={a}")])
    with pytest.raises(SystemExit, match="no report.json"):
        pq.parse_row(f"x={tmp_path / 'missing'}")
