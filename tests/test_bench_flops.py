"""The analytic FLOP count behind MFU, against torch.utils.flop_counter, and the peak FLOP/s table."""

from __future__ import annotations

import pytest
import torch

from actionprior.data.synthetic import synthetic_registry
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.backbones import VLMBackbone
from actionprior.models.vla import VLA
from benchmarks import flops
from benchmarks.synthetic_batches import make_batch
from benchmarks.train_throughput import stage1_share

CHUNK, HISTORY = 8, 4


def _vla(use_history: bool) -> VLA:
    reg = synthetic_registry()
    torch.manual_seed(0)
    # Eager attention: its products are matmuls that FlopCounterMode counts (CPU SDPA kernels are not counted).
    backbone = VLMBackbone.from_pretrained("tiny:qwen3_vl", attn_implementation="eager")
    cfg = ActionPriorConfig.for_embodiments(reg, width=32, depth=2, heads=2, latent_dim=16, chunk_len=CHUNK)
    return VLA(backbone, ActionPrior(cfg), num_queries=2, use_history=use_history, head_hidden=32)


@pytest.mark.parametrize(
    ("use_history", "aux_weight"), [(False, 0.0), (False, 1.0), (True, 1.0)], ids=["plain", "aux", "history"]
)
def test_analytic_training_flops_match_the_flop_counter(use_history: bool, aux_weight: float) -> None:
    vla = _vla(use_history)
    history = HISTORY if use_history else 0
    batch = make_batch(synthetic_registry(), 4, CHUNK, history_len=history, cameras=2, image_size=64)
    layout = flops.Layout.of(vla.backbone, batch, vla.num_queries + int(use_history))
    assert (
        layout.batch == 4 and layout.seq_len > 2 * 4 and set(layout.patches) == {16}
    )  # 64 px / 16 px patches
    analytic = flops.vla_train_flops(vla, layout, CHUNK, aux_weight, "exact", history)
    counted = flops.counted_train_flops(vla, batch, aux_weight, "exact")
    # The action prior's attention runs through CPU SDPA, which the counter misses: a few % at this scale.
    assert analytic["total"] == pytest.approx(counted, rel=0.05)
    assert analytic["total"] == pytest.approx(sum(v for k, v in analytic.items() if k != "total"))
    if aux_weight:  # the auxiliary branch adds an encoder pass and a second decoder pass
        plain = flops.vla_train_flops(vla, layout, CHUNK, 0.0, "exact", history)
        assert analytic["action_module"] > plain["action_module"]
        assert analytic["text_dense"] == plain["text_dense"]


def test_exact_history_doubles_the_backbone_work() -> None:
    vla = _vla(True)
    layout = flops.Layout(batch=2, seq_len=20, patches=(16, 16, 16, 16))
    exact = flops.vla_train_flops(vla, layout, CHUNK, 0.0, "exact", HISTORY)
    stochastic = flops.vla_train_flops(vla, layout, CHUNK, 0.0, "stochastic", HISTORY)
    for key in ("text_dense", "text_attention", "vision_dense", "vision_attention"):
        assert exact[key] == pytest.approx(2 * stochastic[key])


def test_a_family_the_analytic_count_does_not_model_is_refused() -> None:
    with pytest.raises(ValueError, match="Qwen-VL families only"):
        flops.backbone_forward_flops(torch.nn.Linear(2, 2), flops.Layout(1, 4, ()))


@pytest.mark.parametrize(
    ("name", "kind", "tflops"),
    [
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100-SXM4-40GB", "fp32", 19.5),
    ],
)
def test_datasheet_peaks(name: str, kind: str, tflops: float) -> None:
    peak = flops.datasheet_peak(name, kind)
    assert peak is not None and peak.tflops == tflops and peak.device == name


def test_unknown_gpu_needs_an_explicit_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Mystery 9000")
    with pytest.raises(ValueError, match="no peak FLOP/s entry for GPU 'NVIDIA Mystery 9000'.*--peak-tflops"):
        flops.peak_flops(torch.device("cuda", 0), "bf16-mixed")
    assert flops.peak_flops(torch.device("cuda", 0), "bf16-mixed", 500.0).source == "user"


def test_precision_selects_the_peak_kind() -> None:
    assert flops.matmul_kind("bf16-mixed") == "bf16"
    assert flops.matmul_kind("32-true") in ("fp32", "tf32")
    cpu = flops.peak_flops(torch.device("cpu"), "32-true")
    assert cpu.tflops > 0 and cpu.source.startswith("measured:")


def test_stage1_share_at_the_paper_step_counts() -> None:
    share = stage1_share(stage1_step_s=0.1, stage2_step_s=0.5)
    # 5k x 0.1 s = 500 s of Stage 1 against 50k x 0.5 s = 25,000 s of Stage 2.
    assert share["stage1_share"] == pytest.approx(500 / 25_500)
    assert share["stage1_h"] == pytest.approx(500 / 3600) and share["stage2_h"] == pytest.approx(
        25_000 / 3600
    )
