"""The study as a list of units: collect, Stage 1, Stage 2, evaluation. Each names its inputs and outputs.

The setting is the paper's: one mixture in which robosuite Panda (a Franka) is scarce -- a few
demonstrations, about 5-10 % of Stage 2 frames -- while the other embodiments keep their data. Mixture
weights are the datasets' transition counts, so every frame is sampled equally often and the scarce robot's
share of Stage 2 windows is its share of frames.

Datasets (``<runs>/data``):
  ``rich``        the data-rich embodiments, with images (Stage 1 and Stage 2)
  ``scarce``      Panda, few episodes, with images (Stage 1 and Stage 2)
  ``extra-rich``, ``extra-scarce``  trajectory-only (``--no-images``), 3x the episodes of the two above:
                  the 4x Stage 1 prior reads them (Stage 2 never does; it refuses them)

Stage 1 priors: action-state (1x), action-only (1x), action-state 4x at the 1x prior's steps (equal steps) and
at its passes over the data (equal passes: steps scaled by the 4x/1x transition ratio, read from the manifests
when the unit runs), action-state without Panda (unseen; about the 4x prior's data size, so the 4x prior is the
seen prior of the same size it is compared with). Stage 2 rows (each over every training seed): no prior,
action-only prior, action-state prior, + history, the two 4x priors, unseen-robot prior, and the action-state prior
with the z' head started at the mean Stage 1 latent. A preset runs a subset of the rows (``Preset.rows``) when
seeds x rows do not fit its time budget: rows are dropped, never seeds (``budget.py`` estimates the time).
Evaluation: every Stage 2 run on the same evaluation seeds, every task with the preset's episodes per training
seed, and the data-scaling rows also at an early step.

Units are resumable: the runner keeps a ledger of finished units and a Stage 2 fit resumes from its
``last.ckpt``. Commands are built when a unit runs (mixture weights come from the collected manifests).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from actionprior.resources import default_config_arg
from actionprior.study.stats import episodes_for_half_width

SUITE = "sim-default"
SCARCE = "robosuite_panda_osc"
RICH = ("metaworld_sawyer", "robosuite_ur5e_joint", "robosuite_kinova3_joint")
SCARCE_TASKS = 2  # lift, stack (configs/suites/sim-default.yaml)
RICH_TASKS = 5


@dataclass(frozen=True)
class Preset:
    """Sizes of one study. ``full`` is the reported study; ``quick`` a reduced one; ``smoke`` a wiring check."""

    name: str
    rich_episodes: int  # demonstrations per data-rich task (with images)
    scarce_episodes: int  # demonstrations per Panda task (with images): ~5-10 % of Stage 2 frames
    extra_factor: int  # Stage 1 "4x": (extra_factor - 1) x more trajectory-only episodes of every task
    stage1_steps: int
    stage2_steps: int
    early_step: int  # the fixed early step of the data-scaling comparison
    decay_fraction: float  # aux_weight (the paper's lambda) reaches 0 at this fraction of Stage 2 (paper: 5k of 50k steps)
    seeds: tuple[int, ...]  # Stage 2 training seeds
    eval_rich_episodes: int  # per data-rich task and training seed
    eval_scarce_episodes: int  # per Panda task and training seed (0: derived from scarce_half_width)
    scarce_half_width: float  # target Wilson half-width of the scarce robot's success (pooled over seeds)
    probe_steps: int  # early-training probe: L_pred and its gradient norms for these first steps
    batches_per_epoch: int = 500  # val_check_interval (500 in the configs) must not exceed it
    extra_args: tuple[str, ...] = ()  # appended to every fit (e.g. smaller batches for the smoke preset)
    eval_workers: int = 2
    eval_max_steps: int | None = None  # cut episodes short (smoke only; None = the suite's limits)
    rows: tuple[str, ...] = ()  # the Stage 2 rows of this study (names in ROWS; empty: every row)

    @property
    def decay_steps(self) -> int:
        return max(1, round(self.stage2_steps * self.decay_fraction))

    @property
    def scarce_eval_per_task(self) -> int:
        if self.eval_scarce_episodes:
            return self.eval_scarce_episodes
        pooled = episodes_for_half_width(self.scarce_half_width)
        return math.ceil(pooled / (len(self.seeds) * SCARCE_TASKS))

    @property
    def row_set(self) -> tuple[Row, ...]:
        """The study's rows, in ROWS order."""
        return tuple(r for r in ROWS if not self.rows or r.name in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rows": [r.name for r in self.row_set],
            "decay_steps": self.decay_steps,
            "scarce_eval_per_task": self.scarce_eval_per_task,
        }


