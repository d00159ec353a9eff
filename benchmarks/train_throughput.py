"""Stage 2 training throughput (``make bench-train``): steps/s, samples/s, tokens/s, MFU and peak memory.

Each configuration is one short ``Trainer.fit`` of the real :class:`VLAModule` (the model, optimiser,
precision plugin and strategy that ``actionprior fit`` uses) on synthetic in-memory batches of the
contract's shapes (:mod:`benchmarks.synthetic_batches`), timed after ``--warmup`` steps:

* **step time**: wall time between consecutive ``on_train_batch_end`` calls, with a device synchronise
  at each, so batch transfer, optimiser step and logging are inside it;
* **MFU**: analytic model FLOPs per step and device (:mod:`benchmarks.flops`) / step time / the
  device's dense peak (datasheet table in ``benchmarks/flops.py``; on CPU a measured GEMM rate);
* **peak memory**: ``torch.cuda.max_memory_allocated`` (and ``reserved``) of rank 0 since the start of
  training; on CPU the process's peak RSS (``resource.getrusage``), which includes everything loaded.

Configurations vary one factor at a time around ``--base`` (precision, attention, gradient checkpointing,
per-device batch size) on one device; with several GPUs the multi-device strategies (the
``configs/cluster`` files: DDP, FSDP, DeepSpeed ZeRO-2/3) run the base configuration on all of them, and
their final losses are compared with DDP's (same seed, same batches). Beside training:

* the DataModule's delivered samples/s (observation view, same batch, image size and chunk) on this
  machine, against what one training process consumes;
* Stage 1's step time, so the report states Stage 1's share of wall-clock at the paper's step counts
  (5k Stage 1 steps, 50k Stage 2 steps);
* optionally (``--max-batch``) the largest per-device batch that fits in ``--memory-cap-gb`` (default
  80 GB: an H100-80GB budget even on an H200).

    python -m benchmarks.train_throughput                       # GPU: random:qwen3_vl_2b, the matrix
    python -m benchmarks.train_throughput --backbone tiny:qwen3_vl --precision 32-true --batch-size 2 \\
        --steps 3 --warmup 1 --image-size 64 --json out.json     # CPU, reduced scale

Single-device runs execute in this process (``--isolate`` starts one process per run instead: cleaner
memory figures, ~10 s more each); multi-device runs always start their own (Lightning launches the ranks).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
STRATEGY_CONFIGS = {
    "ddp": "configs/cluster/ddp.yaml",
    "fsdp": "configs/cluster/fsdp.yaml",
    "deepspeed_zero2": "configs/cluster/deepspeed_zero2.yaml",
    "deepspeed_zero3": "configs/cluster/deepspeed_zero3.yaml",
}
STRATEGIES = ("single", *STRATEGY_CONFIGS)
# The paper's schedule: Stage 1 and Stage 2 optimiser steps.
PAPER_STEPS = {"stage1": 5_000, "stage2": 50_000}
GIB = 1024**3


@dataclass
class RunSpec:
    """One measured configuration (JSON-serialisable: it is how a run is handed to a child process)."""

    backbone: str
    precision: str = "bf16-mixed"
    attn: str = "sdpa"
    grad_ckpt: bool = False
    batch_size: int = 8
    strategy: str = "single"
    devices: int = 1
    steps: int = 20
    warmup: int = 5
    image_size: int = 224
    cameras: int = 2
    chunk_len: int = 16
    history_len: int = 0  # > 0: use_history with this window
    aux_weight: float = 1.0  # lambda early in Stage 2: the auxiliary branch (encoder, recon) runs
    accelerator: str = "cpu"
    memory_cap_gb: float | None = None
    peak_tflops: float | None = None
    seed: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    kind: str = "stage2"  # or "stage1"

    def label(self) -> str:
        if self.kind == "stage1":
            return f"stage1 {self.precision} b{self.batch_size}"
        gc_ = "gc" if self.grad_ckpt else "no-gc"
        return f"{self.strategy}x{self.devices} {self.precision} {self.attn} {gc_} b{self.batch_size}"


# ------------------------------------------------------------------------------------------ building
def _yaml(path: Path) -> dict[str, Any]:
    """A configs/cluster strategy fragment (a trainer.strategy block, not a stage config)."""
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _stage_init_args(*configs: Path) -> dict[str, Any]:
    """The model's init args of a stage config (and overlays), as ``actionprior fit -c ...`` parses them."""
    from actionprior.training.lightning_cli import read_stage_config

    return dict(read_stage_config(*configs)["model"]["init_args"])


