"""FLOPs of one Stage 2 training step, counted analytically, and the peak FLOP/s they are divided by (MFU).

Model FLOPs utilisation = analytic model FLOPs of a step / step time / the device's peak FLOP/s.

The analytic count is ``3 x forward`` (backward = 2 x forward; ``2 x`` for the patch embedding, which
needs no gradient of its input, the pixels) where every dense layer costs
``2 x params x rows`` in the forward pass, ``rows`` being how many vectors go through it per step:

* text decoder layers: every position of the (left-padded) sequence, ``B x T`` -- padding is counted,
  because the GPU computes it;
* vision tower: patch embedding and blocks per patch, the patch merger(s) per merged token
  (``patches / merge_size^2``);
* action prior: transformer blocks per token (decoder ``1 + H`` per flow loss, encoder ``1 + 2H`` with
  state per encode), adaLN modulation and the other conditioning layers per sample, the gathered
  per-embodiment projections per token with one embodiment's share of the stacked weights;
* embeddings (token lookup, interpolated position embeddings) are lookups, not products: excluded.

Attention adds ``4 x T^2 x d`` forward FLOPs per layer and sequence (``QK^T`` and ``AV``, ``d`` = query
heads x head dim, the full square as in PaLM's MFU, not halved for the causal mask; vision attention is
per image). Gradient checkpointing's recomputation is *not* counted: this is model FLOPs (MFU), not
hardware FLOPs. :func:`counted_train_flops` measures the same step with ``torch.utils.flop_counter``
(tests compare the two on a small model).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Dense (no sparsity) peak tensor-core TFLOP/s per GPU from the vendors' data sheets, matched against
# torch.cuda.get_device_name() in order (more specific names first). "tf32" is what fp32 matmuls get with
# torch.set_float32_matmul_precision("high"); "fp32" is the non-tensor-core rate of the default "highest".
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("H800", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("GH200", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("B200", {"bf16": 2250.0, "tf32": 1100.0, "fp32": 75.0}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10G", {"bf16": 70.0, "tf32": 35.0, "fp32": 31.2}),
)


@dataclass(frozen=True)
class PeakFlops:
    device: str  # the device name as detected
    tflops: float  # the peak that MFU divides by, for the precision of the run
    source: str  # where the number comes from: "datasheet:<entry>/<dtype>", "measured:...", "user"


def matmul_kind(precision: str) -> str:
    """Which peak applies to a Lightning ``precision``: bf16 tensor cores, or fp32 (TF32 if enabled)."""
    if precision.startswith("bf16") or precision.startswith("16"):
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def datasheet_peak(device_name: str, kind: str) -> PeakFlops | None:
    for name, table in PEAK_TFLOPS:
        if name.lower() in device_name.lower():
            return PeakFlops(device_name, table[kind], f"datasheet:{name}/{kind}")
    return None


def measured_cpu_peak(size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 GEMM TFLOP/s of this CPU with the current torch thread count (the CPU has no datasheet
    entry; MFU on CPU is then the fraction of what a large matrix product achieves here)."""
    import time

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up (allocations, thread pool)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12


def peak_flops(device: torch.device, precision: str, override_tflops: float | None = None) -> PeakFlops:
    """The peak for MFU: ``override_tflops`` if given, the datasheet entry of a known GPU, or on CPU a
    measured GEMM rate. An unknown GPU without an override is an error, not a guess."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    if override_tflops is not None:
        return PeakFlops(name, float(override_tflops), "user")
    if device.type != "cuda":
        return PeakFlops(name, measured_cpu_peak(), "measured:cpu fp32 GEMM 1024^3")
    kind = matmul_kind(precision)
    peak = datasheet_peak(name, kind)
    if peak is None:
        known = ", ".join(n for n, _ in PEAK_TFLOPS)
        raise ValueError(
            f"no peak FLOP/s entry for GPU '{name}' (known: {known}); pass --peak-tflops <dense {kind} TFLOP/s>"
        )
    return peak


# ---------------------------------------------------------------------------------------------- counting
def n_params(modules: nn.Module | Iterable[nn.Module] | None) -> int:
    if modules is None:
        return 0
    if isinstance(modules, nn.Module):
        modules = [modules]
    return sum(p.numel() for m in modules for p in m.parameters())


@dataclass(frozen=True)
class Layout:
    """What one VLM forward sees for a batch: sequence length and per-image patch counts."""

    batch: int
    seq_len: int  # padded text-model positions per sample (image tokens, instruction, extra tokens)
    patches: tuple[int, ...]  # vision patches of every image in the batch

    @classmethod
    def of(cls, backbone: Any, batch: Mapping[str, Any], num_extra: int) -> Layout:
        inputs = backbone.build_inputs(batch["images"], batch["camera_mask"], batch["instruction"], num_extra)
        grid = inputs.get("image_grid_thw")
        patches = tuple(int(p) for p in grid.prod(-1).tolist()) if grid is not None else ()
        return cls(int(inputs["input_ids"].shape[0]), int(inputs["input_ids"].shape[1]), patches)


def _backbone_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(text model, vision tower) of a Qwen-VL family backbone; other families are not modelled."""
    text = getattr(model, "language_model", None)
    vision = getattr(model, "visual", None)
    if text is None or vision is None or not hasattr(text, "layers") or not hasattr(vision, "blocks"):
        raise ValueError(
            f"analytic FLOPs model the Qwen-VL families only (language_model.layers + visual.blocks); "
            f"'{type(model).__name__}' differs, so no MFU is reported for it (pass a Qwen-VL backbone)"
        )
    return text, vision


