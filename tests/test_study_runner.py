"""The study runner: plan, ledger-based resume, the unseen-robot skip, and the report built from the run folder.

A fake executor stands in for the subprocesses: it writes each unit's outputs (manifests, checkpoints, eval
reports with a known success pattern, or a seeded random one), so the whole study's bookkeeping runs in seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from actionprior.study import ablations
from actionprior.study.budget import estimate
from actionprior.study.episodes import read_csv
from actionprior.study.plan import (
    INITIAL_LOSS_VARIANTS,
    PRESETS,
    RICH,
    ROWS,
    SCARCE,
    build_plan,
    eval_parts,
    slug,
    with_rows,
    with_seeds,
)
from actionprior.study.report import claims, collect_figures, write_report
from actionprior.study.runner import Ledger, run_units
from actionprior.study.stats import wilson
from actionprior.study.success import UNSEEN, success_figures
from actionprior.study.success import main as success_main

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

    def __init__(self, interrupt_after: int | None = None, refuse_unseen: bool = True, noisy: bool = False):
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after
        self.refuse_unseen = refuse_unseen
        self.noisy = (
            noisy  # seeded random outcomes (the prior rows succeed more often) instead of the fixed pattern
        )
        self.commands: dict[str, list[str]] = {}

    def __call__(self, cmd: list[str], log: Path) -> int:
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(log.stem)
        self.commands[log.stem] = cmd
        log.parent.mkdir(parents=True, exist_ok=True)
        if "actionprior.study.joint_stats" in cmd:
            Path(_arg(cmd, "--marker")).write_text("{}")
            return 0
        if "actionprior.study.initial_loss" in cmd:
            out = Path(_arg(cmd, "--out"))
            out.parent.mkdir(parents=True, exist_ok=True)
            values = dict(zip(INITIAL_LOSS_VARIANTS, (1.4, 1.6, 4.9, 0.1, 1.2), strict=True))
            out.write_text(json.dumps({"seeds": [0, 1], **values}))
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
                        if self.noisy:
                            draw = hashlib.sha256(f"{out}/{emb}/{task}/{ep}".encode()).digest()[0] / 256
                            success = draw < (0.6 if prior else 0.3)
                        episodes.append(
                            {
                                "embodiment": emb,
                                "task": task,
                                "seed": 1000 + ep,
                                "success": success,
                                "steps": 50 + ep,
                            }
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
    # >= 10 episodes per task and seed, Panda too: one evaluation call per checkpoint
    assert eval_parts(PRESETS["full"]) == [("all", [*RICH, SCARCE], 10)]
    assert PRESETS["full"].eval_rich_episodes >= 10 and len(PRESETS["full"].seeds) >= 4
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
    # The 4x priors: equal steps, and equal passes (steps scaled by the transitions, read when the unit runs).
    s1 = {u.key: u for u in units if u.kind == "stage1"}
    assert set(s1) == {
        "stage1/as-1x",
        "stage1/ao-1x",
        "stage1/as-4x",
        "stage1/as-4x-passes",
        "stage1/as-unseen",
    }
    assert s1["stage1/as-4x-passes"].info["steps"] == PRESET.stage1_steps * PRESET.extra_factor


def test_equal_passes_prior_trains_as_many_passes_as_the_1x_prior(tmp_path):
    executor = FakeExecutor()
    run_units(build_plan(tmp_path, PRESET), tmp_path, executor, Console(file=io.StringIO()))

    def steps(key: str) -> int:
        cmd = executor.commands[key.replace("/", "__")]
        return int(next(a.split("=")[1] for a in cmd if a.startswith("--trainer.max_steps=")))

    # fake manifests: 100 transitions per episode; 1x = 5 + 2 episodes, 4x = 1x + 5 + 2 (extra_factor 2)
    assert steps("stage1/as-1x") == steps("stage1/as-4x") == PRESET.stage1_steps
    assert steps("stage1/as-4x-passes") == round(PRESET.stage1_steps * 1400 / 700)
    cmd = executor.commands["stage1__as-4x-passes"]
    assert f"--checkpoint.every_n_train_steps={steps('stage1/as-4x-passes')}" in cmd
    fig = collect_figures(tmp_path, PRESET)
    one, four = fig["stage1"]["as-1x"], fig["stage1"]["as-4x-passes"]
    assert (
        one["passes"] == pytest.approx(four["passes"])
        and fig["stage1"]["as-4x"]["passes"] == one["passes"] / 2
    )


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
    unseen = f"stage2/{slug(UNSEEN)}/seed0"
    assert unseen in summary.skipped
    assert "needs new-embodiment adaptation" in Ledger(tmp_path / "ledger.json").entries[unseen]["note"]
    assert f"eval/{slug(UNSEEN)}/seed0/final-all" in summary.blocked

    third = FakeExecutor()
    again = run_units(units, tmp_path, third, quiet)
    assert third.calls == [] and not again.done and again.skipped == []


def test_report_from_a_finished_study(tmp_path):
    run_units(build_plan(tmp_path, PRESET), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    fig = collect_figures(tmp_path, PRESET)
    rows, pairs = fig["success"]["rows"], fig["success"]["pairs"]
    main, base = rows["action-state prior"], rows["no prior"]
    # one scarce episode per task and seed: the prior 4/4, the baseline 2/4 (Lift only)
    assert main["scarce"]["estimate"] == 1.0 and base["scarce"]["estimate"] == 0.5
    assert main["scarce_vs_no_prior"]["estimate"] == pytest.approx(0.5)
    assert main["rich_vs_no_prior"]["estimate"] == 0.0
    # overall = mean over the 7 tasks: the baseline fails one (Panda stack) -> 6/7; 5 rich + 2 Panda tasks
    assert base["overall"]["estimate"] == pytest.approx(6 / 7) == base["overall_pooled"]["estimate"]
    assert pairs["history_vs_prior"]["estimate"] == 0.0  # the fake prior rows succeed alike
    assert pairs["1x_vs_no_prior_early"]["estimate"] == pytest.approx(1 / 7)  # 1 of 7 tasks differs
    # Panda gain (+0.5) minus data-rich gain (0): one paired contrast
    assert pairs["gain_scarce_minus_rich"]["estimate"] == pytest.approx(0.5)
    assert fig["skipped"]["unseen robot (prior without Panda)"].startswith("needs new-embodiment")
    assert fig["probe_ratios"]["initial_pred_loss_no_prior_over_prior"] == pytest.approx(1.5 / 4.0)
    assert fig["probe_ratios"]["per_seed"]["pred_loss_0"] == [pytest.approx(1.5 / 4.0)] * 2
    assert fig["data"]["scarce_fraction_stage2"] == pytest.approx(200 / (200 + 500))
    path = write_report(tmp_path, PRESET)
    text = path.read_text()
    assert "| claim | paper | ours | reproduced? |" in text
    assert (
        "initial L_pred lower with the prior | ≈8× lower | no prior / prior = 0.38× | no (opposite, 2/2 seeds)"
        in text
    )
    assert (
        f"| L_pred lower with the prior over the first {PRESET.probe_steps} steps (mean) | — | no prior / prior = 0.38×"
        in text
    )
    assert "Study wall-clock: 0 min over " in text
    assert "| prior, fresh z' head | 4.900 |" in text
    # the explanation follows the table: a decoder without zero init (1.60) stays below the fresh-head prior (4.90)
    assert "starts at 1.60, still below the fresh-head prior's 4.90" in text
    assert "likely not zero-initialised" not in text
    assert "| no prior | 1.500 ± 0.000 | 1.400 | no |" in text  # probe step 0 vs the table, per row
    assert (
        "| … on the scarce embodiment (real Franka / our Panda) | 35.0 → 61.3 (+26.3) | 50.0 → 100.0 (+50.0"
        in text
    )
    assert "Panda gain − data-rich gain = +50.0 [+50.0, +50.0] | yes |" in text
    assert "python -m actionprior.study.success episodes.csv" in text
    assert (tmp_path / "figures.json").exists() and (tmp_path / "success.png").exists()
    assert (tmp_path / "early_training.png").exists() and (tmp_path / "scaling.png").exists()
    assert set(RICH) <= {e for e in TASKS}


def test_episodes_csv_recomputes_every_success_figure_exactly(tmp_path, capsys):
    preset = replace(with_seeds(PRESET, [0, 1, 2, 3]), eval_rich_episodes=4, eval_scarce_episodes=4)
    run_units(build_plan(tmp_path, preset), tmp_path, FakeExecutor(noisy=True, refuse_unseen=False),
              Console(file=io.StringIO()))  # fmt: skip
    write_report(tmp_path, preset)
    published = json.loads((tmp_path / "figures.json").read_text())["success"]
    episodes = read_csv(tmp_path / "episodes.csv")
    # every row x point x seed x task x episode: 8 rows final + 4 early, 4 seeds, 7 tasks, 4 episodes
    assert len(episodes) == (8 + 4) * 4 * 7 * 4
    assert {e.steps for e in episodes} == {50, 51, 52, 53}
    assert json.loads(json.dumps(success_figures(episodes))) == published
    assert success_main([str(tmp_path / "episodes.csv")]) == 0
    assert json.loads(capsys.readouterr().out) == published
    main = published["rows"]["action-state prior"]
    assert 0 < main["overall"]["low"] < main["overall"]["estimate"] < main["overall"]["high"] < 1
    assert main["overall"]["seeds"] == 4 and main["overall"]["n"] == 4 * 7 * 4
    # a rate from the table by hand: the action-state prior's Panda successes over all its Panda episodes
    panda = [e.success for e in episodes
             if e.row == "action-state prior" and e.point == "final" and e.embodiment == SCARCE]  # fmt: skip
    assert main["scarce"]["estimate"] == pytest.approx(sum(panda) / len(panda))
    # a malformed table is refused with its line
    bad = tmp_path / "bad.csv"
    lines = (tmp_path / "episodes.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",final,", ",middle,")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad.csv:4: point must be one of"):
        read_csv(bad)


def test_entry_point_refuses_a_folder_of_another_preset(tmp_path, capsys):
    (tmp_path / "preset.json").write_text(json.dumps({"name": "quick"}))
    assert ablations.main(["--smoke", "--runs", str(tmp_path), "--report-only"]) == 2


def test_report_compares_the_unseen_robot_prior_with_no_prior_and_with_a_seen_prior(tmp_path):
    run_units(
        build_plan(tmp_path, PRESET), tmp_path, FakeExecutor(refuse_unseen=False), Console(file=io.StringIO())
    )
    fig = collect_figures(tmp_path, PRESET)
    unseen = fig["success"]["rows"]["unseen robot (prior without Panda)"]
    assert not fig["skipped"] and unseen["scarce_vs_no_prior"]["estimate"] == pytest.approx(0.5)
    assert (
        fig["success"]["pairs"]["unseen_vs_seen_scarce"]["estimate"] == 0.0
    )  # the fake priors solve Panda alike
    assert fig["success"]["pairs"]["unseen_vs_seen_same_size_scarce"]["estimate"] == 0.0
    text = write_report(tmp_path, PRESET).read_text()
    assert (
        "| a prior helps an embodiment it never saw | not evaluated | Panda: unseen-prior − no prior = +50.0"
        in text
    )
    assert (
        "Panda: unseen-prior − 4× prior = +0.0 [+0.0, +0.0] (vs the 1× prior: +0.0 [+0.0, +0.0]) | no loss shown"
        in text
    )


def test_claims_decide_from_intervals_and_name_dropped_rows(tmp_path):
    preset = with_rows(PRESET, ["no-prior", "action-state prior"])
    run_units(build_plan(tmp_path, preset), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    fig = collect_figures(tmp_path, preset)
    table = {c: v for c, _, _, v in claims(fig)}
    assert table["the gain is larger on the scarce embodiment than on the data-rich ones"] == "yes"
    assert table["action-state prior beats action-only prior"] == (
        "not measured (row dropped for the time budget: action-only prior)"
    )
    assert (
        "+ history" in fig["dropped_rows"]
        and "stage2/history/seed0" not in Ledger(tmp_path / "ledger.json").entries
    )

    def gap(low: float, high: float) -> dict:
        return {"estimate": (low + high) / 2, "low": low, "high": high}

    claim = "the gain is larger on the scarce embodiment than on the data-rich ones"
    for interval, verdict in (((0.1, 0.3), "yes"), ((-0.3, -0.1), "no (opposite)"),
                              ((-0.1, 0.3), "not shown (interval includes 0)")):  # fmt: skip
        fig["success"]["pairs"]["gain_scarce_minus_rich"] = gap(*interval)
        assert {c: v for c, _, _, v in claims(fig)}[claim] == verdict


def test_more_seeds_add_only_their_runs_evaluated_on_the_same_episodes(tmp_path):
    first = run_units(build_plan(tmp_path, PRESET), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    more = with_seeds(PRESET, [0, 1, 2])
    second = run_units(build_plan(tmp_path, more), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    assert len(second.resumed) == len(first.done) + len(first.skipped)
    assert second.done and all("/seed2" in key for key in second.done + second.skipped)
    per_seed = collect_figures(tmp_path, more)["success"]["rows"]["action-state prior"]["per_seed"]["overall"]
    assert set(per_seed) == {"0", "1", "2"}
    # Panda's episodes per task and seed stay the preset's (a derived count would shrink as seeds grow)
    derived = replace(PRESETS["full"], eval_scarce_episodes=0)
    assert with_seeds(derived, [0, 1, 2, 3, 4, 5]).scarce_eval_per_task == derived.scarce_eval_per_task
    with pytest.raises(ValueError, match="distinct non-negative"):
        with_seeds(derived, [1, 1])
    # a later --report-only keeps the seeds the folder was last run with
    ablations.main(["--smoke", "--runs", str(tmp_path), "--seeds", "0", "1", "2", "--report-only"])
    ablations.main(["--smoke", "--runs", str(tmp_path), "--report-only"])
    assert json.loads((tmp_path / "figures.json").read_text())["preset"]["seeds"] == [0, 1, 2]


def test_more_rows_add_only_their_runs_and_a_folder_refuses_other_sizes(tmp_path, capsys):
    few = with_rows(PRESET, ["no-prior", "action-state-prior"])
    first = run_units(build_plan(tmp_path, few), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    assert not any("history" in k for k in first.done)
    more = with_rows(PRESET, ["all"])
    second = run_units(build_plan(tmp_path, more), tmp_path, FakeExecutor(), Console(file=io.StringIO()))
    assert set(second.resumed) == set(first.done)
    assert all(not k.startswith(("collect/", "stage1/as-1x")) for k in second.done)
    with pytest.raises(ValueError, match="unknown row"):
        with_rows(PRESET, ["no-such-row"])
    # the folder remembers its rows, and refuses a preset whose sizes changed
    assert ablations.main(["--smoke", "--runs", str(tmp_path), "--rows", "no-prior", "--report-only"]) == 0
    assert ablations.main(["--smoke", "--runs", str(tmp_path), "--report-only"]) == 0
    assert json.loads((tmp_path / "preset.json").read_text())["rows"] == ["no prior"]
    stored = json.loads((tmp_path / "preset.json").read_text())
    (tmp_path / "preset.json").write_text(json.dumps({**stored, "stage2_steps": 7}))
    capsys.readouterr()
    assert ablations.main(["--smoke", "--runs", str(tmp_path), "--report-only"]) == 2
    assert "stage2_steps: 7 -> 6" in capsys.readouterr().out


def test_time_estimate_fits_the_budgets_and_grows_with_stage2_steps(capsys):
    full, quick = estimate(PRESETS["full"]), estimate(PRESETS["quick"])
    assert full["minutes"] <= 150 and quick["minutes"] <= 45  # issue 22's budgets, by the cost model
    # --quick runs every unit of the full study (same rows and seeds), smaller
    assert quick["units"] == full["units"] and PRESETS["quick"].rows == PRESETS["full"].rows
    assert PRESETS["quick"].seeds == PRESETS["full"].seeds
    # the model reproduces the published full run (2 seeds, 7 rows, 3/16 episodes): 93 min measured
    old = replace(PRESETS["full"], seeds=(0, 1), eval_rich_episodes=3, eval_scarce_episodes=16,
                  rows=tuple(r.name for r in ROWS if "equal passes" not in r.name))  # fmt: skip
    assert estimate(old)["minutes"] == pytest.approx(93, abs=3)
    # linear in Stage 2 steps: 20 Stage 2 runs of 0.049 s per step
    more = estimate(replace(PRESETS["full"], stage2_steps=3000))
    assert more["minutes"] - full["minutes"] == pytest.approx(20 * 1000 * 0.049 / 60)
    assert full["dropped_rows"] == [r.name for r in ROWS if r.name not in PRESETS["full"].rows]
    assert ablations.main(["--estimate"]) == 0
    out = capsys.readouterr().out
    assert "full study: 66 units, 4 training seeds, Stage 2 2000 steps" in out and "* history" in out


def test_sign_explanation_follows_the_measured_sign():
    from actionprior.study.report import _sign_explanation

    values = dict(zip(INITIAL_LOSS_VARIANTS, (1.84, 1.89, 1.81, 1.80, 1.80), strict=True))
    text = _sign_explanation(values)
    assert text.startswith(
        "Step-0 L_pred: here the prior starts at or below the no-prior decoder (1.81 vs 1.84)"
    )
    values["prior, fresh z' head"] = 1.95
    text = _sign_explanation(values)
    assert text.startswith("Why the sign is the opposite") and "above the fresh-head prior" not in text
    assert "starts at 1.89, still below the fresh-head prior's 1.95" in text
