"""Inference latency per action chunk, split into its parts (target for the tiny default on CPU: <= 15 ms).

One replan of :class:`~actionprior.inference.policy.Policy` is: build the batch from the raw observation
(``batch``), encode the history window (``history``, only with ``use_history``), run the VLM backbone with
the query tokens to ``z'`` (``backbone``), and integrate the flow decoder for N Euler steps (``decoder``).
``act`` is the whole ``Policy.act`` call that replans, validation and un-normalisation included.

    .venv/bin/python benchmarks/inference_latency.py                      # configs/stage2.yaml's model
    .venv/bin/python benchmarks/inference_latency.py --ckpt runs/stage2/last.ckpt --threads 1 2
    .venv/bin/python benchmarks/inference_latency.py --use-history --sample-steps 5 10 --json out.json
    python -m benchmarks.inference_latency --backbone random:qwen3_vl_2b --device cuda --autocast bf16 \
        --image-size 256 --compile-decoder --json latency_2b.json          # the 2B architecture on a GPU

On a GPU every part is timed with a device synchronise at both ends, so ``backbone`` and ``decoder``
are the device time of each (target for the 2B architecture: ``total`` <= 50 ms per chunk on one
H100/H200). ``--compile-decoder`` runs the decoder's Euler loop through
:meth:`ActionPrior.compile_sampler` (torch.compile, CUDA graphs with mode ``reduce-overhead``); the
``decoder`` part is then measured both ways (eager and compiled rows).

Without ``--ckpt`` the model is the one ``--config`` (default configs/stage2.yaml, the tiny CPU default)
describes, with random weights (latency does not depend on them), over configs/embodiments. Without
``--sample-steps`` the decoder runs the model's configured number of Euler steps.
Use ``--threads 1`` figures: on a shared 2-core machine, 2 intra-op threads were ~10x slower (measured).

A shared (virtualised) CPU changes speed from minute to minute, by up to ~1.5x on the machine this was
written on, and mostly in per-operator overhead (a tiny model's latency is dominated by it), not in
matrix-product throughput. Every run therefore also measures the host before and after: the time of one
small tensor operation (``dispatch us``) and a decoder-sized matrix product (``GFLOP/s``). Compare
latencies between runs only together with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from actionprior.inference.observation import validate_observation
from actionprior.inference.policy import Policy
from actionprior.resources import default_config_arg, local_config_file

PARTS = ("batch", "history", "backbone", "decoder", "total", "act")


def default_policy(
    config: Path,
    stage1_config: Path,
    image_size: int,
    use_history: bool | None,
    history_len: int | None,
    backbone: str | None = None,
    backbone_config: Path | None = None,
    device: str = "cpu",
) -> Policy:
    """The model of a Stage 2 config file (``model.init_args`` + ``data.chunk_len``, the action prior's
    settings from the Stage 1 config), random weights. ``backbone`` replaces the config's backbone id and
    ``backbone_config`` (a configs/backbones/*.yaml) layers its other model settings on top."""
    import yaml

    from actionprior.data.normalization import Normalizer
    from actionprior.data.stats import compute_stats
    from actionprior.data.stream import default_camera_names
    from actionprior.embodiments import EmbodimentRegistry
    from actionprior.training.vla_module import VLAModule

    cfg = yaml.safe_load(config.read_text())
    init = {k: v for k, v in cfg["model"]["init_args"].items() if k != "camera_names"}
    init["vla"] = dict(init.get("vla") or {})
    if backbone_config is not None:
        layered = (yaml.safe_load(backbone_config.read_text()).get("model") or {}).get("init_args") or {}
        init["vla"].update(layered.pop("vla", None) or {})
        init.update({k: v for k, v in layered.items() if k != "camera_names"})
    if backbone is not None:
        init["vla"]["backbone"] = backbone
    # What Stage 2 would read from a checkpoint of `make stage1`: the Stage 1 config's prior settings.
    if init.get("prior") is None:
        init["prior"] = yaml.safe_load(stage1_config.read_text())["model"]["init_args"]["prior"]
    data = cfg.get("data", {})
    init["chunk_len"] = data.get("chunk_len", init.get("chunk_len", 16))
    if use_history is not None:
        init["vla"]["use_history"] = use_history
    history_len = history_len if history_len is not None else data.get("history_len", 8)
    registry = EmbodimentRegistry.from_dir()
    rng = np.random.default_rng(0)
    stats = compute_stats(
        (s.name, rng.normal(size=(32, s.state_dim)), rng.normal(size=(32, s.action_dim))) for s in registry
    )
    cameras = default_camera_names(registry)
    kwargs = dict(
        **init,
        camera_names=cameras,
        embodiments=registry.to_dicts(),
        normalization=Normalizer(stats, registry).to_dict(),
    )
    if torch.device(device).type == "cuda":  # random init of a 2B model is much faster on the GPU
        with torch.device(device):
            module = VLAModule(**kwargs)
    else:
        module = VLAModule(**kwargs)
    return Policy(
        module.model,
        module.normalizer,
        cameras,
        image_size,
        chunk_len=module.head_config.chunk_len,
        history_len=history_len if init["vla"].get("use_history") else 0,
        device=device,
    )


def _per_call_s(fn: Callable[[], Any], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            fn()
        n += 100
    return (time.perf_counter() - t0) / n


def host_speed(seconds: float = 0.5) -> dict[str, float]:
    """One thread: microseconds per small tensor op, and GFLOP/s of a [17, 128] x [128, 512] product."""
    x, a, b = torch.randn(17, 128), torch.randn(17, 128), torch.randn(128, 512)
    return {
        "dispatch_us": _per_call_s(lambda: x.add(x), seconds) * 1e6,
        "gflops": 2 * 17 * 128 * 512 / _per_call_s(lambda: a @ b, seconds) / 1e9,
    }


def observation(policy: Policy, embodiment: str, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    spec = policy.registry[embodiment]
    size = policy.obs_spec.image_size
    return {
        "embodiment": embodiment,
        "state": rng.normal(size=spec.state_dim).astype(np.float32),
        "images": {
            c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for c in policy.obs_spec.cameras_for(embodiment)
        },
        "instruction": "pick up the red cube and place it on the green one",
    }


class Timer:
    """Wall time and this thread's CPU time of each timed call, per part.

    With one torch thread all the work runs in the calling thread, so its CPU time is what the wall time
    would be on an idle machine; on a shared, loaded machine wall time mostly measures waiting. On a GPU
    each call is bracketed by device synchronises, so wall time is the part's device time.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.wall: dict[str, list[float]] = {p: [] for p in PARTS}
        self.cpu: dict[str, list[float]] = {p: [] for p in PARTS}
        self.cuda = device is not None and device.type == "cuda"

    def __call__(self, part: str, fn: Callable[[], Any], record: bool) -> Any:
        if self.cuda:
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.thread_time()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        if record:
            self.add(part, (time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3)
        return out

    def add(self, part: str, wall_ms: float, cpu_ms: float) -> None:
        self.wall[part].append(wall_ms)
        self.cpu[part].append(cpu_ms)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            part: {
                "wall_median_ms": statistics.median(self.wall[part]),
                "wall_p90_ms": float(np.percentile(self.wall[part], 90)),
                "wall_min_ms": min(self.wall[part]),
                "cpu_median_ms": statistics.median(self.cpu[part]),
            }
            for part in PARTS
        }


@torch.inference_mode()  # as VLA.sample_actions, which Policy.act runs
def measure(
    policy: Policy,
    embodiment: str,
    steps: int,
    iters: int,
    warmup: int,
    autocast: str | None = None,
    compile_decoder: bool = False,
    compile_backend: str = "inductor",
) -> dict[str, dict[str, float]]:
    """Per-part latency; ``autocast="bf16"`` runs everything under bf16 autocast, ``compile_decoder``
    the decoder's Euler loop compiled (the first warm-up call compiles it)."""
    if autocast not in (None, "bf16"):
        raise ValueError(f"--autocast must be bf16 or unset, got {autocast!r}")
    with torch.autocast(policy.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        if compile_decoder:
            policy.model.head.compile_sampler(backend=compile_backend)
        try:
            return _measure(policy, embodiment, steps, iters, warmup)
        finally:
            policy.model.head.eager_sampler()


def _measure(
    policy: Policy, embodiment: str, steps: int, iters: int, warmup: int
) -> dict[str, dict[str, float]]:
    model = policy.model
    obs = observation(policy, embodiment)
    for k in range(policy.history_len):  # a full history window, as in the middle of an episode
        policy.history.append(obs["state"] + k, np.zeros(policy.registry[embodiment].action_dim, np.float32))
    valid = validate_observation(obs, policy.obs_spec)
    gen = torch.Generator(device=policy.device).manual_seed(0)
    policy.sample_steps = steps
    timer = Timer(policy.device)
    for i in range(warmup + iters):
        rec = i >= warmup
        n0 = {p: len(timer.wall[p]) for p in PARTS}
        batch = timer("batch", lambda: policy.build_batch(valid, policy.history), rec)
        z_hist = on = None
        if model.use_history:
            z_hist, on = timer("history", lambda b=batch: model.history_latent(b), rec)
        elif rec:
            timer.add("history", 0.0, 0.0)
        z = timer("backbone", lambda b=batch, zh=z_hist, o=on: model.predict_latent(b, zh, o), rec)
        timer(
            "decoder",
            lambda zz=z, e=batch["embodiment_id"]: model.head.sample(zz, e, steps=steps, generator=gen),
            rec,
        )
        if rec:
            parts = ("batch", "history", "backbone", "decoder")
            timer.add(
                "total",
                sum(timer.wall[p][n0[p]] for p in parts),
                sum(timer.cpu[p][n0[p]] for p in parts),
            )
        policy.reset()  # empty queue: the next act() replans
        timer("act", lambda: policy.act(obs), rec)
    return timer.summary()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ckpt", default=None, help="Stage 2 checkpoint (default: VLAModule defaults, random weights)"
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument(
        "--config",
        type=local_config_file,
        default=default_config_arg("stage2.yaml"),
        help="model config without --ckpt",
    )
    p.add_argument(
        "--stage1-config",
        type=local_config_file,
        default=default_config_arg("stage1.yaml"),
        help="the action prior's settings without --ckpt",
    )
    p.add_argument("--backbone", default=None, help="replace the config's backbone, e.g. random:qwen3_vl_2b")
    p.add_argument(
        "--backbone-config",
        type=Path,
        default=None,
        help="configs/backbones/*.yaml layered on --config (default for random:qwen3_vl_2b: qwen3_vl_2b.yaml)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--autocast", choices=["bf16"], default=None, help="bf16 autocast (GPU)")
    p.add_argument(
        "--compile-decoder",
        action="store_true",
        help="also time the decoder with its Euler loop compiled (ActionPrior.compile_sampler)",
    )
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (eager/aot_eager: tests)"
    )
    p.add_argument("--target-ms", type=float, default=None, help="report whether total <= this per chunk")
    p.add_argument("--history-len", type=int, default=None, help="default: the config's data.history_len")
    p.add_argument(
        "--use-history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override model.use_history",
    )
    p.add_argument("--embodiment", default=None, help="default: the first one the policy knows")
    p.add_argument(
        "--sample-steps", type=int, nargs="+", default=None, help="default: the model's sample_steps"
    )
    p.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 2 on CPU, 1 on a GPU")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is visible")
    backbone_config = args.backbone_config
    if backbone_config is None and args.backbone == "random:qwen3_vl_2b":
        backbone_config = local_config_file(default_config_arg("backbones/qwen3_vl_2b.yaml"))
    if args.ckpt:
        policy = Policy.from_checkpoint(
            args.ckpt, image_size=args.image_size, history_len=args.history_len, device=device
        )
        source = args.ckpt
    else:
        policy = default_policy(
            args.config,
            args.stage1_config,
            args.image_size,
            args.use_history,
            args.history_len,
            backbone=args.backbone,
            backbone_config=backbone_config,
            device=str(device),
        )
        source = f"{args.config} model ({args.backbone or 'its backbone'}), random weights"
    embodiment = args.embodiment or policy.registry.names[0]
    console = Console()
    n_params = {
        "backbone": sum(p.numel() for p in policy.model.backbone.parameters()),
        "action_prior": sum(p.numel() for p in policy.model.head.parameters()),
    }
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    console.print(
        f"{source}: {embodiment}, {len(policy.obs_spec.cameras_for(embodiment))} cameras at "
        f"{args.image_size}px, chunk {policy.chunk_len}, history {policy.history_len}, params {n_params}, "
        f"{device_name}, autocast {args.autocast or 'off'}"
    )
    steps_list = args.sample_steps or [policy.model.head.config.sample_steps]
    threads_list = args.threads or ([1] if device.type == "cuda" else [1, 2])
    modes = [False, True] if args.compile_decoder else [False]
    torch.set_num_threads(1)
    speed_before = host_speed()
    table = Table(title="latency per chunk, ms: wall median / p90 | thread CPU median")
    table.add_column("threads")
    table.add_column("steps")
    table.add_column("decoder")
    for part in PARTS:
        table.add_column(part, justify="right")
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for steps in steps_list:
            for compiled in modes:
                res = measure(
                    policy,
                    embodiment,
                    steps,
                    args.iters,
                    args.warmup,
                    args.autocast,
                    compile_decoder=compiled,
                    compile_backend=args.compile_backend,
                )
                mode = "compiled" if compiled else "eager"
                rows.append({"threads": threads, "sample_steps": steps, "decoder_mode": mode, **res})
                table.add_row(
                    str(threads),
                    str(steps),
                    mode,
                    *(
                        f"{res[p]['wall_median_ms']:.1f} / {res[p]['wall_p90_ms']:.1f} | {res[p]['cpu_median_ms']:.1f}"
                        for p in PARTS
                    ),
                )
    torch.set_num_threads(1)
    speed = (speed_before, host_speed())
    console.print(table)
    console.print(f"per action with replan_every = chunk ({policy.chunk_len}): total / {policy.chunk_len}")
    console.print(
        "host, 1 thread, before / after: dispatch "
        f"{speed[0]['dispatch_us']:.2f} / {speed[1]['dispatch_us']:.2f} us per small op, matmul "
        f"{speed[0]['gflops']:.1f} / {speed[1]['gflops']:.1f} GFLOP/s"
    )
    report: dict[str, Any] = {
        "source": source,
        "backbone": args.backbone,
        "device": device_name,
        "autocast": args.autocast,
        "embodiment": embodiment,
        "params": n_params,
        "image_size": args.image_size,
        "host": {"before": speed[0], "after": speed[1]},
        "rows": rows,
    }
    if args.target_ms is not None:
        best = min(r["total"]["wall_median_ms"] for r in rows)
        report["target"] = {
            "total_ms_per_chunk": args.target_ms,
            "best_median_ms": best,
            "met": best <= args.target_ms,
        }
        console.print(
            f"target total <= {args.target_ms} ms per chunk: best median {best:.1f} ms -> {report['target']['met']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
