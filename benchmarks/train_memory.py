"""Peak memory of one Stage 2 training step: full fine-tuning vs LoRA vs frozen backbone (``make bench-train
ARGS=--memory``), analytic and measured.

**Analytic** (no weights allocated: the architecture is built on the ``meta`` device), per mode and precision:

* weights: every parameter (backbone, LoRA adapters, action module) at the weight dtype;
* gradients and AdamW's two moments: the *trainable* parameters only (full: backbone + action module; LoRA:
  adapters + action module; frozen: action module), at the weight dtype;
* activations saved for backward, per token and layer of the text model (``h`` width, ``kv`` key/value width,
  ``i`` MLP width): ``9h + 3kv + 4i`` when the layer's linear weights need gradients (full, LoRA: an adapter
  needs its layer's input), ``6h + 3kv + 3i`` when they are frozen (only the inputs of norms, rotary,
  attention and the SwiGLU product are kept, since the query tokens still need gradients through every
  layer); per patch and block of the vision tower ``9hv + 2iv`` when it trains (full FT, or LoRA with
  ``vision_tower``), else nothing (images need no gradient). Gradient checkpointing keeps each layer's
  input (``h`` per token and layer) plus one layer's activations during its recomputation. Memory-efficient
  attention is assumed (no ``s x s`` score matrix: flash / efficient SDPA on GPU).

``bf16`` = weights, gradients, AdamW moments and activations in bfloat16 (``backbone_dtype: bfloat16``,
``bf16-true``); ``fp32`` = all in float32. Not counted: the CUDA context and allocator slack (~1-2 GB), the
data pipeline, the processor's own buffers.

**Measured**: one isolated process per mode (``benchmarks.train_throughput --one``), a few steps of the real
``VLAModule`` on synthetic batches; peak RSS on CPU (everything the process holds, incl. Python, torch and
the batch) and ``max_memory_allocated`` on GPU. A mode whose analytic need exceeds ``--memory-ram-gb`` is not
run on CPU (it would swap or be killed), and the table says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

GB = 1e9
MODES = ("full", "lora", "frozen")
# (weight/gradient/optimizer bytes, activation bytes) per parameter or element.
BYTES = {"bf16": (2, 2), "bf16-mixed": (4, 2), "fp32": (4, 4)}
DTYPES = tuple(BYTES)
# GPUs the analytic LoRA figure is checked against (usable memory, GB).
DEVICES = {"H200 (141 GB)": 141.0, "24 GB GPU": 24.0}


def mode_overrides(mode: str) -> dict[str, Any]:
    """VLAModule init-arg overrides of a mode (LoRA: configs/finetune/lora.yaml's settings)."""
    from actionprior.models.lora import LoRAConfig

    if mode == "full":
        return {}
    if mode == "lora":
        return {"vla": {"lora": LoRAConfig().to_dict()}}
    if mode == "frozen":
        return {"freeze_backbone": True}
    raise ValueError(f"mode must be one of {MODES}, got '{mode}'")


@dataclass
class Architecture:
    """Parameter counts and widths of the VLA around a backbone, without allocating its weights."""

    backbone_params: int
    lora_params: int
    action_params: int
    text_layers: int
    hidden: int
    kv: int
    mlp: int
    vision_blocks: int
    vision_hidden: int
    vision_mlp: int

    @classmethod
    def of(cls, backbone: str, stage2: dict[str, Any]) -> Architecture:
        """``stage2``: the VLAModule init args (vla settings, the prior's) the benchmark builds."""
        from transformers import AutoModel

        from actionprior.data.synthetic import synthetic_registry
        from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
        from actionprior.models.backbones.random_backbones import RANDOM_BACKBONES
        from actionprior.models.lora import LoRAConfig, lora_targets

        name = backbone.split(":", 1)[1]
        if not backbone.startswith("random:") or name not in RANDOM_BACKBONES:
            raise ValueError(f"--memory models the random:<name> architectures {sorted(RANDOM_BACKBONES)}")
        config = RANDOM_BACKBONES[name][1](None)
        with torch.device("meta"):
            model = AutoModel.from_config(config)
        lora = LoRAConfig(**(stage2.get("vla", {}).get("lora") or {}))
        lora_params = 0
        for target in lora_targets(model, lora, backbone):
            layer = model.get_submodule(target)
            assert isinstance(layer, nn.Linear)
            lora_params += lora.rank * (layer.in_features + layer.out_features)
        text, vision = config.get_text_config(), config.vision_config
        vla = stage2.get("vla", {})
        queries, head_hidden = int(vla.get("num_queries", 4)), int(vla.get("head_hidden", 256))
        registry = synthetic_registry()
        prior = ActionPrior(
            ActionPriorConfig(**(stage2.get("prior") or {})).bind(registry, int(stage2.get("chunk_len", 16)))
        )
        latent = prior.cond_dim
        width = text.hidden_size
        # queries + latent head (LayerNorm, two Linear) -- the VLA's own modules besides the action head.
        heads = queries * width + 2 * queries * width + queries * width * head_hidden + head_hidden
        heads += head_hidden * latent + latent
        return cls(
            backbone_params=sum(p.numel() for p in model.parameters()),
            lora_params=lora_params,
            action_params=sum(p.numel() for p in prior.parameters()) + heads,
            text_layers=text.num_hidden_layers,
            hidden=width,
            kv=text.num_key_value_heads * text.head_dim,
            mlp=text.intermediate_size,
            vision_blocks=vision.depth,
            vision_hidden=vision.hidden_size,
            vision_mlp=vision.intermediate_size,
        )

    def trainable(self, mode: str) -> int:
        return {
            "full": self.backbone_params + self.action_params,
            "lora": self.lora_params + self.action_params,
            "frozen": self.action_params,
        }[mode]

    def total(self, mode: str) -> int:
        return self.backbone_params + self.action_params + (self.lora_params if mode == "lora" else 0)

    def activation_elements(
        self, mode: str, batch: int, tokens: int, patches: int, checkpointing: bool, vision_lora: bool = False
    ) -> float:
        """Saved-for-backward elements of one step (see the module docstring); ``tokens``/``patches`` per sample."""
        h, kv, i = self.hidden, self.kv, self.mlp
        text_layer = (9 * h + 3 * kv + 4 * i) if mode != "frozen" else (6 * h + 3 * kv + 3 * i)
        vision_trains = mode == "full" or (mode == "lora" and vision_lora)
        vision_layer = (9 * self.vision_hidden + 2 * self.vision_mlp) if vision_trains else 0
        if checkpointing:
            text = self.text_layers * h + text_layer
            vision = (self.vision_blocks * self.vision_hidden + vision_layer) if vision_trains else 0
        else:
            text = self.text_layers * text_layer
            vision = self.vision_blocks * vision_layer
        return float(batch) * (tokens * text + patches * vision)

    def analytic(
        self, mode: str, dtype: str, batch: int, tokens: int, patches: int, checkpointing: bool
    ) -> dict[str, float]:
        """Analytic bytes (GB) of one training step."""
        b, act = BYTES[dtype]
        train = self.trainable(mode)
        out = {
            "weights_gb": self.total(mode) * b / GB,
            "grads_gb": train * b / GB,
            "optimizer_gb": 2 * train * b / GB,
            "activations_gb": self.activation_elements(mode, batch, tokens, patches, checkpointing)
            * act
            / GB,
        }
        out["total_gb"] = sum(out.values())
        return out


def token_layout(image_size: int, cameras: int, num_queries: int) -> tuple[int, int]:
    """(text-model positions, vision patches) per sample as Qwen3-VL-2B's own processor lays them out: 16 px
    patches, 2 x 2 merged into one text position, frames of ``image_size`` px (a multiple of 32, at or above
    its 256 px minimum, are left unresized); the text part (chat template, instruction, extra tokens) is the
    tokenizer's actual layout, from the tiny Qwen3-VL processor (which ``random:qwen3_vl_2b`` uses, with
    smaller frames: the measured runs see fewer patches than this)."""
    from actionprior.models.backbones import VLMBackbone
    from benchmarks.flops import Layout
    from benchmarks.synthetic_batches import make_batch
    from benchmarks.train_throughput import registry_and_normalization

    registry, _ = registry_and_normalization()
    tiny = VLMBackbone.from_pretrained("tiny:qwen3_vl")
    batch = make_batch(
        registry=registry,
        batch_size=1,
        chunk_len=16,
        history_len=0,
        cameras=cameras,
        image_size=image_size,
        seed=0,
    )
    layout = Layout.of(tiny, batch, num_queries)
    text = layout.seq_len - sum(layout.patches) // 4
    patches = cameras * (image_size // 16) ** 2
    return text + patches // 4, patches


def analytic_table(
    arch: Architecture, tokens: int, patches: int, batches: tuple[int, ...]
) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        for checkpointing in (False, True):
            for dtype in DTYPES:
                for mode in MODES:
                    figures = arch.analytic(mode, dtype, batch, tokens, patches, checkpointing)
                    rows.append(
                        {"mode": mode, "dtype": dtype, "batch": batch, "grad_ckpt": checkpointing, **figures}
                    )
    return rows


def measure(
    args: Any, base: Any, arch: Architecture, tokens: int, patches: int, cuda: bool
) -> list[dict[str, Any]]:
    """One isolated run per mode in ``args.memory_modes`` (fp32 on CPU at batch ``base.batch_size``)."""
    from dataclasses import replace

    from benchmarks.train_throughput import run_isolated

    rows = []
    for mode in args.memory_modes:
        dtype = "fp32" if base.precision.startswith("32") else "bf16-mixed"
        need = arch.analytic(mode, dtype, base.batch_size, tokens, patches, base.grad_ckpt)
        row: dict[str, Any] = {"mode": mode, "batch": base.batch_size, "precision": base.precision}
        row["analytic_total_gb"] = need["total_gb"]
        if not cuda and need["total_gb"] > args.memory_ram_gb:
            row["status"] = (
                f"not run: analytic {need['total_gb']:.1f} GB > --memory-ram-gb {args.memory_ram_gb:g}"
            )
            rows.append(row)
            continue
        overrides = {**base.model_overrides}
        extra = mode_overrides(mode)
        overrides["vla"] = {**overrides.get("vla", {}), **extra.pop("vla", {})}
        overrides.update(extra)
        spec = replace(base, model_overrides=overrides)
        result = run_isolated(spec, args.memory_timeout)
        row["status"] = result.get("status", "ok")
        for key in ("peak_rss_gib", "peak_allocated_gib", "peak_reserved_gib", "step_s_median", "error"):
            if key in result:
                row[key] = result[key]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(report: dict[str, Any]) -> str:
    a = report["architecture"]
    lines = [
        f"Architecture {report['backbone']}: backbone {a['backbone_params'] / 1e9:.2f} B parameters, "
        f"LoRA adapters {a['lora_params'] / 1e6:.1f} M (rank {report['lora_rank']}), action module "
        f"{a['action_params'] / 1e6:.1f} M; {report['tokens']} text positions and {report['patches']} vision "
        f"patches per sample ({report['cameras']} cameras, {report['image_size']} px).",
        "",
        "| mode | dtype | batch | grad ckpt | weights | grads | AdamW | activations | total GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["analytic"]:
        lines.append(
            f"| {r['mode']} | {r['dtype']} | {r['batch']} | {'on' if r['grad_ckpt'] else 'off'} | "
            f"{r['weights_gb']:.1f} | {r['grads_gb']:.1f} | {r['optimizer_gb']:.1f} | "
            f"{r['activations_gb']:.1f} | **{r['total_gb']:.1f}** |"
        )
    if report.get("devices"):
        lines += [
            "",
            "| LoRA, grad ckpt on, default batch | dtype | total GB | fits |",
            "| --- | --- | --- | --- |",
        ]
        for d in report["devices"]:
            lines.append(
                f"| {d['device']} | {d['dtype']} | {d['total_gb']:.1f} | {'yes' if d['fits'] else 'no'} |"
            )
    if report.get("measured"):
        lines += [
            "",
            "| measured | precision | batch | peak GiB | analytic GB | status |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in report["measured"]:
            peak = r.get("peak_allocated_gib", r.get("peak_rss_gib"))
            peak_s = f"{peak:.1f}" if isinstance(peak, (int, float)) else "-"
            lines.append(
                f"| {r['mode']} | {r['precision']} | {r['batch']} | {peak_s} | {r['analytic_total_gb']:.1f} | "
                f"{r['status']} |"
            )
    return "\n".join(lines) + "\n"


def memory_main(args: Any, base: Any, cuda: bool) -> int:
    from benchmarks.train_throughput import registry_and_normalization, stage2_kwargs

    registry, normalization = registry_and_normalization()
    stage2 = stage2_kwargs(base, registry, normalization)
    stage2["vla"] = {**stage2["vla"], **mode_overrides("lora")["vla"]}
    arch = Architecture.of(base.backbone, stage2)
    queries = int(stage2["vla"].get("num_queries", 4))
    tokens, patches = token_layout(base.image_size, base.cameras, queries)
    batches = tuple(dict.fromkeys((1, args.memory_default_batch)))
    report: dict[str, Any] = {
        "backbone": base.backbone,
        "lora_rank": stage2["vla"]["lora"]["rank"],
        "image_size": base.image_size,
        "cameras": base.cameras,
        "tokens": tokens,
        "patches": patches,
        "architecture": arch.__dict__,
        "analytic": analytic_table(arch, tokens, patches, batches),
    }
    report["devices"] = [
        {"device": name, "dtype": dtype, "total_gb": figures["total_gb"], "fits": figures["total_gb"] <= size}
        for name, size in DEVICES.items()
        for dtype in DTYPES
        for figures in [arch.analytic("lora", dtype, args.memory_default_batch, tokens, patches, True)]
    ]
    report["measured"] = measure(args, base, arch, tokens, patches, cuda) if args.memory_modes else []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    out = args.json.with_name(args.json.stem + "_memory.json")
    out.write_text(json.dumps(report, indent=1))
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


__all__ = ["Architecture", "analytic_table", "memory_main", "mode_overrides", "token_layout"]