def registry_and_normalization(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The synthetic registry (what the loader benchmark's dataset uses) and statistics over random data."""
    import numpy as np

    from actionprior.data.normalization import Normalizer
    from actionprior.data.stats import compute_stats
    from actionprior.data.synthetic import synthetic_registry

    registry = synthetic_registry()
    rng = np.random.default_rng(seed)
    stats = compute_stats(
        (s.name, rng.normal(size=(64, s.state_dim)), rng.normal(size=(64, s.action_dim))) for s in registry
    )
    return registry, Normalizer(stats, registry).to_dict()


def _accepted(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The kwargs ``cls.__init__`` takes, and the names it does not (reported, not silently lost)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs, []
    return {k: v for k, v in kwargs.items() if k in params}, sorted(set(kwargs) - set(params))


def stage2_kwargs(spec: RunSpec, registry: Any, normalization: dict[str, Any]) -> dict[str, Any]:
    """VLAModule init args: configs/stage2.yaml, the prior from configs/stage1.yaml, then this run's."""
    init = _stage_init_args(REPO / "configs/stage2.yaml")
    if init.get("prior") is None:  # what Stage 2 reads from a Stage 1 checkpoint
        init["prior"] = dict(_stage_init_args(REPO / "configs/stage1.yaml")["prior"])
    overrides = dict(spec.model_overrides)
    vla = {**(init.get("vla") or {}), **overrides.pop("vla", {})}
    init.update(overrides)
    # A benchmark of the VLA's training step: the action head from scratch needs no Stage 1 checkpoint.
    vla.update(
        backbone=spec.backbone,
        attn_implementation=spec.attn,
        gradient_checkpointing=spec.grad_ckpt,
        use_history=spec.history_len > 0,
        action_prior="scratch",
    )
    init.update(
        vla=vla,
        chunk_len=spec.chunk_len,
        train_error_every_n_steps=0,  # no chunk sampling inside the timed steps
        camera_names=[f"cam{i}" for i in range(spec.cameras)],
        embodiments=registry.to_dicts(),
        normalization=normalization,
    )
    return init


def stage1_kwargs(spec: RunSpec, registry: Any, normalization: dict[str, Any]) -> dict[str, Any]:
    init = _stage_init_args(REPO / "configs/stage1.yaml")
    init.update(spec.model_overrides)
    init.update(chunk_len=spec.chunk_len, embodiments=registry.to_dicts(), normalization=normalization)
    return init


def build_strategy(spec: RunSpec) -> Any:
    """``"auto"`` on one device, else the strategy class and init args of its configs/cluster file."""
    if spec.strategy == "single":
        return "auto"
    cfg = _yaml(REPO / STRATEGY_CONFIGS[spec.strategy])["trainer"]["strategy"]
    module_name, _, cls_name = cfg["class_path"].rpartition(".")
    if not module_name.startswith(("lightning.", "actionprior.")):  # the repo's own configs only
        raise ValueError(f"{STRATEGY_CONFIGS[spec.strategy]}: unexpected strategy class {cfg['class_path']}")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**(cfg.get("init_args") or {}))


# ------------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_timer(warmup: int, seed: int) -> Any:
    import lightning as L

    class StepTimer(L.Callback):
        """Wall time between consecutive batch ends (synchronised) and each step's loss."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            # Every strategy reseeds (or not) at its own point of setup; seeding here, on every rank, makes
            # the flow-matching noise of step k the same under every strategy, so final losses compare.
            L.seed_everything(seed, verbose=False)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            _sync(pl_module.device)
            self.ends.append(time.perf_counter())
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss.detach().float().item()) if loss is not None else math.nan)

        def step_times(self) -> list[float]:
            return [b - a for a, b in zip(self.ends[warmup - 1 : -1], self.ends[warmup:], strict=True)]

    return StepTimer()


def _memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}


def _build_module(cls: type, kwargs: dict[str, Any], device: torch.device) -> tuple[Any, str]:
    """Build on the GPU directly (random init of 2B parameters on the CPU takes tens of seconds); if that
    fails, build on the CPU and say so in the result."""
    if device.type != "cuda":
        return cls(**kwargs), "cpu"
    try:
        with torch.device(device):
            return cls(**kwargs), str(device)
    except Exception as err:  # recorded in the result, not hidden
        gc.collect()
        torch.cuda.empty_cache()
        return cls(**kwargs), f"cpu (building on {device} failed: {type(err).__name__}: {err})"


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train ``warmup + steps`` steps of one configuration; the measurements (rank 0's view)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from benchmarks.flops import Layout, describe_params, peak_flops, vla_train_flops
    from benchmarks.synthetic_batches import CycledBatches, make_batch

    if spec.warmup < 1 or spec.steps < 1:
        raise ValueError(f"--warmup and --steps must be >= 1, got {spec.warmup} and {spec.steps}")
    cuda = spec.accelerator in ("cuda", "gpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda and spec.memory_cap_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec.memory_cap_gb * 1e9 / total), device)
    L.seed_everything(spec.seed, verbose=False)
    registry, normalization = registry_and_normalization(spec.seed)
    history_len = spec.history_len if spec.kind == "stage2" else 0
    data_kwargs = dict(
        registry=registry,
        batch_size=spec.batch_size,
        chunk_len=spec.chunk_len,
        history_len=history_len,
        cameras=spec.cameras,
        image_size=spec.image_size,
        seed=spec.seed,
        with_images=spec.kind == "stage2",
    )
    if spec.kind == "stage2":
        from actionprior.training.vla_module import VLAModule as cls

        kwargs = stage2_kwargs(spec, registry, normalization)
    else:
        from actionprior.training.action_prior_module import ActionPriorModule as cls

        kwargs = stage1_kwargs(spec, registry, normalization)
    kwargs, ignored = _accepted(cls, kwargs)
    t0 = time.perf_counter()
    module, built_on = _build_module(cls, kwargs, device)
    build_s = time.perf_counter() - t0
    result: dict[str, Any] = {"spec": asdict(spec), "label": spec.label(), "build_s": build_s}
    result["built_on"] = built_on
    if ignored:
        result["ignored_config_keys"] = ignored
    flops = None
    tokens_per_sample = patches_per_sample = None
    if spec.kind == "stage2":
        module.aux_weight = spec.aux_weight  # what ActionPriorTransfer sets early in Stage 2
        vla = module.model
        nq = vla.num_queries + int(vla.use_history)
        layout = Layout.of(vla.backbone, make_batch(**data_kwargs), nq)
        passes = 2 if vla.use_history and module.vla_config.history_mode == "exact" else 1
        tokens_per_sample = layout.seq_len * passes
        patches_per_sample = sum(layout.patches) * passes / layout.batch
        try:
            flops = vla_train_flops(
                vla, layout, spec.chunk_len, spec.aux_weight, module.vla_config.history_mode, history_len
            )
        except ValueError as err:  # a family the analytic model does not cover: no MFU, said so
            result["flops_error"] = str(err)
        result["params"] = (
            describe_params(vla) if flops else {"total": sum(p.numel() for p in vla.parameters())}
        )
        result["seq_len"] = layout.seq_len
        # Frames at the processor's own size are patchified as tensors on the device; any other size goes
        # through the processor's PIL resize on the CPU inside every step (slow: pick a size that avoids it).
        applies = getattr(vla.backbone.adapter, "tensor_path_applies", None)
        on_tensors = bool(applies and applies(spec.image_size, spec.image_size))
        result["image_preprocessing"] = "tensor (no resize)" if on_tensors else "image processor (PIL)"
        result["patches_per_image"] = sorted(set(layout.patches))
    else:
        result["params"] = {"total": sum(p.numel() for p in module.parameters())}
    timer = _make_timer(spec.warmup, spec.seed)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=spec.devices,
        strategy=build_strategy(spec),
        precision=spec.precision,
        max_steps=spec.warmup + spec.steps,
        max_epochs=-1,
        gradient_clip_val=1.0,  # as configs/stage*.yaml (DeepSpeed applies it in its own config)
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    loader = DataLoader(CycledBatches(**data_kwargs), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    times = timer.step_times()
    step_s = statistics.mean(times)
    world = trainer.world_size
    result.update(
        status="ok",
        world_size=world,
        step_s_mean=step_s,
        step_s_median=statistics.median(times),
        step_s_min=min(times),
        steps_per_s=1.0 / step_s,
        samples_per_s=spec.batch_size * world / step_s,
        samples_per_s_per_device=spec.batch_size / step_s,
        losses=timer.losses,
        loss_first=timer.losses[0],
        loss_last=statistics.mean(timer.losses[-min(5, len(timer.losses)) :]),
        **_memory(device),
    )
    if tokens_per_sample is not None:
        result["tokens_per_sample"] = tokens_per_sample
        result["tokens_per_s"] = tokens_per_sample * spec.batch_size * world / step_s
        result["vision_patches_per_s"] = patches_per_sample * spec.batch_size * world / step_s
    if flops is not None:
        peak = peak_flops(device, spec.precision, spec.peak_tflops)
        result["flops_per_step_per_device"] = flops
        result["achieved_tflops_per_device"] = flops["total"] / step_s / 1e12
        result["peak"] = asdict(peak)
        result["mfu"] = flops["total"] / step_s / (peak.tflops * 1e12)
        result["mfu_method"] = "analytic (benchmarks/flops.py)"
    if cuda:
        result["device_name"] = torch.cuda.get_device_name(device)
    del trainer, module, loader
    return result


def run_guarded(spec: RunSpec) -> dict[str, Any]:
    """:func:`run_one`, with an out-of-memory or any other failure reported as a result row."""
    result: dict[str, Any]
    try:
        result = run_one(spec)
    except torch.OutOfMemoryError as err:
        result = {
            "spec": asdict(spec),
            "label": spec.label(),
            "status": "oom",
            "error": str(err).split("\n")[0],
        }
    except Exception as err:
        result = {
            "spec": asdict(spec),
            "label": spec.label(),
            "status": "error",
            "error": f"{type(err).__name__}: {err}".split("\n")[0][:500],
            "traceback": traceback.format_exc()[-3000:],
        }
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def run_isolated(spec: RunSpec, timeout_s: float) -> dict[str, Any]:
    """One configuration in a fresh process (multi-device runs: Lightning starts the other ranks)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--one", json.dumps(asdict(spec))]
        cmd += ["--out", str(out)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {
                "spec": asdict(spec),
                "label": spec.label(),
                "status": "timeout",
                "error": f"> {timeout_s:.0f} s",
            }
        if out.is_file():
            return json.loads(out.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {
            "spec": asdict(spec),
            "label": spec.label(),
            "status": "error",
            "error": f"exit {proc.returncode}: {tail[0][:500]}",
            "stderr_tail": proc.stderr[-3000:],
        }


# ------------------------------------------------------------------------------------------ loader
def measure_loader(
    data_dir: Path,
    spec: RunSpec,
    workers: int,
    batches: int,
    episodes_per_embodiment: int,
) -> dict[str, Any]:
    """Delivered samples/s of the streaming DataModule (observation view) for ``spec``'s batch."""
    from actionprior.data.datamodule import ActionPriorDataModule
    from actionprior.data.synthetic import write_synthetic_dataset
    from benchmarks.data_throughput import time_loader

    if not (data_dir / "stats.json").exists():
        t0 = time.perf_counter()
        write_synthetic_dataset(
            data_dir,
            episodes_per_embodiment=episodes_per_embodiment,
            length_range=(60, 120),
            shard_sizes=(8, 5, 11, 6),
            image_size=spec.image_size,
        )
        print(
            f"wrote {data_dir} ({spec.image_size}px frames) in {time.perf_counter() - t0:.1f} s", flush=True
        )
    dm = ActionPriorDataModule(
        datasets=[str(data_dir)],
        view="observation",
        chunk_len=spec.chunk_len,
        history_len=max(spec.history_len, 1),
        batch_size=spec.batch_size,
        num_workers=workers,
        batches_per_epoch=batches,
        val_fraction=0.0,
        image_size=spec.image_size,
        seed=spec.seed,
    )
    first_s, n, elapsed = time_loader(dm.train_dataloader())
    return {
        "workers": workers,
        "batch_size": spec.batch_size,
        "image_size": spec.image_size,
        "first_batch_s": first_s,
        "samples": n,
        "samples_per_s": n / elapsed,
        "cpus": os.cpu_count(),
    }


# ------------------------------------------------------------------------------------------ the matrix
def plan_runs(
    args: argparse.Namespace, base: RunSpec, n_gpus: int
) -> tuple[list[RunSpec], list[dict[str, Any]]]:
    """One factor at a time around ``base``; what cannot run here is listed with the reason."""
    from importlib.util import find_spec

    runs: list[RunSpec] = []
    skipped: list[dict[str, Any]] = []

    def add(spec: RunSpec) -> None:
        if spec not in runs:
            runs.append(spec)

    add(base)
    for precision in args.precision:
        spec = replace(base, precision=precision)
        if precision == "32-true" and spec.attn == "flash_attention_2":  # flash-attn kernels are 16-bit only
            spec = replace(spec, attn="sdpa")
        add(spec)
    for attn in args.attn:
        if attn == "flash_attention_2" and not (base.accelerator == "cuda" and find_spec("flash_attn")):
            skipped.append(
                {"label": replace(base, attn=attn).label(), "reason": "flash_attn not installed or no CUDA"}
            )
            continue
        add(replace(base, attn=attn))
    for gc_ in args.grad_ckpt:
        add(replace(base, grad_ckpt=gc_ == "on"))
    for bs in args.batch_size:
        add(replace(base, batch_size=bs))
    for strategy in args.strategies:
        if strategy == "single":
            continue
        spec = replace(base, strategy=strategy, devices=n_gpus)
        if base.accelerator == "cpu" and strategy != "ddp":
            skipped.append({"label": spec.label(), "reason": "CUDA only"})
        elif n_gpus < 2:
            unit = "GPUs" if base.accelerator == "cuda" else "processes (--devices)"
            skipped.append({"label": spec.label(), "reason": f"needs >= 2 {unit}, {n_gpus} visible"})
        elif strategy.startswith("deepspeed") and not find_spec("deepspeed"):
            skipped.append(
                {"label": spec.label(), "reason": "deepspeed not installed (pip install '.[gpu]')"}
            )
        else:
            add(spec)
    return runs, skipped


def max_batch_search(
    base: RunSpec, start: int, limit: int, run: Any, stop: Any = lambda: False
) -> dict[str, Any]:
    """Double the per-device batch from ``start`` until a run does not fit, then bisect once between the
    last fit and the first failure: the largest batch measured to fit (a lower bound within 25 %)."""
    tried: list[dict[str, Any]] = []
    fit, fail = 0, None
    bs = start
    while bs <= limit and not stop():  # stop(): the time budget is spent (the answer is then a lower bound)
        r = run(replace(base, batch_size=bs, steps=2, warmup=1))
        tried.append(
            {"batch_size": bs, "status": r["status"], **{k: r[k] for k in ("peak_allocated_gib",) if k in r}}
        )
        if r["status"] != "ok":
            fail = bs
            break
        fit, bs = bs, bs * 2
    if fit and fail and fail - fit > 1 and not stop():
        mid = (fit + fail) // 2
        r = run(replace(base, batch_size=mid, steps=2, warmup=1))
        tried.append(
            {"batch_size": mid, "status": r["status"], **{k: r[k] for k in ("peak_allocated_gib",) if k in r}}
        )
        if r["status"] == "ok":
            fit = mid
    return {
        "config": base.label(),
        "memory_cap_gb": base.memory_cap_gb,
        "largest_fitting_batch": fit,
        "first_failing": fail,
        "tried": tried,
    }


def stage1_share(stage1_step_s: float, stage2_step_s: float) -> dict[str, float]:
    """Stage 1's fraction of the two stages' wall-clock at the paper's step counts."""
    t1 = PAPER_STEPS["stage1"] * stage1_step_s
    t2 = PAPER_STEPS["stage2"] * stage2_step_s
    return {
        "stage1_steps": PAPER_STEPS["stage1"],
        "stage2_steps": PAPER_STEPS["stage2"],
        "stage1_h": t1 / 3600,
        "stage2_h": t2 / 3600,
        "stage1_share": t1 / (t1 + t2),
    }


def loss_agreement(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Each multi-device strategy's final loss against DDP's (relative difference)."""
    ok = {
        r["spec"]["strategy"]: r
        for r in rows
        if r.get("status") == "ok" and r["spec"]["strategy"] != "single"
    }
    if "ddp" not in ok:
        return {"tolerance": tolerance, "note": "no DDP run to compare with"}
    ref = ok["ddp"]["loss_last"]
    out: dict[str, Any] = {"tolerance": tolerance, "ddp_loss_last": ref}
    for name, r in ok.items():
        if name != "ddp":
            rel = abs(r["loss_last"] - ref) / max(abs(ref), 1e-12)
            out[name] = {"loss_last": r["loss_last"], "rel_diff": rel, "within": rel <= tolerance}
    return out


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"### Stage 2 training throughput: `{meta['backbone']}` on {meta['device']}",
        "",
        f"{meta['params_total'] / 1e6:,.1f} M parameters; images {meta['image_size']} px x {meta['cameras']} cameras, "
        f"chunk {meta['chunk_len']}; {meta['steps']} timed steps after {meta['warmup']} warm-up; MFU: {meta['mfu_method']}; "
        f"peak {meta.get('peak_source', '?')}; load average {', '.join(f'{x:.1f}' for x in meta.get('load_average', []))}.",
        "",
        "| strategy | devices | precision | attention | grad ckpt | batch/device | steps/s | samples/s | tokens/s | MFU | peak mem (GiB) | loss (last 5) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["train"]:
        s = r["spec"]
        mem = r.get("peak_allocated_gib", r.get("peak_rss_gib"))
        ok = r.get("status") == "ok"

        def f(key: str, fmt: str, row: dict[str, Any] = r) -> str:
            return format(row[key], fmt) if row.get("status") == "ok" and key in row else "-"

        lines.append(
            f"| {s['strategy']} | {s['devices']} | {s['precision']} | {s['attn']} | {'on' if s['grad_ckpt'] else 'off'} "
            f"| {s['batch_size']} | {f('steps_per_s', '.2f')} | {f('samples_per_s', ',.1f')} | {f('tokens_per_s', ',.0f')} "
            f"| {f('mfu', '.1%')} | {format(mem, '.2f') if ok and mem is not None else '-'} | {f('loss_last', '.4f')} "
            f"| {r.get('status')}{': ' + r['error'][:80] if r.get('error') else ''} |"
        )
    for s in report.get("skipped", []):
        lines.append(f"| {s['label']} | | | | | | | | | | | | skipped: {s['reason']} |")
    lines.append("")
    if report.get("loader"):
        ld = report["loader"]
        lines.append(
            f"Loader (observation view, {ld['workers']} workers, batch {ld['batch_size']}, {ld['image_size']} px): "
            f"{ld['samples_per_s']:,.1f} samples/s delivered = {ld.get('ratio_to_training', float('nan')):.2f}x "
            "what one training process of the base configuration consumes (target >= 3x)."
        )
    if report.get("stage1"):
        st = report["stage1"]
        share = report.get("stage1_share")
        text = f"Stage 1 step: {st.get('step_s_mean', float('nan')) * 1e3:.1f} ms ({st.get('status')})."
        if share:
            text += (
                f" At the paper's {share['stage1_steps']:,} Stage 1 and {share['stage2_steps']:,} Stage 2 steps: "
                f"{share['stage1_h']:.2f} h + {share['stage2_h']:.2f} h, Stage 1 = {share['stage1_share']:.1%} of wall-clock."
            )
        lines.append("")
        lines.append(text)
    if report.get("max_batch"):
        mb = report["max_batch"]
        lines.append("")
        lines.append(
            f"Largest per-device batch within {mb['memory_cap_gb']} GB ({mb.get('config', '')}): "
            f"{mb['largest_fitting_batch']} (first failing: {mb['first_failing']})."
        )
    if report.get("loss_vs_ddp"):
        lines.append("")
        lines.append(f"Final loss vs DDP: `{json.dumps(report['loss_vs_ddp'])}`")
    if report.get("targets"):
        lines.append("")
        lines.append("| target | value | met |")
        lines.append("|---|---|---|")
        for name, t in report["targets"].items():
            lines.append(f"| {name} | {t.get('value')} | {t.get('met')} |")
    return "\n".join(lines) + "\n"


def evaluate_targets(report: dict[str, Any], base: RunSpec) -> dict[str, Any]:
    """The issue's targets, as far as this run measured them (None = not measured here)."""
    ok = [r for r in report["train"] if r.get("status") == "ok"]
    bf16_single = [
        r for r in ok if r["spec"]["strategy"] == "single" and r["spec"]["precision"] == "bf16-mixed"
    ]
    best = max((r.get("mfu", 0.0) for r in bf16_single), default=None)
    loader = report.get("loader") or {}
    losses = report.get("loss_vs_ddp") or {}
    compared = [v for k, v in losses.items() if isinstance(v, dict)]
    on_gpu = base.accelerator == "cuda"
    return {
        "stage2 bf16 one-GPU MFU >= 40%": {
            "value": None if best is None else round(best, 4),
            "met": None if best is None or not on_gpu else best >= 0.40,
        },
        "loader >= 3x training consumption": {
            "value": loader.get("ratio_to_training"),
            "met": None if "ratio_to_training" not in loader else loader["ratio_to_training"] >= 3.0,
        },
        "FSDP / ZeRO loss = DDP's within tolerance": {
            "value": {k: round(v["rel_diff"], 4) for k, v in losses.items() if isinstance(v, dict)} or None,
            "met": None if not compared else all(v["within"] for v in compared),
        },
        f"largest per-device batch in {(report.get('max_batch') or {}).get('memory_cap_gb') or 80:g} GB": {
            "value": (report.get("max_batch") or {}).get("largest_fitting_batch"),
            "met": None,  # a figure to report, not a threshold
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", default="random:qwen3_vl_2b" if cuda else "tiny:qwen3_vl")
    p.add_argument(
        "--backbone-config",
        type=Path,
        default=None,
        help="a configs/backbones/*.yaml whose model.init_args (except backbone) apply, e.g. "
        "configs/backbones/qwen3_vl_2b.yaml (default for random:qwen3_vl_2b)",
    )
    p.add_argument(
        "--backbone-dtype",
        default=None,
        help="e.g. bfloat16: backbone weights (and AdamW state) in that dtype; default fp32 master weights",
    )
    p.add_argument("--precision", nargs="+", default=["bf16-mixed", "32-true"] if cuda else ["32-true"])
    p.add_argument("--attn", nargs="+", default=["sdpa", "flash_attention_2"] if cuda else ["sdpa"])
    p.add_argument("--grad-ckpt", nargs="+", choices=["off", "on"], default=["off", "on"])
    p.add_argument("--batch-size", type=int, nargs="+", default=[32, 8, 16] if cuda else [2])  # first = base
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument(
        "--base",
        default=None,
        help="base configuration as precision,attn,gc,batch (default: the first of each list)",
    )
    p.add_argument(
        "--devices", type=int, default=None, help="GPUs for multi-device strategies (default: all)"
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    # 256 px: a multiple of the 32 px merge window that a Qwen-VL processor with a 65,536-pixel minimum leaves
    # unresized (tensor path); frames it resizes go through PIL on the CPU in every step (see image_preprocessing).
    p.add_argument("--image-size", type=int, default=256 if cuda else 64)
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--chunk-len", type=int, default=16)
    p.add_argument(
        "--history-len", type=int, default=0, help="> 0: use_history with this window (exact mode)"
    )
    p.add_argument("--aux-weight", type=float, default=1.0, help="lambda: 1 = early Stage 2 (aux branch on)")
    p.add_argument(
        "--memory-cap-gb", type=float, default=None, help="cap each run's GPU memory (H100-80GB: 80)"
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="override the datasheet peak")
    p.add_argument(
        "--max-batch", action="store_true", help="search the largest batch that fits (base config)"
    )
    p.add_argument("--max-batch-limit", type=int, default=512)
    p.add_argument("--max-batch-cap-gb", type=float, default=80.0)
    p.add_argument(
        "--max-batch-grad-ckpt",
        choices=["off", "on"],
        default="on",
        help="gradient checkpointing in the batch search (on: as configs/backbones/qwen3_vl_2b.yaml)",
    )
    p.add_argument(
        "--loader-workers", type=int, default=8 if cuda else 0, help="-1: skip the loader benchmark"
    )
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--loader-episodes", type=int, default=12, help="synthetic episodes per embodiment")
    p.add_argument("--loader-dir", type=Path, default=None, help="default: data_shards/bench-train-<size>px")
    p.add_argument("--stage1-steps", type=int, default=30, help="0: skip Stage 1")
    p.add_argument("--stage1-batch-size", type=int, default=None, help="default: configs/stage1.yaml's")
    p.add_argument("--loss-tolerance", type=float, default=0.05, help="relative, FSDP/ZeRO vs DDP final loss")
    p.add_argument("--isolate", action="store_true", help="one process per single-device run too")
    p.add_argument("--run-timeout", type=float, default=600.0, help="seconds per isolated run")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting runs after this many seconds")
    p.add_argument("--json", type=Path, default=Path("runs/bench/train_throughput.json"))
    p.add_argument("--markdown", type=Path, default=None, help="default: the --json path with .md")
    p.add_argument(
        "--memory",
        action="store_true",
        help="peak memory per step of random:qwen3_vl_2b: full FT vs LoRA vs frozen backbone, analytic "
        "(bf16/fp32, with/without gradient checkpointing) and measured (benchmarks/train_memory.py)",
    )
    p.add_argument(
        "--memory-modes",
        nargs="*",
        choices=["full", "lora", "frozen"],
        default=["full", "lora", "frozen"],
        help="modes to measure (none: analytic only)",
    )
    p.add_argument(
        "--memory-batch", type=int, default=None, help="measured batch (default: 1 on CPU, 32 on GPU)"
    )
    p.add_argument(
        "--memory-default-batch", type=int, default=32, help="the analytic default batch (2B config)"
    )
    p.add_argument("--memory-image-size", type=int, default=256)
    p.add_argument("--memory-steps", type=int, default=1, help="measured steps after one warm-up step")
    p.add_argument(
        "--memory-timeout",
        type=float,
        default=3600.0,
        help="seconds per measured run (2B on a busy CPU: long)",
    )
    p.add_argument(
        "--memory-ram-gb", type=float, default=18.0, help="CPU: skip modes whose analytic need exceeds this"
    )
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one RunSpec (JSON)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child_main(args: argparse.Namespace) -> int:
    spec = RunSpec(**json.loads(args.one))
    result = run_guarded(spec)
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0 and args.out:
        args.out.write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    cuda = torch.cuda.is_available()
    n_gpus = torch.cuda.device_count() if cuda else 0
    if args.memory and not args.backbone.startswith("random:"):
        args.backbone = "random:qwen3_vl_2b"  # the memory table is about the 2B architecture
    overrides: dict[str, Any] = {}
    backbone_config = args.backbone_config
    if backbone_config is None and args.backbone == "random:qwen3_vl_2b":
        backbone_config = REPO / "configs/backbones/qwen3_vl_2b.yaml"
    if backbone_config is not None:
        init = _stage_init_args(REPO / "configs/stage2.yaml", Path(backbone_config))
        # The matrix sets the backbone, its dtype, attention and checkpointing itself.
        skip = ("backbone", "backbone_dtype", "attn_implementation", "gradient_checkpointing")
        vla = {k: v for k, v in (init.pop("vla", None) or {}).items() if k not in skip}
        overrides = {**init, "vla": vla}
    if args.backbone_dtype:
        overrides.setdefault("vla", {})["backbone_dtype"] = args.backbone_dtype
    precision, attn, gc_, bs = args.precision[0], args.attn[0], args.grad_ckpt[0], args.batch_size[0]
    if args.base:
        parts = args.base.split(",")
        if len(parts) != 4 or parts[2] not in ("on", "off") or not parts[3].isdigit():
            raise SystemExit(
                f"--base must be precision,attn,on|off,batch (e.g. bf16-mixed,sdpa,off,32), got {args.base!r}"
            )
        precision, attn, gc_, bs = parts[0], parts[1], parts[2], int(parts[3])
    base = RunSpec(
        backbone=args.backbone,
        precision=precision,
        attn=attn,
        grad_ckpt=gc_ == "on",
        batch_size=bs,
        steps=args.steps,
        warmup=args.warmup,
        image_size=args.image_size,
        cameras=args.cameras,
        chunk_len=args.chunk_len,
        history_len=args.history_len,
        aux_weight=args.aux_weight,
        accelerator="cuda" if cuda else "cpu",
        memory_cap_gb=args.memory_cap_gb,
        peak_tflops=args.peak_tflops,
        model_overrides=overrides,
    )
    if args.memory:
        from benchmarks.train_memory import memory_main

        memory_batch = args.memory_batch or (32 if cuda else 1)
        spec = replace(
            base,
            batch_size=memory_batch,
            image_size=args.memory_image_size,
            steps=args.memory_steps,
            warmup=1,
        )
        return memory_main(args, spec, cuda)
    devices = args.devices or n_gpus  # on CPU, --devices 2 rehearses DDP with two gloo processes
    runs, skipped = plan_runs(args, base, devices)
    t_start = time.perf_counter()

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - t_start > args.budget_s

    def run(spec: RunSpec) -> dict[str, Any]:
        print(f"[bench-train] {spec.label()} ...", flush=True)
        isolate = spec.devices > 1 or args.isolate
        r = run_isolated(spec, args.run_timeout) if isolate else run_guarded(spec)
        extra = r.get("error", "")
        if r["status"] == "ok":
            extra = f"{r['samples_per_s']:.1f} samples/s, {r['step_s_mean'] * 1e3:.0f} ms/step"
            extra += f", MFU {r['mfu']:.1%}" if "mfu" in r else ""
            mem = r.get("peak_allocated_gib", r.get("peak_rss_gib"))
            extra += f", peak {mem:.2f} GiB" if mem is not None else ""
        print(f"[bench-train]   {r['status']}: {extra}", flush=True)
        return r

    # Priority under a time budget: the base configuration, then what the targets compare it with (loader,
    # Stage 1), then the other configurations, then the batch-size search.
    base_row = run(base)
    rows = [base_row]
    report: dict[str, Any] = {"train": rows, "skipped": skipped}
    if args.loader_workers >= 0 and not over_budget():
        loader_dir = args.loader_dir or REPO / f"data_shards/bench-train-{args.image_size}px"
        try:
            report["loader"] = measure_loader(
                loader_dir, base, args.loader_workers, args.loader_batches, args.loader_episodes
            )
        except Exception as err:
            report["loader"] = {"status": "error", "error": f"{type(err).__name__}: {err}"[:500]}
        if base_row and base_row.get("status") == "ok" and "samples_per_s" in report["loader"]:
            report["loader"]["ratio_to_training"] = (
                report["loader"]["samples_per_s"] / base_row["samples_per_s_per_device"]
            )
    if args.stage1_steps > 0 and not over_budget():
        from actionprior.training.lightning_cli import read_stage_config

        stage1_cfg = read_stage_config(REPO / "configs/stage1.yaml")
        s1 = replace(
            base,
            kind="stage1",
            batch_size=args.stage1_batch_size or int(stage1_cfg["data"]["batch_size"]),
            steps=args.stage1_steps,
            warmup=min(args.warmup, args.stage1_steps),
            model_overrides={},
            grad_ckpt=False,
        )
        report["stage1"] = run(s1)
        if base_row and base_row.get("status") == "ok" and report["stage1"].get("status") == "ok":
            report["stage1_share"] = stage1_share(report["stage1"]["step_s_mean"], base_row["step_s_mean"])
    for spec in runs[1:]:
        if over_budget():
            skipped.append({"label": spec.label(), "reason": f"time budget {args.budget_s:.0f} s spent"})
            continue
        rows.append(run(spec))
    if args.max_batch and not over_budget():
        capped = replace(
            base,
            memory_cap_gb=args.max_batch_cap_gb if cuda else None,
            grad_ckpt=args.max_batch_grad_ckpt == "on",
        )
        report["max_batch"] = max_batch_search(
            capped, base.batch_size, args.max_batch_limit, run, over_budget
        )
    report["loss_vs_ddp"] = loss_agreement(rows, args.loss_tolerance)
    first_ok = next((r for r in rows if r.get("status") == "ok"), {})
    report["meta"] = {
        "backbone": args.backbone,
        "device": torch.cuda.get_device_name(0)
        if cuda
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "gpus": n_gpus,
        "torch": torch.__version__,
        "params_total": (first_ok.get("params") or {}).get("total", 0),
        "params": first_ok.get("params"),
        "image_size": args.image_size,
        "cameras": args.cameras,
        "chunk_len": args.chunk_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "mfu_method": "analytic model FLOPs (benchmarks/flops.py; no recomputation counted)",
        "peak_source": (first_ok.get("peak") or {}).get("source"),
        "base": asdict(base),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": time.perf_counter() - t_start,
        # Other processes on the machine slow every figure: the 1/5/15-minute load averages at the end.
        "load_average": list(os.getloadavg()),
    }
    report["targets"] = evaluate_targets(report, base)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.markdown or args.json.with_suffix(".md")).write_text(md)
    print(md)
    print(f"wrote {args.json} and {args.markdown or args.json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
