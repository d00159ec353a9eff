"""Per-chunk cost of real-time chunking (``rtc``) against plain sampling (issue 20's target: <= 1.5x on CPU).

A chunk is one VLM forward to ``z'`` and ``N`` Euler steps of the flow decoder; RTC adds to every Euler step
one backward pass through the decoder (the vector-Jacobian product of its guidance), so it changes only the
decoder's part. Both are timed interleaved (plain, rtc, plain, ...) on the same observation, so that the drift
of a shared CPU hits both alike; ``chunk`` is the whole ``VLA.sample_actions`` call, ``decoder`` the sampler
alone on a fixed ``z'``. ``rtc-identity`` is ``--no-rtc-vjp`` (the Jacobian taken as the identity: no backward
pass; an approximation, not the paper's guidance).

    python -m benchmarks.rtc_cost                                   # configs/stage2.yaml's model, random weights
    python -m benchmarks.rtc_cost --ckpt runs/demo/stage2/checkpoints/last.ckpt --json rtc_cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from actionprior.inference.observation import validate_observation
from actionprior.inference.policy import Policy
from actionprior.models.rtc import RTCGuide
from actionprior.resources import default_config_arg, local_config_file
from benchmarks.inference_latency import Timer, default_policy, host_speed, observation

TARGET_RATIO = 1.5


def measure(
    policy: Policy, embodiment: str, steps: int, iters: int, warmup: int, frozen: int, executed: int
) -> dict[str, Any]:
    """Median wall and thread-CPU milliseconds of plain and rtc chunks and decoders, and their ratios."""
    model = policy.model
    obs = validate_observation(observation(policy, embodiment), policy.obs_spec)
    batch = policy.build_batch(obs, policy.history)
    gen = torch.Generator(device=policy.device).manual_seed(0)
    with torch.inference_mode():
        previous = model.sample_actions(batch, steps=steps, generator=gen)
        z = model.predict_latent(batch)
    h = policy.chunk_len
    overlap = h - executed
    # the previous chunk's actions for the new chunk's steps: shifted by the executed horizon
    target = torch.zeros_like(previous)
    target[:, :overlap] = previous[:, executed:]
    guide = RTCGuide(
        target,
        torch.tensor([frozen], device=policy.device),
        torch.tensor([overlap], device=policy.device),
        max_guidance=policy.execution.rtc_max_guidance,
    )
    identity = dataclasses.replace(guide, vjp=False)
    emb = batch["embodiment_id"]
    calls = {
        "chunk plain": lambda: model.sample_actions(batch, steps=steps, generator=gen),
        "chunk rtc": lambda: model.sample_actions(batch, steps=steps, generator=gen, guide=guide),
        "chunk rtc-identity": lambda: model.sample_actions(batch, steps=steps, generator=gen, guide=identity),
        "decoder plain": lambda: model.head.sample(z, emb, steps=steps, generator=gen),
        "decoder rtc": lambda: model.head.sample_rtc(z, emb, guide, steps=steps, generator=gen),
        "decoder rtc-identity": lambda: model.head.sample_rtc(z, emb, identity, steps=steps, generator=gen),
    }
    timer = Timer(policy.device)  # one Timer part per call: wall and thread CPU time of each
    timer.wall = {name: [] for name in calls}
    timer.cpu = {name: [] for name in calls}
    with torch.inference_mode():  # as Policy runs the model
        for i in range(warmup + iters):
            for name, fn in calls.items():
                timer(name, fn, record=i >= warmup)
    wall, cpu = timer.wall, timer.cpu
    out: dict[str, Any] = {
        name: {"wall_median_ms": statistics.median(wall[name]), "cpu_median_ms": statistics.median(cpu[name])}
        for name in calls
    }
    for part in ("chunk", "decoder"):
        for variant in ("rtc", "rtc-identity"):
            out[f"{part} {variant} ratio"] = {
                kind: out[f"{part} {variant}"][f"{kind}_median_ms"]
                / out[f"{part} plain"][f"{kind}_median_ms"]
                for kind in ("wall", "cpu")
            }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ckpt", default=None, help="Stage 2 checkpoint (default: configs' model, random weights)"
    )
    p.add_argument("--config", type=local_config_file, default=default_config_arg("stage2.yaml"))
    p.add_argument("--stage1-config", type=local_config_file, default=default_config_arg("stage1.yaml"))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--embodiment", default=None, help="default: the first one the policy knows")
    p.add_argument("--sample-steps", type=int, default=None, help="default: the model's sample_steps")
    p.add_argument("--frozen", type=int, default=2, help="frozen prefix d (the inference delay in steps)")
    p.add_argument("--executed", type=int, default=None, help="executed horizon s (default: chunk / 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.ckpt:
        policy = Policy.from_checkpoint(args.ckpt, image_size=args.image_size, device=args.device)
        source = args.ckpt
    else:
        policy = default_policy(
            args.config, args.stage1_config, args.image_size, None, None, device=args.device
        )
        source = f"{args.config} model, random weights"
    embodiment = args.embodiment or policy.registry.names[0]
    steps = args.sample_steps or policy.model.head.config.sample_steps
    executed = args.executed if args.executed is not None else policy.chunk_len // 2
    if not 0 <= args.frozen <= policy.chunk_len - executed:
        p.error(f"--frozen must be in [0, chunk - executed = {policy.chunk_len - executed}]")
    speed_before = host_speed()
    res = measure(policy, embodiment, steps, args.iters, args.warmup, args.frozen, executed)
    speed_after = host_speed()
    console = Console()
    table = Table(
        title=f"{source}: {embodiment}, chunk {policy.chunk_len}, {steps} Euler steps, {args.threads} thread(s); "
        "ms are wall medians, ratios to plain sampling"
    )
    for col in (
        "",
        "plain ms",
        "rtc ms",
        "rtc / plain (wall | CPU)",
        "rtc-identity ms",
        "rtc-identity / plain",
    ):
        table.add_column(col, justify="right")
    for part in ("chunk", "decoder"):
        ratio, ident = res[f"{part} rtc ratio"], res[f"{part} rtc-identity ratio"]
        table.add_row(
            part,
            f"{res[f'{part} plain']['wall_median_ms']:.2f}",
            f"{res[f'{part} rtc']['wall_median_ms']:.2f}",
            f"{ratio['wall']:.2f} | {ratio['cpu']:.2f}",
            f"{res[f'{part} rtc-identity']['wall_median_ms']:.2f}",
            f"{ident['wall']:.2f} | {ident['cpu']:.2f}",
        )
    console.print(table)
    measured = res["chunk rtc ratio"]["cpu"]
    met = measured <= TARGET_RATIO
    console.print(
        f"target rtc chunk <= {TARGET_RATIO}x plain (thread CPU): {measured:.2f}x -> {met} (rtc-identity, "
        f"--no-rtc-vjp: {res['chunk rtc-identity ratio']['cpu']:.2f}x); host dispatch "
        f"{speed_before['dispatch_us']:.2f} / {speed_after['dispatch_us']:.2f} us per small op"
    )
    report = {
        "source": source,
        "embodiment": embodiment,
        "chunk_len": policy.chunk_len,
        "sample_steps": steps,
        "frozen": args.frozen,
        "executed": executed,
        "threads": args.threads,
        "device": args.device,
        "host": {"before": speed_before, "after": speed_after},
        **res,
        "target": {"ratio": TARGET_RATIO, "measured_cpu_ratio": measured, "met": met},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