def backbone_forward_flops(model: nn.Module, layout: Layout) -> dict[str, float]:
    """Forward FLOPs of the VLM on one batch layout: dense text, dense vision, and attention."""
    text, vision = _backbone_parts(model)
    tcfg = model.config.get_text_config()
    vcfg = model.config.vision_config
    rows = layout.batch * layout.seq_len
    n_patches = sum(layout.patches)
    merge = int(getattr(vcfg, "spatial_merge_size", 1)) ** 2
    mergers = [getattr(vision, "merger", None)] + list(getattr(vision, "deepstack_merger_list", []) or [])
    head_dim = int(getattr(tcfg, "head_dim", None) or tcfg.hidden_size // tcfg.num_attention_heads)
    d_attn = tcfg.num_attention_heads * head_dim
    return {
        "text_dense": 2.0 * n_params(text.layers) * rows,
        "text_attention": 4.0 * tcfg.num_hidden_layers * layout.seq_len**2 * d_attn * layout.batch,
        "vision_patch_embed": 2.0 * n_params(vision.patch_embed) * n_patches,
        "vision_dense": 2.0 * n_params(vision.blocks) * n_patches
        + 2.0 * n_params([m for m in mergers if m is not None]) * n_patches / merge,
        "vision_attention": 4.0 * vcfg.depth * vcfg.hidden_size * sum(p * p for p in layout.patches),
    }


def _block_flops(blocks: Iterable[nn.Module], rows: int, samples: int, tokens: int) -> float:
    """Forward FLOPs of action-module transformer blocks over ``rows`` tokens (``samples`` sequences)."""
    total = 0.0
    for block in blocks:
        width = block.attn.out.in_features
        total += 2.0 * n_params([block.attn, block.mlp]) * rows
        total += 4.0 * tokens * tokens * width * samples
        if getattr(block, "conditioned", False):
            total += 2.0 * n_params(block.modulation) * samples
    return total


def _io_flops(layer: nn.Module | None, rows: int) -> float:
    """A gathered per-embodiment projection: each row uses one embodiment's ``in x out`` slice."""
    if layer is None:
        return 0.0
    return 2.0 * layer.in_features * layer.out_features * rows


def prior_forward_flops(prior: nn.Module, batch: int, chunk: int, decodes: int, encodes: int) -> float:
    """Forward FLOPs of ``decodes`` flow-loss decoder passes and ``encodes`` encoder passes over a batch."""
    dec, enc = prior.decoder, prior.encoder
    dec_tokens = 1 + chunk
    per_decode = (
        _block_flops(dec.blocks, batch * dec_tokens, batch, dec_tokens)
        + 2.0 * n_params([dec.time_mlp, dec.z_cond, dec.z_token, dec.final]) * batch
        + 2.0 * n_params(dec.step_proj) * chunk
        + _io_flops(dec.io.action_in, batch * chunk)
        + _io_flops(dec.io.action_out, batch * chunk)
    )
    enc_tokens = 1 + (2 * chunk if enc.use_state else chunk)
    per_encode = (
        _block_flops(enc.blocks, batch * enc_tokens, batch, enc_tokens)
        + 2.0 * n_params(enc.time_proj) * chunk
        + 2.0 * n_params(enc.to_latent) * batch
        + _io_flops(enc.io.action_in, batch * chunk)
        + (_io_flops(enc.io.state_in, batch * chunk) if enc.use_state else 0.0)
    )
    return decodes * per_decode + encodes * per_encode


def vla_train_flops(
    vla: nn.Module,
    layout: Layout,
    chunk_len: int,
    aux_weight: float,
    history_mode: str = "exact",
    history_len: int = 0,
) -> dict[str, float]:
    """Analytic FLOPs of one training step (forward + backward) of :class:`~actionprior.models.vla.VLA`
    on a batch of ``layout.batch`` samples: the terms and their ``total``."""
    b = layout.batch
    exact_history = vla.use_history and history_mode == "exact"
    passes = 2 if exact_history else 1  # exact history: one VLM forward over the batch stacked twice
    stacked = Layout(b * passes, layout.seq_len, layout.patches * passes)
    fwd = backbone_forward_flops(vla.backbone.model, stacked)
    aux = aux_weight > 0
    head = 2.0 * n_params(vla.latent_head) * b * passes
    if vla.history_proj is not None:
        head += 2.0 * n_params(vla.history_proj) * b
    fwd["action_module"] = head + prior_forward_flops(
        vla.head, b, chunk_len, decodes=passes + int(aux), encodes=int(aux)
    )
    if vla.use_history and history_len:
        fwd["action_module"] += prior_forward_flops(vla.head, b, history_len, decodes=0, encodes=1)
    # Backward = 2 x forward (input and weight gradients), except for the patch embedding, whose input
    # is pixels: no input gradient, so backward = 1 x forward there.
    out = {k: (2.0 if k == "vision_patch_embed" else 3.0) * v for k, v in fwd.items()}
    out["total"] = sum(out.values())
    return out


def counted_train_flops(
    vla: nn.Module, batch: Mapping[str, Any], aux_weight: float, history_mode: str
) -> int:
    """FLOPs of one forward + backward of ``vla.loss`` as ``torch.utils.flop_counter`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        vla.loss(batch, aux_weight, history_mode).loss.backward()
    vla.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def describe_params(vla: nn.Module) -> dict[str, int]:
    """Parameter counts by part (what the 6N rule multiplies), for the report."""
    text, vision = _backbone_parts(vla.backbone.model)
    embed = n_params(text.embed_tokens) if hasattr(text, "embed_tokens") else 0
    return {
        "total": n_params(vla),
        "text_layers": n_params(text.layers),
        "text_embedding": embed,
        "vision": n_params(vision),
        "action_prior": n_params(vla.head),
    }


def short_device_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100 80GB HBM3' (for tables)."""
    return re.sub(r"^NVIDIA\s+", "", name)
