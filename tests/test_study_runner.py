"""The study runner: plan, ledger-based resume, the unseen-robot skip, and the report built from the run folder.

A fake executor stands in for the subprocesses: it writes each unit's outputs (manifests, checkpoints, eval
reports with a known success pattern), so the whole study's bookkeeping runs in a second.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from actionprior.study import ablations
from actionprior.study.plan import PRESETS, RICH, ROWS, SCARCE, build_plan, eval_parts, slug, with_seeds
from actionprior.study.report import _larger, collect_figures, write_report
from actionprior.study.runner import Ledger, run_units
from actionprior.study.stats import wilson

PRESET = PRESETS["smoke"]
TASKS = {"metaworld_sawyer": ["drawer-open", "pick-place", "push"], "robosuite_ur5e_joint": ["lift"],
         "robosuite_kinova3_joint": ["lift"], SCARCE: ["lift", "stack"]}  # fmt: skip


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def _only(cmd: list[str]) -> list[str]:
    i = cmd.index("--only") + 1
    out = []
    while i < len(cmd) and not cmd[i].startswith("--"):
        out.append(cmd[i])
        i += 1
    return out


class FakeExecutor:
    """Writes what each CLI command would write; optionally interrupts, or refuses the unseen-robot prior."""

    def __init__(self, interrupt_after: int | None = None, refuse_unseen: bool = True):
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after
        self.refuse_unseen = refuse_unseen

    def __call__(self, cmd: list[str], log: Path) -> int:
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(log.stem)
        log.parent.mkdir(parents=True, exist_ok=True)
        if "actionprior.study.joint_stats" in cmd:
            Path(_arg(cmd, "--marker")).write_text("{}")
            return 0
        if "actionprior.study.initial_loss" in cmd:
            out = Path(_arg(cmd, "--out"))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"no prior, adaLN-zero decoder": 1.4, "prior, fresh z' head": 4.9}))
            return 0
        sub = cmd[cmd.index("actionprior.cli") + 1 :]
        if sub[:2] == ["data", "collect"]:
            out = Path(_arg(sub, "--out"))
            out.mkdir(parents=True, exist_ok=True)
            n = int(_arg(sub, "--episodes-per-task")) * (2 if SCARCE in _only(sub) else 5)
            (out / "manifest.json").write_text(json.dumps({"num_transitions": 100 * n}))
            (out / "stats.json").write_text("{}")
        elif sub[0] == "fit":
            root = Path(next(a.split("=", 1)[1] for a in sub if a.startswith("--trainer.default_root_dir=")))
            if self.refuse_unseen and any("as-unseen" in a for a in sub) and "stage2" in str(root):
                log.write_text("actionprior.checkpoint.CheckpointMismatchError: Stage 1 checkpoint is "
                               "incompatible: embodiments: 'robosuite_panda_osc' missing\n")  # fmt: skip
                return 1
            (root / "checkpoints").mkdir(parents=True, exist_ok=True)
            (root / "checkpoints" / "last.ckpt").write_text("x")
            (root / "checkpoints" / f"step{PRESET.early_step:07d}.ckpt").write_text("x")
            callbacks = root / "callbacks.yaml"
            if callbacks.exists() and "EarlyTrainingProbe" in callbacks.read_text():
                prior = "--stage1_ckpt" in " ".join(sub)
                steps = list(range(PRESET.probe_steps))
                (root / "probe.json").write_text(json.dumps({
                    "steps": steps, "pred_loss": [4.0 if prior else 1.5] * len(steps),
                    "grad_backbone": [2.0 if prior else 0.5] * len(steps), "grad_action": [1.0] * len(steps)}))  # fmt: skip
        elif sub[0] == "eval":
            out = Path(_arg(sub, "--out"))
            out.mkdir(parents=True, exist_ok=True)
            prior = "no-prior" not in str(out)
            episodes = []
            for emb in _only(sub):
                for task in TASKS[emb]:
                    for ep in range(int(_arg(sub, "--episodes-per-task"))):
                        # the prior solves every scarce episode, the baseline only Lift; both every other rich one
                        success = (prior or task == "lift") if emb == SCARCE else ep % 2 == 0
                        episodes.append(
                            {"embodiment": emb, "task": task, "seed": 1000 + ep, "success": success}
                        )
            (out / "report.json").write_text(json.dumps({"episodes": episodes}))
        return 0


def test_plan_covers_every_row_and_seed(tmp_path):
    units = build_plan(tmp_path, PRESET)
    keys = [u.key for u in units]
    assert len(keys) == len(set(keys))
    for row in ROWS:
        for seed in PRESET.seeds:
            assert f"stage2/{slug(row.name)}/seed{seed}" in keys
            assert f"eval/{slug(row.name)}/seed{seed}/final-all" in keys  # equal counts: one evaluation call
    assert [p for p, _, _ in eval_parts(PRESETS["full"])] == ["rich", "scarce"]  # Panda gets more episodes
    order = {k: i for i, k in enumerate(keys)}
    assert all(order[n] < order[u.key] for u in units for n in u.needs)
    # The 4x prior reads the trajectory-only datasets; Stage 2 never does.
    s1 = next(u for u in units if u.key == "stage1/as-4x")
    assert s1.info["datasets"] == ["rich", "scarce", "extra-rich", "extra-scarce"]
    extra = next(u for u in units if u.key == "collect/extra-rich")
    assert "--no-images" in extra.command()
    full = PRESETS["full"]
    pooled = full.scarce_eval_per_task * len(full.seeds) * 2  # Panda has two tasks
    assert wilson(pooled // 2, pooled).half_width <= 0.12  # the worst case, p = 0.5


def test_interrupted_study_resumes_from_the_ledger(tmp_path):
    quiet = Console(file=io.StringIO())
    units = build_plan(tmp_path, PRESET)
    first = FakeExecutor(interrupt_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_units(units, tmp_path, first, quiet)
    ledger = Ledger(tmp_path / "ledger.json")
    assert sorted(ledger.entries) == sorted(k.replace("__", "/") for k in first.calls)
    assert len(ledger.entries) == 5 and all(v["status"] == "done" for v in ledger.entries.values())

    second = FakeExecutor()
    summary = run_units(units, tmp_path, second, quiet)
    assert not set(first.calls) & set(second.calls)  # nothing finished is run again
    assert sorted(summary.resumed) == sorted(ledger.entries)
    assert not summary.failed
    unseen = f"stage2/{slug(ROWS[5].name)}/seed0"
    assert unseen in summary.skipped
    assert "needs new-embodiment adaptation" in Ledger(tmp_path / "ledger.json").entries[unseen]["note"]
    assert f"eval/{slug(ROWS[5].name)}/seed0/final-all" in summary.blocked

    third = FakeExecutor()
    again = run_units(units, tmp_path, third, quiet)
    assert third.calls == [] and not again.done and again.skipped == []


def test_report_from_a_finished_study(tmp_path):
    run_units(build_plan(tmp_path, PRESET), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    fig = collect_figures(tmp_path, PRESET)
    main, base = fig["rows"]["action-state prior"], fig["rows"]["no prior"]
    # one scarce episode per task and seed: the prior 4/4, the baseline 2/4 (Lift only)
    assert main["scarce"]["estimate"] == 1.0 and base["scarce"]["estimate"] == 0.5
    assert main["scarce_vs_no_prior"]["estimate"] == pytest.approx(0.5)
    assert main["rich_vs_no_prior"]["estimate"] == 0.0
    assert fig["pairs"]["history_vs_prior"]["estimate"] == 0.0  # the fake prior rows succeed alike
    assert fig["pairs"]["1x_vs_no_prior_early"]["estimate"] == pytest.approx(2 / 14)  # 2 of 7 tasks differ
    assert fig["rows"]["unseen robot (prior without Panda)"]["skipped"].startswith("needs new-embodiment")
    assert fig["probe_ratios"]["initial_pred_loss_no_prior_over_prior"] == pytest.approx(1.5 / 4.0)
    assert fig["data"]["scarce_fraction_stage2"] == pytest.approx(200 / (200 + 500))
    path = write_report(tmp_path, PRESET)
    text = path.read_text()
    assert "| claim | paper | ours | reproduced? |" in text
    assert (
        "initial L_pred lower with the prior | ≈8× lower | no prior / prior = 0.38× | no (opposite)" in text
    )
    assert (
        f"| L_pred lower with the prior over the first {PRESET.probe_steps} steps (mean) | — | no prior / prior = 0.38×"
        in text
    )
    assert "Study wall-clock: 0 min over " in text
    assert "| prior, fresh z' head | 4.900 |" in text
    assert "arbitrary point of the latent space (4.90 here)" in text
    assert (
        "| … on the scarce embodiment (real Franka / our Panda) | 35.0 → 61.3 (+26.3) | 50.0 → 100.0 (+50.0"
        in text
    )
    assert (
        "| +26.3 vs +2.2 | +50.0 [+0.0, +100.0] vs +0.0 [+0.0, +0.0] | not shown (intervals overlap) |"
        in text
    )
    assert (tmp_path / "figures.json").exists() and (tmp_path / "success.png").exists()
    assert (tmp_path / "early_training.png").exists() and (tmp_path / "scaling.png").exists()
    assert set(RICH) <= {e for e in TASKS}


def test_entry_point_refuses_a_folder_of_another_preset(tmp_path, capsys):
    (tmp_path / "preset.json").write_text(json.dumps({"name": "quick"}))
    assert ablations.main(["--smoke", "--runs", str(tmp_path), "--report-only"]) == 2


def test_report_compares_the_unseen_robot_prior_with_no_prior_and_with_a_seen_prior(tmp_path):
    run_units(
        build_plan(tmp_path, PRESET), tmp_path, FakeExecutor(refuse_unseen=False), Console(file=io.StringIO())
    )
    fig = collect_figures(tmp_path, PRESET)
    unseen = fig["rows"]["unseen robot (prior without Panda)"]
    assert "skipped" not in unseen and unseen["scarce_vs_no_prior"]["estimate"] == pytest.approx(0.5)
    assert fig["pairs"]["unseen_vs_seen_scarce"]["estimate"] == 0.0  # the fake priors solve Panda alike
    text = write_report(tmp_path, PRESET).read_text()
    assert (
        "| a prior helps an embodiment it never saw | not evaluated | Panda: unseen-prior − no prior = +50.0"
        in text
    )
    assert "Panda: unseen-prior − seen-prior = +0.0 [+0.0, +0.0] | no loss shown |" in text


def test_larger_gain_is_decided_only_by_intervals_that_do_not_overlap():
    def gain(low: float, high: float) -> dict:
        return {"estimate": (low + high) / 2, "low": low, "high": high}

    assert _larger(gain(0.2, 0.4), gain(0.0, 0.1)) == "yes"
    assert _larger(gain(0.0, 0.1), gain(0.2, 0.4)) == "no (opposite)"
    assert _larger(gain(0.0, 0.3), gain(0.2, 0.4)) == "not shown (intervals overlap)"
    assert _larger(None, gain(0.2, 0.4)) == "not measured"


def test_more_seeds_add_only_their_runs_evaluated_on_the_same_episodes(tmp_path):
    first = run_units(build_plan(tmp_path, PRESET), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    more = with_seeds(PRESET, [0, 1, 2])
    second = run_units(build_plan(tmp_path, more), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    assert len(second.resumed) == len(first.done) + len(first.skipped)
    assert second.done and all("/seed2" in key for key in second.done + second.skipped)
    assert set(collect_figures(tmp_path, more)["rows"]["action-state prior"]["seeds"]["overall"]) == {0, 1, 2}
    # Panda's episodes per task and seed stay the preset's (a plain seed change would shrink them 16 -> 12)
    full = PRESETS["full"]
    assert with_seeds(full, [0, 1, 2]).scarce_eval_per_task == full.scarce_eval_per_task == 16
    with pytest.raises(ValueError, match="distinct non-negative"):
        with_seeds(full, [1, 1])
    # a later --report-only keeps the seeds the folder was last run with
    ablations.main(["--smoke", "--runs", str(tmp_path), "--seeds", "0", "1", "2", "--report-only"])
    ablations.main(["--smoke", "--runs", str(tmp_path), "--report-only"])
    assert json.loads((tmp_path / "figures.json").read_text())["preset"]["seeds"] == [0, 1, 2]