# Every size of the study lives here; the lead's operating point (Stage 1/2 steps) is set in these presets.
# Seeds x rows must fit the time budget (`python -m actionprior.study --estimate`, budget.py): rows are dropped,
# never seeds, and the report lists the dropped ones. ``FULL_ROWS`` fits 150 min on a quiet 2-core host at 2000
# Stage 2 steps (budget.py's cost model); the dropped rows run with ``--rows all`` (or by name) in the same folder.
FULL_ROWS = (
    "no prior",
    "action-state prior",
    "action-state prior, 4x Stage 1 data",
    "action-state prior, 4x Stage 1 data, equal passes",
    "unseen robot (prior without Panda)",
)
PRESETS: dict[str, Preset] = {
    # Stage 2 keeps configs/stage2.yaml's 2000 steps. >= 10 evaluation episodes per task and training seed (data-rich
    # and Panda alike: one evaluation call per checkpoint); Panda pooled over 4 seeds: 80 episodes, a Wilson
    # half-width <= 11 points.
    "full": Preset("full", rich_episodes=20, scarce_episodes=4, extra_factor=4, stage1_steps=2000,
                   stage2_steps=2000, early_step=500, decay_fraction=0.1, seeds=(0, 1, 2, 3), eval_rich_episodes=10,
                   eval_scarce_episodes=10, scarce_half_width=0.12, probe_steps=200, rows=FULL_ROWS),
    # The full study's units (same rows, same seeds), smaller: fewer demonstrations, steps and episodes. At 200
    # Stage 2 steps every claim's interval includes 0: it checks the pipeline, not the claims. <= 45 min (budget.py).
    "quick": Preset("quick", rich_episodes=8, scarce_episodes=2, extra_factor=4, stage1_steps=400,
                    stage2_steps=200, early_step=100, decay_fraction=0.1, seeds=(0, 1, 2, 3), eval_rich_episodes=2,
                    eval_scarce_episodes=2, scarce_half_width=0.2, probe_steps=100, rows=FULL_ROWS),
    # Wiring only (minutes): every unit of every row runs, nothing is learnt.
    "smoke": Preset("smoke", rich_episodes=1, scarce_episodes=1, extra_factor=2, stage1_steps=6, stage2_steps=6,
                    early_step=3, decay_fraction=0.5, seeds=(0, 1), eval_rich_episodes=1, eval_scarce_episodes=1,
                    scarce_half_width=0.4, probe_steps=4, batches_per_epoch=3,
                    extra_args=("--data.batch_size=4", "--data.shuffle_buffer=32", "--data.val_fraction=0",
                                "--data.num_workers=0", "--trainer.val_check_interval=3"),
                    eval_workers=1, eval_max_steps=16),
}  # fmt: skip


