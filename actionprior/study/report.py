"""The study's report: ``report.md``, ``figures.json`` (every number of every figure) and PNG plots.

Success per row is pooled over training seeds (Wilson interval on the pooled episodes); the difference to
the no-prior row is a paired bootstrap over the shared evaluation episodes (see stats.py). The report is
rebuilt from the run folder alone, so it can be regenerated at any point of an interrupted study.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from actionprior.study.plan import PRIORS, ROWS, SCARCE, Preset, manifest_transitions, slug
from actionprior.study.runner import LEDGER
from actionprior.study.stats import Interval, paired_bootstrap_diff, wilson

BASELINE = "no prior"
MAIN = "action-state prior"
ZMEAN = "action-state prior, z' head at mean latent"
SCALED = "action-state prior, 4x Stage 1 data"
HISTORY = "+ history"
ACTION_ONLY = "action-only prior"
UNSEEN = "unseen robot (prior without Panda)"
PARTS = ("rich", "scarce")


def _episodes(root: Path, row: str, seed: int, point: str, part: str) -> list[dict[str, Any]] | None:
    """The episodes of one part (rich: every embodiment but the scarce one), from its own evaluation or
    from a joint one (``<point>-all``)."""
    folder = root / "eval" / slug(row) / f"seed{seed}"
    for name in (f"{point}-{part}", f"{point}-all"):
        path = folder / name / "report.json"
        if path.exists():
            episodes = json.loads(path.read_text())["episodes"]
            return [e for e in episodes if (e["embodiment"] == SCARCE) == (part == "scarce")]
    return None


def outcomes(root: Path, preset: Preset, row: str, point: str, parts: tuple[str, ...]) -> dict[int, dict]:
    """``{training seed: {(embodiment, task, episode seed): 0/1}}`` for the seeds whose evaluations exist."""
    out: dict[int, dict] = {}
    for seed in preset.seeds:
        eps: dict[tuple[str, str, int], float] = {}
        for part in parts:
            found = _episodes(root, row, seed, point, part)
            if found is None:
                eps = {}
                break
            eps.update(
                {(e["embodiment"], e["task"], int(e["seed"])): float(bool(e["success"])) for e in found}
            )
        if eps:
            out[seed] = eps
    return out


def _interval(per_seed: dict[int, dict]) -> Interval | None:
    if not per_seed:
        return None
    values = [v for eps in per_seed.values() for v in eps.values()]
    return wilson(int(sum(values)), len(values))


def _paired(treat: dict[int, dict], ctrl: dict[int, dict]) -> Interval | None:
    seeds = sorted(set(treat) & set(ctrl))
    if not seeds:
        return None
    keys = sorted(set.intersection(*(set(treat[s]) for s in seeds), *(set(ctrl[s]) for s in seeds)))
    if not keys:
        return None
    return paired_bootstrap_diff(
        {s: [treat[s][k] for k in keys] for s in seeds}, {s: [ctrl[s][k] for k in keys] for s in seeds}
    )


def _probe(root: Path, preset: Preset, row: str) -> dict[str, Any] | None:
    runs = []
    for seed in preset.seeds:
        path = root / "stage2" / slug(row) / f"seed{seed}" / "probe.json"
        if path.exists():
            runs.append(json.loads(path.read_text()))
    if not runs:
        return None
    n = min(len(r["steps"]) for r in runs)
    if n == 0:
        return None
    mean = {
        k: [statistics.fmean(r[k][i] for r in runs) for i in range(n)]
        for k in ("pred_loss", "grad_backbone", "grad_action")
    }
    return {"seeds": len(runs), "steps": runs[0]["steps"][:n], **mean}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def collect_figures(root: Path, preset: Preset) -> dict[str, Any]:
    ledger = json.loads((root / LEDGER).read_text())["units"] if (root / LEDGER).exists() else {}
    figures: dict[str, Any] = {
        "preset": preset.to_dict(),
        "rows": {},
        "scaling": {},
        "probe": {},
        "notes": [],
    }

    data = root / "data"
    frames = {n: manifest_transitions(data / n) for n in ("rich", "scarce", "extra-rich", "extra-scarce")
              if (data / n / "manifest.json").exists()}  # fmt: skip
    if "rich" in frames and "scarce" in frames:
        total = frames["rich"] + frames["scarce"]
        figures["data"] = {"transitions": frames, "scarce_fraction_stage2": frames["scarce"] / total if total else None,
                           "stage1_transitions": {k: sum(frames.get(d, 0) for d in p["datasets"]) for k, p in PRIORS.items()}}  # fmt: skip

    base = {p: outcomes(root, preset, BASELINE, "final", p) for p in (("rich",), ("scarce",), PARTS)}
    for row in ROWS:
        entry: dict[str, Any] = {"seeds": {}}
        skipped = [
            v["note"]
            for k, v in ledger.items()
            if k.startswith(f"stage2/{slug(row.name)}/") and v["status"] == "skipped"
        ]
        if skipped:
            entry["skipped"] = skipped[0]
        for label, parts in (("overall", PARTS), ("rich", ("rich",)), ("scarce", ("scarce",))):
            res = outcomes(root, preset, row.name, "final", parts)
            ci = _interval(res)
            entry[label] = ci.to_dict() if ci else None
            entry["seeds"][label] = {s: statistics.fmean(v.values()) for s, v in res.items()}
            if row.name != BASELINE:
                diff = _paired(res, base[parts])
                entry[f"{label}_vs_no_prior"] = diff.to_dict() if diff else None
        figures["rows"][row.name] = entry
        if row.early_eval:
            early = outcomes(root, preset, row.name, "early", PARTS)
            ci = _interval(early)
            figures["scaling"][row.name] = {
                "early_step": preset.early_step,
                "early": ci.to_dict() if ci else None,
                "final": entry["overall"],
                "final_step": preset.stage2_steps,
            }
        if row.probe:
            figures["probe"][row.name] = _probe(root, preset, row.name)

    # Paired comparisons between prior rows (same evaluation episodes): what each claim is about.
    def final(name: str, point: str = "final") -> dict[int, dict]:
        return outcomes(root, preset, name, point, PARTS)

    pairs = {
        "history_vs_prior": _paired(final(HISTORY), final(MAIN)),
        "action_state_vs_action_only": _paired(final(MAIN), final(ACTION_ONLY)),
        "zmean_vs_default_head": _paired(final(ZMEAN), final(MAIN)),
        "4x_vs_1x_final": _paired(final(SCALED), final(MAIN)),
        "4x_vs_1x_early": _paired(final(SCALED, "early"), final(MAIN, "early")),
        "1x_vs_no_prior_early": _paired(final(MAIN, "early"), final(BASELINE, "early")),
        # The unseen robot's own tasks: a prior that never saw Panda against one that did.
        "unseen_vs_seen_scarce": _paired(
            outcomes(root, preset, UNSEEN, "final", ("scarce",)),
            outcomes(root, preset, MAIN, "final", ("scarce",)),
        ),
    }
    figures["pairs"] = {k: v.to_dict() if v else None for k, v in pairs.items()}

    p, s = figures["probe"].get(MAIN), figures["probe"].get(BASELINE)
    if p and s:
        figures["probe_ratios"] = {
            "initial_pred_loss_no_prior_over_prior": _ratio(s["pred_loss"][0], p["pred_loss"][0]),
            "mean_pred_loss_no_prior_over_prior": _ratio(statistics.fmean(s["pred_loss"]), statistics.fmean(p["pred_loss"])),
            "mean_grad_backbone_no_prior_over_prior": _ratio(statistics.fmean(s["grad_backbone"]), statistics.fmean(p["grad_backbone"])),
            "mean_grad_action_no_prior_over_prior": _ratio(statistics.fmean(s["grad_action"]), statistics.fmean(p["grad_action"])),
        }  # fmt: skip

    initial = root / "analysis" / "initial_loss.json"
    if initial.exists():
        figures["initial_loss"] = json.loads(initial.read_text())

    s1 = ledger.get("stage1/as-1x", {}).get("seconds")
    # Stage 2 of the 4x row: the action-state architecture without the probe's extra passes.
    s2 = [
        v["seconds"]
        for k, v in ledger.items()
        if k.startswith(f"stage2/{slug(SCALED)}/") and v["status"] == "done"
    ]
    if s1 and s2:
        figures["wallclock"] = {"stage1_s": s1, "stage2_s_mean": statistics.fmean(s2),
                                "stage1_fraction_of_stage1_plus_stage2": s1 / (s1 + statistics.fmean(s2))}  # fmt: skip
    figures["units"] = {k: v["status"] for k, v in sorted(ledger.items())}
    figures["unit_seconds"] = {k: v["seconds"] for k, v in sorted(ledger.items()) if v["status"] == "done"}
    return figures


# ------------------------------------------------------------------------------------------------ claims
def _verdict(diff: dict | None) -> str:
    if not diff:
        return "not measured"
    if diff["low"] > 0:
        return "yes"
    if diff["high"] < 0:
        return "no (opposite)"
    return "not shown (interval includes 0)"


def _pct(ci: dict | None, signed: bool = False) -> str:
    if not ci:
        return "—"
    sign = "+" if signed else ""
    return f"{100 * ci['estimate']:{sign}.1f} [{100 * ci['low']:{sign}.1f}, {100 * ci['high']:{sign}.1f}]"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _change(before: dict | None, after: dict | None, diff: dict | None) -> str:
    """``before → after (Δ [interval])`` in %."""
    if not (before and after):
        return _pct(diff, True)
    return f"{100 * before['estimate']:.1f} → {100 * after['estimate']:.1f} ({_pct(diff, True)})"


def _larger(a: dict | None, b: dict | None) -> str:
    """Is gain ``a`` larger than gain ``b``? Conservative: only intervals that do not overlap decide."""
    if not (a and b):
        return "not measured"
    if a["low"] > b["high"]:
        return "yes"
    if a["high"] < b["low"]:
        return "no (opposite)"
    return "not shown (intervals overlap)"


def claims(fig: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = fig["rows"]
    main, base = rows.get(MAIN, {}), rows.get(BASELINE, {})
    out = [
        ("the action-state prior raises overall success", "55.3 → 64.9 (+9.6)",
         _change(base.get("overall"), main.get("overall"), main.get("overall_vs_no_prior")),
         _verdict(main.get("overall_vs_no_prior"))),
        ("… on the scarce embodiment (real Franka / our Panda)", "35.0 → 61.3 (+26.3)",
         _change(base.get("scarce"), main.get("scarce"), main.get("scarce_vs_no_prior")),
         _verdict(main.get("scarce_vs_no_prior"))),
        ("… on the data-rich embodiments", "64.3 → 66.5 (+2.2)",
         _change(base.get("rich"), main.get("rich"), main.get("rich_vs_no_prior")),
         _verdict(main.get("rich_vs_no_prior"))),
        ("the gain is larger on the scarce embodiment than on the data-rich ones", "+26.3 vs +2.2",
         f"{_pct(main.get('scarce_vs_no_prior'), True)} vs {_pct(main.get('rich_vs_no_prior'), True)}",
         _larger(main.get("scarce_vs_no_prior"), main.get("rich_vs_no_prior"))),
    ]  # fmt: skip
    pairs = fig.get("pairs", {})
    out.append(("action-state prior beats action-only prior", "+3.7 vs +0.8 over no prior (sim)",
                f"action-state − action-only = {_pct(pairs.get('action_state_vs_action_only'), True)}",
                _verdict(pairs.get("action_state_vs_action_only"))))  # fmt: skip
    out.append(("the history token adds on top of the prior", "64.9 → 68.0",
                f"history − prior = {_pct(pairs.get('history_vs_prior'), True)}", _verdict(pairs.get("history_vs_prior"))))  # fmt: skip
    sc = fig.get("scaling", {})
    one, four = sc.get(MAIN, {}), sc.get(SCALED, {})
    if one.get("early") and four.get("early"):
        ours = (f"{_pct(sc.get(BASELINE, {}).get('early'))} → {_pct(one['early'])} → {_pct(four['early'])} "
                f"(step {one['early_step']}); 4× − 1× = {_pct(pairs.get('4x_vs_1x_early'), True)}")  # fmt: skip
        out.append(("4× Stage 1 data improves early Stage 2 success", "21.2 → 32.2 → 35.4 (5k steps)", ours,
                    _verdict(pairs.get("4x_vs_1x_early"))))  # fmt: skip
    else:
        out.append(
            (
                "4× Stage 1 data improves early Stage 2 success",
                "21.2 → 32.2 → 35.4 (5k steps)",
                "—",
                "not measured",
            )
        )
    r = fig.get("probe_ratios", {})
    loss = r.get("initial_pred_loss_no_prior_over_prior")
    out.append(("initial L_pred lower with the prior", "≈8× lower", f"no prior / prior = {_x(loss)}",
                "—" if loss is None else ("yes" if loss > 1 else "no (opposite)")))  # fmt: skip
    mean_loss = r.get("mean_pred_loss_no_prior_over_prior")
    steps = len((fig["probe"].get(MAIN) or {}).get("steps", []))
    out.append((f"L_pred lower with the prior over the first {steps} steps (mean)", "—",
                f"no prior / prior = {_x(mean_loss)}",
                "—" if mean_loss is None else ("yes" if mean_loss > 1 else "no (opposite)")))  # fmt: skip
    grad = r.get("mean_grad_backbone_no_prior_over_prior")
    out.append(("L_pred gradient norm lower with the prior (backbone, first steps)", "≈16× lower",
                f"no prior / prior = {_x(grad)}", "—" if grad is None else ("yes" if grad > 1 else "no (opposite)")))  # fmt: skip
    wc = fig.get("wallclock", {})
    frac = wc.get("stage1_fraction_of_stage1_plus_stage2")
    out.append(("Stage 1 is a small part of the wall-clock", "≈10 %", "—" if frac is None else f"{100 * frac:.0f} %",
                "—" if frac is None else ("yes" if frac <= 0.2 else "no")))  # fmt: skip
    zm = rows.get(ZMEAN, {})
    if zm.get("overall") and main.get("overall"):
        diff = pairs.get("zmean_vs_default_head")
        keep = "stage1_mean" if diff and diff["low"] > 0 else "default"
        why = (" (mean-latent start better, interval above 0)" if keep != "default"
               else " (the mean-latent start is worse, interval below 0)" if diff and diff["high"] < 0
               else " (no significant gain from the mean-latent start)")  # fmt: skip
        out.append(("(ours) z' head started at the mean Stage 1 latent", "—",
                    f"{_pct(zm['overall'])} vs {_pct(main['overall'])} (default head); Δ = {_pct(diff, True)}",
                    f"keep {keep}{why}"))  # fmt: skip
    un = rows.get(UNSEEN, {})
    out.append(("a prior helps an embodiment it never saw", "not evaluated",
                un.get("skipped") or f"Panda: unseen-prior − no prior = {_pct(un.get('scarce_vs_no_prior'), True)}",
                "skipped" if un.get("skipped") else _verdict(un.get("scarce_vs_no_prior"))))  # fmt: skip
    if not un.get("skipped"):
        gap = pairs.get("unseen_vs_seen_scarce")
        out.append(("… and how much of the gain needs the robot in Stage 1", "not evaluated",
                    f"Panda: unseen-prior − seen-prior = {_pct(gap, True)}",
                    "—" if not gap else ("no loss shown" if gap["low"] <= 0 <= gap["high"] else
                                         ("seen prior better" if gap["high"] < 0 else "unseen prior better"))))  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ output
def write_report(root: Path, preset: Preset) -> Path:
    fig = collect_figures(root, preset)
    (root / "figures.json").write_text(json.dumps(fig, indent=2, default=str))
    plots = make_plots(root, fig)
    lines = [f"# Reproduction study ({preset.name} preset)", ""]
    d = fig.get("data")
    if d:
        lines += [f"Scarce embodiment: `{SCARCE}`, {100 * d['scarce_fraction_stage2']:.1f} % of Stage 2 frames "
                  f"(transitions per dataset: {d['transitions']}). Stage 1 transitions per prior: "
                  f"{d['stage1_transitions']}.", ""]  # fmt: skip
    lines += [f"Stage 2: {preset.stage2_steps} steps, λ decays to 0 at step {preset.decay_steps}; training seeds "
              f"{list(preset.seeds)}; evaluation seeds fixed (the same episodes for every row): "
              f"{preset.eval_rich_episodes}/task on the data-rich tasks, {preset.scarce_eval_per_task}/task on Panda, "
              "per training seed.", "",
              "Success in %, pooled over training seeds, with 95 % Wilson intervals; Δ = paired difference to "
              "no prior over the shared evaluation episodes (paired bootstrap, 10 000 resamples, seed-averaged).", "",
              "| row | overall | data-rich | scarce (Panda) | Δ overall | Δ data-rich | Δ scarce | per-seed overall |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, e in fig["rows"].items():
        if e.get("skipped"):
            lines.append(f"| {name} | skipped: {e['skipped']} | | | | | | |")
            continue
        seeds = ", ".join(f"{100 * v:.0f}" for v in e["seeds"]["overall"].values()) or "—"
        lines.append(f"| {name} | {_pct(e['overall'])} | {_pct(e['rich'])} | {_pct(e['scarce'])} | "
                     f"{_pct(e.get('overall_vs_no_prior'), True)} | {_pct(e.get('rich_vs_no_prior'), True)} | "
                     f"{_pct(e.get('scarce_vs_no_prior'), True)} | {seeds} |")  # fmt: skip
    sc = e_half = fig["rows"].get(MAIN, {}).get("scarce")
    if e_half:
        lines += [
            "",
            f"Scarce-embodiment interval half-width (action-state prior): {100 * sc['half_width']:.1f} points.",
        ]
    if fig["scaling"]:
        lines += [
            "",
            "## Stage 1 data scaling",
            "",
            f"| row | step {preset.early_step} | step {preset.stage2_steps} |",
            "|---|---|---|",
        ]
        for name, s in fig["scaling"].items():
            lines.append(f"| {name} | {_pct(s['early'])} | {_pct(s['final'])} |")
    if fig["probe"]:
        lines += ["", "## Early training (L_pred alone, mean over seeds)", "",
                  "| row | L_pred step 0 | mean L_pred | mean ‖∇L_pred‖ backbone | mean ‖∇L_pred‖ action module |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, pr in fig["probe"].items():
            if pr:
                lines.append(f"| {name} | {pr['pred_loss'][0]:.3f} | {statistics.fmean(pr['pred_loss']):.3f} | "
                             f"{statistics.fmean(pr['grad_backbone']):.3g} | {statistics.fmean(pr['grad_action']):.3g} |")  # fmt: skip
        il = fig.get("initial_loss") or {}

        def at(key: str) -> str:
            return f" ({il[key]:.2f} here)" if isinstance(il.get(key), float) else ""

        fresh, oracle = at("prior, fresh z' head"), at("prior, z' = z (oracle)")

        lines += ["", "Why the sign can be the opposite of the paper's: the no-prior decoder is adaLN-zero, so at step 0 "
                  f"it predicts zero velocity (L_pred = E‖a − ε‖²{at('no prior, adaLN-zero decoder')}) and no L_pred "
                  "gradient reaches the backbone; the prior's decoder is conditioned on a z' that an untrained head puts "
                  f"at an arbitrary point of the latent space{fresh}, far from what the decoder "
                  f"reconstructs from the true z{oracle}. The paper's baseline head is likely not "
                  "zero-initialised. The `z' head at mean latent` row starts z' at the mean Stage 1 latent instead."]  # fmt: skip
    il = fig.get("initial_loss")
    if il:
        lines += ["", "L_pred at step 0 on the same batches and noise, by initialisation (`actionprior.study.initial_loss`):",
                  "", "| initialisation | L_pred |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {v:.3f} |" for k, v in il.items() if isinstance(v, float)]
    wc = fig.get("wallclock")
    if wc:
        lines += ["", f"Stage 1 wall-clock: {wc['stage1_s']:.0f} s; one Stage 2 run: {wc['stage2_s_mean']:.0f} s; "
                  f"Stage 1 = {100 * wc['stage1_fraction_of_stage1_plus_stage2']:.0f} % of Stage 1 + Stage 2."]  # fmt: skip
    seconds = list(fig.get("unit_seconds", {}).values())
    if seconds:
        lines += ["", f"Study wall-clock: {sum(seconds) / 60:.0f} min over {len(seconds)} units (sum of the ledger's "
                  "unit times; a resumed study counts each unit's last run)."]  # fmt: skip
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Claims", "", "| claim | paper | ours | reproduced? |", "|---|---|---|---|"]
    lines += [f"| {c} | {p} | {o} | {v} |" for c, p, o, v in claims(fig)]
    unfinished = [k for k, v in fig["units"].items() if v == "failed"]
    if unfinished:
        lines += ["", f"Failed units (rerun to retry): {unfinished}"]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_plots(root: Path, fig: dict[str, Any]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed (pip install 'actionprior[study]'); no PNG plots written")
        return []
    paths = []
    rows = [(n, e) for n, e in fig["rows"].items() if e.get("overall")]
    if rows:
        f, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.27
        for j, part in enumerate(("overall", "rich", "scarce")):
            xs = [i + (j - 1) * width for i in range(len(rows))]
            est = [100 * (e[part]["estimate"] if e.get(part) else 0) for _, e in rows]
            err = [[100 * (e[part]["estimate"] - e[part]["low"]) if e.get(part) else 0 for _, e in rows],
                   [100 * (e[part]["high"] - e[part]["estimate"]) if e.get(part) else 0 for _, e in rows]]  # fmt: skip
            ax.bar(xs, est, width, yerr=err, capsize=3, label=part)
        ax.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("success % (95 % Wilson)")
        ax.legend()
        f.tight_layout()
        paths.append(_save(f, root / "success.png"))
    if fig["scaling"]:
        f, ax = plt.subplots(figsize=(6, 4))
        for name, s in fig["scaling"].items():
            pts = [(s["early_step"], s["early"]), (s["final_step"], s["final"])]
            pts = [(x, c) for x, c in pts if c]
            if pts:
                ax.errorbar([x for x, _ in pts], [100 * c["estimate"] for _, c in pts],
                            yerr=[[100 * (c["estimate"] - c["low"]) for _, c in pts],
                                  [100 * (c["high"] - c["estimate"]) for _, c in pts]], marker="o", capsize=3, label=name)  # fmt: skip
        ax.set_xlabel("Stage 2 step")
        ax.set_ylabel("overall success %")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        f.tight_layout()
        paths.append(_save(f, root / "scaling.png"))
    probes = {n: p for n, p in fig["probe"].items() if p}
    if probes:
        f, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for name, p in probes.items():
            for ax, key, title in zip(axes, ("pred_loss", "grad_backbone", "grad_action"),
                                      ("L_pred", "‖∇L_pred‖ backbone", "‖∇L_pred‖ action module"), strict=True):  # fmt: skip
                ax.plot(p["steps"], p[key], label=name)
                ax.set_title(title)
                ax.set_xlabel("step")
                ax.set_yscale("log")
        axes[0].legend(fontsize=7)
        f.tight_layout()
        paths.append(_save(f, root / "early_training.png"))
    return paths


def _save(f: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    f.savefig(path, dpi=110)
    plt.close(f)
    return path