def with_seeds(preset: Preset, seeds: tuple[int, ...] | list[int]) -> Preset:
    """``preset`` with other Stage 2 training seeds. Panda's episodes per task and seed stay the preset's, so the
    runs of added seeds are evaluated on the same episodes as the first ones and pool with them (a finished
    study rerun with more seeds trains and evaluates only the new seeds' units)."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds must be distinct non-negative integers, got {list(seeds)}")
    return replace(preset, seeds=seeds, eval_scarce_episodes=preset.scarce_eval_per_task)


def with_rows(preset: Preset, names: list[str]) -> Preset:
    """``preset`` with other Stage 2 rows: names or slugs of ROWS, or ``all``. Rows added to a finished study
    train and evaluate only their own units (and the Stage 1 priors they need)."""
    if names == ["all"]:
        return replace(preset, rows=tuple(r.name for r in ROWS))
    by_key = {**{r.name: r.name for r in ROWS}, **{slug(r.name): r.name for r in ROWS}}
    unknown = [n for n in names if n not in by_key]
    if unknown or not names:
        raise ValueError(
            f"--rows: unknown row(s) {unknown}; choose from 'all' or {[slug(r.name) for r in ROWS]}"
        )
    return replace(preset, rows=tuple(dict.fromkeys(by_key[n] for n in names)))


@dataclass(frozen=True)
class Row:
    """One Stage 2 configuration of the study."""

    name: str
    prior: str | None  # Stage 1 unit key (None: no prior)
    ablation: str  # configs/ablations/<name>.yaml
    latent_head_init: str = "default"
    probe: bool = False  # record the early-training probe
    early_eval: bool = False  # also evaluate the checkpoint at Preset.early_step
    needs_adaptation: bool = False  # the prior lacks an embodiment of Stage 2 (new-embodiment adaptation)


PRIORS: dict[str, dict[str, Any]] = {
    "as-1x": {"use_state": True, "datasets": ("rich", "scarce")},
    "ao-1x": {"use_state": False, "datasets": ("rich", "scarce")},
    "as-4x": {"use_state": True, "datasets": ("rich", "scarce", "extra-rich", "extra-scarce")},
    # As many passes over the 4x data as as-1x makes over the 1x data (its steps scale with the transitions).
    "as-4x-passes": {"use_state": True, "datasets": ("rich", "scarce", "extra-rich", "extra-scarce"),
                     "equal_passes_with": "as-1x"},
    "as-unseen": {"use_state": True, "datasets": ("rich", "extra-rich")},
}  # fmt: skip

ROWS: tuple[Row, ...] = (
    Row("no prior", None, "no_prior", probe=True, early_eval=True),
    Row("action-only prior", "ao-1x", "action_only_prior"),
    Row("action-state prior", "as-1x", "action_state_prior", probe=True, early_eval=True),
    Row("+ history", "as-1x", "action_state_prior_history"),
    Row("action-state prior, 4x Stage 1 data", "as-4x", "action_state_prior", early_eval=True),
    Row("action-state prior, 4x Stage 1 data, equal passes", "as-4x-passes", "action_state_prior", early_eval=True),
    Row("unseen robot (prior without Panda)", "as-unseen", "action_state_prior", needs_adaptation=True),
    Row("action-state prior, z' head at mean latent", "as-1x", "action_state_prior", latent_head_init="stage1_mean",
        probe=True),
)  # fmt: skip


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


@dataclass
class Unit:
    """One resumable step. ``command`` is built when the unit runs; ``outputs`` must exist afterwards."""

    key: str
    kind: str  # collect | stage1 | analysis | stage2 | eval
    needs: tuple[str, ...]
    outputs: tuple[Path, ...]
    command: Callable[[], list[str]]
    info: dict[str, Any] = field(default_factory=dict)
    # A failure whose log contains all of these strings is a skip with this note, not an error.
    skip_if: tuple[tuple[str, ...], str] | None = None


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "actionprior.cli", *args]


def manifest_transitions(path: Path) -> int:
    return int(json.loads((path / "manifest.json").read_text()).get("num_transitions", 0))


# The initialisations whose step-0 L_pred initial_loss.py measures (report.py prints them in this order).
INITIAL_LOSS_VARIANTS = (
    "no prior, adaLN-zero decoder",
    "no prior, decoder without zero init",
    "prior, fresh z' head",
    "prior, z' = z (oracle)",
    "prior, z' head at mean latent",
)


def mixture(paths: list[Path]) -> list[tuple[Path, int]]:
    """``(dataset, weight)`` with weights = transitions, so each frame is drawn equally often: the study's
    Stage 1 and Stage 2 mixtures (and the initial-loss analysis, which must score Stage 2's batches)."""
    return [(p, max(manifest_transitions(p), 1)) for p in paths]


def datasets_arg(paths: list[Path]) -> str:
    """``--data.datasets`` of ``mixture(paths)``."""
    items = [f"{{path: {p}, weight: {w}}}" for p, w in mixture(paths)]
    return f"--data.datasets=[{', '.join(items)}]"


def stage1_steps(data: Path, preset: Preset, key: str) -> int:
    """A prior's Stage 1 steps: the preset's, or for an equal-passes prior the preset's times the ratio of its
    transitions to those of the prior it matches (same batch size, so the same passes over its data)."""
    prior = PRIORS[key]
    other = prior.get("equal_passes_with")
    if not other:
        return preset.stage1_steps
    own = sum(manifest_transitions(data / d) for d in prior["datasets"])
    base = sum(manifest_transitions(data / d) for d in PRIORS[other]["datasets"])
    if base <= 0:
        raise ValueError(f"stage1/{key}: the datasets of {other} hold no transitions; collect them first")
    return max(1, round(preset.stage1_steps * own / base))


def priors_needed(preset: Preset) -> list[str]:
    """The Stage 1 priors of the preset's rows, and as-1x (the initial-loss analysis reads it), in PRIORS order."""
    needed = {"as-1x"} | {r.prior for r in preset.row_set if r.prior}
    return [k for k in PRIORS if k in needed]


def build_plan(root: Path, preset: Preset) -> list[Unit]:
    """Every unit of the study, in an order that respects ``needs``."""
    data = root / "data"
    units: list[Unit] = []
    rich_only = [f"{e}" for e in RICH]
    collects = {
        "rich": (rich_only, preset.rich_episodes, 0, False),
        "scarce": ([SCARCE], preset.scarce_episodes, 0, False),
        "extra-rich": (rich_only, (preset.extra_factor - 1) * preset.rich_episodes, 1, True),
        "extra-scarce": ([SCARCE], (preset.extra_factor - 1) * preset.scarce_episodes, 1, True),
    }
    for name, (only, episodes, seed, no_images) in collects.items():
        out = data / name
        cmd = ["data", "collect", "--suite", SUITE, "--only", *only, "--episodes-per-task", str(episodes),
               "--out", str(out), "--workers", "2", "--seed", str(seed)]  # fmt: skip
        if no_images:
            cmd.append("--no-images")
        tasks = SCARCE_TASKS if only == [SCARCE] else RICH_TASKS
        units.append(
            Unit(f"collect/{name}", "collect", (), (out / "manifest.json", out / "stats.json"),
                 lambda cmd=cmd: cli(*cmd),
                 {"episodes_per_task": episodes, "images": not no_images, "episodes": episodes * tasks})
        )  # fmt: skip

    # One normalisation for every prior and every Stage 2 run (see joint_stats.py).
    marker = data / "joint_stats.json"
    cmd = [sys.executable, "-m", "actionprior.study.joint_stats", *(str(data / n) for n in collects),
           "--marker", str(marker)]  # fmt: skip
    units.append(
        Unit(
            "collect/joint-stats",
            "collect",
            tuple(f"collect/{n}" for n in collects),
            (marker,),
            lambda cmd=cmd: cmd,
        )
    )

    def fit(
        run_dir: Path, configs: list[str], datasets: list[Path], steps: Callable[[], int], *extra: str
    ) -> Callable:
        def command() -> list[str]:
            cmd = ["fit"]
            for c in configs:
                cmd += ["-c", c]
            n = steps()
            cmd += [datasets_arg(datasets), f"--trainer.default_root_dir={run_dir}",
                    f"--trainer.logger.init_args.save_dir={run_dir}", "--trainer.enable_progress_bar=false",
                    f"--trainer.max_steps={n}", f"--data.batches_per_epoch={preset.batches_per_epoch}",
                    *preset.extra_args, *(e.replace("{steps}", str(n)) for e in extra)]  # fmt: skip
            if (run_dir / "checkpoints" / "last.ckpt").exists():
                cmd.append("--ckpt_path=last")  # an interrupted fit resumes
            return cli(*cmd)

        return command

    stage1 = default_config_arg("stage1.yaml")
    for key in priors_needed(preset):
        prior = PRIORS[key]
        run_dir = root / "stage1" / key
        needs = (*(f"collect/{d}" for d in prior["datasets"]), "collect/joint-stats")
        # Before collection the equal-passes steps are estimated from the episode counts (budget.py reads it).
        ratio = preset.extra_factor if prior.get("equal_passes_with") else 1
        units.append(
            Unit(f"stage1/{key}", "stage1", needs, (run_dir / "checkpoints" / "last.ckpt",),
                 fit(run_dir, [stage1], [data / d for d in prior["datasets"]],
                     lambda key=key: stage1_steps(data, preset, key),
                     f"--model.init_args.prior.use_state={str(prior['use_state']).lower()}",
                     "--checkpoint.every_n_train_steps={steps}"),
                 {"datasets": list(prior["datasets"]), "use_state": prior["use_state"],
                  "steps": preset.stage1_steps * ratio})
        )  # fmt: skip

    # Step-0 L_pred under five initialisations on the same batches of Stage 2's mixture, over the training seeds
    # (why the sign differs from the paper's; the probe's step 0 must agree with its rows).
    out = root / "analysis" / "initial_loss.json"
    cmd = [sys.executable, "-m", "actionprior.study.initial_loss", "--stage1-ckpt",
           str(root / "stage1" / "as-1x" / "checkpoints" / "last.ckpt"), "--data", str(data / "rich"),
           str(data / "scarce"), "--seeds", *(str(s) for s in preset.seeds), "--out", str(out)]  # fmt: skip
    units.append(
        Unit("analysis/initial-loss", "analysis", ("stage1/as-1x", "collect/joint-stats"), (out,),
             lambda cmd=cmd: cmd, {"seeds": len(preset.seeds)})
    )  # fmt: skip

    stage2 = default_config_arg("stage2.yaml")
    for row in preset.row_set:
        for seed in preset.seeds:
            run_dir = root / "stage2" / slug(row.name) / f"seed{seed}"
            callbacks = run_dir / "callbacks.yaml"
            configs = [stage2, default_config_arg(f"ablations/{row.ablation}.yaml"), str(callbacks)]
            extra = [f"--seed_everything={seed}", f"--data.seed={seed}",
                     f"--checkpoint.every_n_train_steps={preset.early_step}"]  # fmt: skip
            needs = ("collect/rich", "collect/scarce", "collect/joint-stats")
            if row.prior:
                extra.append(f"--stage1_ckpt={root / 'stage1' / row.prior / 'checkpoints' / 'last.ckpt'}")
                needs += (f"stage1/{row.prior}",)
            else:
                # The scratch decoder gets the prior's architecture (stage1.yaml's, ActionPriorConfig's default).
                pass
            inner = fit(
                run_dir, configs, [data / "rich", data / "scarce"], lambda: preset.stage2_steps, *extra
            )

            def command(inner=inner, callbacks=callbacks, row=row, run_dir=run_dir) -> list[str]:
                write_callbacks(callbacks, preset, row, run_dir / "probe.json")
                return inner()

            key = f"stage2/{slug(row.name)}/seed{seed}"
            skip = (("CheckpointMismatchError", "embodiments"), "needs new-embodiment adaptation")
            units.append(
                Unit(key, "stage2", needs, (run_dir / "checkpoints" / "last.ckpt",), command,
                     {"row": row.name, "seed": seed, "run_dir": str(run_dir), "steps": preset.stage2_steps,
                      "history": "history" in row.ablation, "probe_steps": preset.probe_steps if row.probe else 0},
                     skip_if=skip if row.needs_adaptation else None)
            )  # fmt: skip
            points = [("final", run_dir / "checkpoints" / "last.ckpt")]
            if row.early_eval:
                points.append(("early", run_dir / "checkpoints" / f"step{preset.early_step:07d}.ckpt"))
            parts = eval_parts(preset)
            for point, ckpt in points:
                for part, only, episodes in parts:
                    out = root / "eval" / slug(row.name) / f"seed{seed}" / f"{point}-{part}"
                    cmd = ["eval", "--ckpt", str(ckpt), "--suite", SUITE, "--only", *only, "--episodes-per-task",
                           str(episodes), "--workers", str(preset.eval_workers), "--seed", "0", "--out", str(out),
                           "--videos-per-task", "0", "--no-tensorboard"]  # fmt: skip
                    if preset.eval_max_steps:
                        cmd += ["--max-steps", str(preset.eval_max_steps)]
                    units.append(
                        Unit(f"eval/{slug(row.name)}/seed{seed}/{point}-{part}", "eval", (key,),
                             (out / "report.json",), lambda cmd=cmd: cli(*cmd),
                             {"row": row.name, "seed": seed, "point": point, "part": part,
                              "episodes": {"rich": episodes * RICH_TASKS * any(e in only for e in RICH),
                                           "scarce": episodes * SCARCE_TASKS * (SCARCE in only)}})
                    )  # fmt: skip
    return units


def eval_parts(preset: Preset) -> list[tuple[str, list[str], int]]:
    """``(part, embodiments, episodes per task)`` of one evaluation: one call when both counts agree (one
    start-up less), else the data-rich and the scarce tasks separately."""
    if preset.eval_rich_episodes == preset.scarce_eval_per_task:
        return [("all", [*RICH, SCARCE], preset.eval_rich_episodes)]
    return [
        ("rich", list(RICH), preset.eval_rich_episodes),
        ("scarce", [SCARCE], preset.scarce_eval_per_task),
    ]


def write_callbacks(path: Path, preset: Preset, row: Row, probe_out: Path) -> None:
    """The run's trainer callbacks (replacing stage2.yaml's list): the transfer, and the probe where asked."""
    callbacks: list[dict[str, Any]] = [
        {
            "class_path": "actionprior.training.transfer.ActionPriorTransfer",
            "init_args": {"decay_steps": preset.decay_steps, "latent_head_init": row.latent_head_init},
        }
    ]
    if row.probe:
        callbacks.append(
            {
                "class_path": "actionprior.study.probe.EarlyTrainingProbe",
                "init_args": {"out": str(probe_out), "steps": preset.probe_steps},
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}}, indent=2))  # JSON is valid YAML
