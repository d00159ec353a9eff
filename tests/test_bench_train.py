"""benchmarks/train_throughput.py at reduced scale on CPU: the real VLAModule + Trainer, a few steps."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from benchmarks.train_throughput import (
    RunSpec,
    loss_agreement,
    main,
    markdown,
    max_batch_search,
    parse_args,
    plan_runs,
    stage1_share,
)

TINY = [
    "--backbone", "tiny:qwen3_vl", "--precision", "32-true", "--attn", "sdpa", "--batch-size", "2",
    "--steps", "2", "--warmup", "1", "--image-size", "32", "--chunk-len", "4",
]  # fmt: skip


def test_one_cpu_run_reports_throughput_mfu_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    main(TINY + ["--grad-ckpt", "off", "--strategies", "single", "--loader-workers", "-1", "--stage1-steps", "0"]
         + ["--json", str(out), "--markdown", str(tmp_path / "table.md")])  # fmt: skip
    report = json.loads(out.read_text())
    (row,) = report["train"]
    assert row["status"] == "ok" and row["world_size"] == 1 and row["built_on"] == "cpu"
    assert row["samples_per_s"] == pytest.approx(2 / row["step_s_mean"])
    assert 0 < row["mfu"] <= 1 and row["flops_per_step_per_device"]["total"] > 0
    assert row["peak_rss_gib"] > 0 and "loader" not in report and "stage1" not in report
    assert report["meta"]["params_total"] == row["params"]["total"] > 1e6
    assert "| single | 1 | 32-true | sdpa | off | 2 |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow
def test_cpu_matrix_writes_sane_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    main(
        TINY
        + ["--grad-ckpt", "off", "on", "--strategies", "single", "ddp", "fsdp"]
        + ["--loader-workers", "0", "--loader-batches", "2", "--loader-episodes", "1"]
        + ["--loader-dir", str(tmp_path / "data"), "--stage1-steps", "2", "--stage1-batch-size", "8"]
        + ["--max-batch", "--max-batch-limit", "2", "--json", str(out)]
    )
    report = json.loads(out.read_text())
    rows = report["train"]
    assert [(r["spec"]["grad_ckpt"], r["status"]) for r in rows] == [(False, "ok"), (True, "ok")]
    for r in rows:
        assert r["steps_per_s"] > 0 and r["step_s_mean"] > 0
        assert r["samples_per_s"] == pytest.approx(2 * r["steps_per_s"])
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_sample"] * r["samples_per_s"])
        assert r["tokens_per_sample"] == r["seq_len"] > 4  # image blocks + instruction + 4 query tokens
        assert 0 < r["mfu"] <= 1 and r["mfu_method"].startswith("analytic")
        assert r["peak"]["source"].startswith("measured:cpu")
        assert r["achieved_tflops_per_device"] == pytest.approx(r["mfu"] * r["peak"]["tflops"])
        assert r["peak_rss_gib"] > 0.05
        assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"])
        assert r["params"]["text_layers"] > 0 and r["params"]["vision"] > 0
        assert r["image_preprocessing"] == "tensor (no resize)"  # 32 px frames: the tiny processor's own size
    # Recomputing activations changes speed, not numbers: the same seed gives the same losses.
    assert rows[0]["losses"] == pytest.approx(rows[1]["losses"], rel=1e-5)
    assert {s["reason"] for s in report["skipped"]} == {
        "needs >= 2 processes (--devices), 0 visible",
        "CUDA only",
    }
    loader = report["loader"]
    assert loader["samples_per_s"] > 0 and loader["samples"] == 2 * 2
    assert loader["ratio_to_training"] == pytest.approx(
        loader["samples_per_s"] / rows[0]["samples_per_s_per_device"]
    )
    stage1 = report["stage1"]
    assert stage1["status"] == "ok" and stage1["spec"]["batch_size"] == 8 and stage1["step_s_mean"] > 0
    assert report["stage1_share"] == pytest.approx(
        stage1_share(stage1["step_s_mean"], rows[0]["step_s_mean"])
    )
    assert 0 < report["stage1_share"]["stage1_share"] < 1
    assert report["targets"]["loader >= 3x training consumption"]["value"] == loader["ratio_to_training"]
    assert report["targets"]["stage2 bf16 one-GPU MFU >= 40%"]["met"] is None  # not measured on CPU
    assert (
        report["max_batch"]["largest_fitting_batch"] == 2
        and report["max_batch"]["tried"][0]["status"] == "ok"
    )
    md = out.with_suffix(".md").read_text()
    assert "| strategy | devices | precision |" in md and "skipped: CUDA only" in md
    assert "Stage 1 =" in md and "samples/s delivered" in md


def test_a_failing_run_is_a_row_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    main(TINY + ["--backbone", "tiny:no_such_family", "--loader-workers", "-1", "--stage1-steps", "0"]
         + ["--grad-ckpt", "off", "--strategies", "single", "--json", str(out)])  # fmt: skip
    (row,) = json.loads(out.read_text())["train"]
    assert row["status"] == "error" and "no_such_family" in row["error"]
    assert "| error: " in out.with_suffix(".md").read_text()


def test_plan_varies_one_factor_at_a_time_and_says_what_cannot_run() -> None:
    args = parse_args(
        ["--backbone", "b", "--precision", "bf16-mixed", "32-true", "--attn", "flash_attention_2", "sdpa"]
        + ["--grad-ckpt", "off", "on", "--batch-size", "32", "8", "--strategies", "single", "ddp", "fsdp"]
    )
    base = RunSpec(backbone="b", attn="flash_attention_2", batch_size=32, accelerator="cuda")
    runs, skipped = plan_runs(args, base, n_gpus=2)
    labels = [r.label() for r in runs]
    assert labels[0] == base.label()
    # fp32 cannot use the 16-bit flash-attention kernels: that run uses SDPA.
    assert "singlex1 32-true sdpa no-gc b32" in labels
    assert (
        "singlex1 bf16-mixed flash_attention_2 gc b32" in labels
        and "singlex1 bf16-mixed flash_attention_2 no-gc b8" in labels
    )
    assert (
        "ddpx2 bf16-mixed flash_attention_2 no-gc b32" in labels
        and "fsdpx2 bf16-mixed flash_attention_2 no-gc b32" in labels
    )
    assert "singlex1 bf16-mixed sdpa no-gc b32" in labels
    assert len(labels) == len(set(labels)) == 7
    if not importlib.util.find_spec("flash_attn"):
        assert [s for s in skipped if "flash_attn not installed" in s["reason"]]
    _, skipped_one_gpu = plan_runs(args, base, n_gpus=1)
    assert {s["reason"] for s in skipped_one_gpu} >= {"needs >= 2 GPUs, 1 visible"}


def test_max_batch_search_doubles_then_bisects() -> None:
    tried: list[int] = []

    def run(spec: RunSpec) -> dict:
        tried.append(spec.batch_size)
        return {"status": "ok" if spec.batch_size <= 40 else "oom"}

    result = max_batch_search(RunSpec(backbone="x", memory_cap_gb=80.0), start=8, limit=512, run=run)
    assert tried == [8, 16, 32, 64, 48]
    assert result["largest_fitting_batch"] == 32 and result["first_failing"] == 64
    assert result["memory_cap_gb"] == 80.0
    tried.clear()
    budget = iter([False, False, True])  # the time budget runs out after two runs
    stopped = max_batch_search(RunSpec(backbone="x"), start=8, limit=512, run=run, stop=lambda: next(budget))
    assert tried == [8, 16] and stopped["largest_fitting_batch"] == 16 and stopped["first_failing"] is None


def test_loss_agreement_against_ddp() -> None:
    def row(strategy: str, loss: float) -> dict:
        return {"status": "ok", "spec": {"strategy": strategy}, "loss_last": loss}

    out = loss_agreement(
        [row("single", 9.0), row("ddp", 2.0), row("fsdp", 2.04), row("deepspeed_zero2", 2.3)], 0.05
    )
    assert out["fsdp"]["within"] and out["fsdp"]["rel_diff"] == pytest.approx(0.02)
    assert not out["deepspeed_zero2"]["within"]
    assert "single" not in out
    assert "no DDP run" in loss_agreement([row("fsdp", 1.0)], 0.05)["note"]


def test_markdown_lists_oom_and_skipped_rows() -> None:
    spec = RunSpec(backbone="random:qwen3_vl_2b", batch_size=256).__dict__
    report = {
        "meta": {"backbone": "random:qwen3_vl_2b", "device": "NVIDIA H200", "params_total": 2.1e9, "image_size": 224,
                 "cameras": 2, "chunk_len": 16, "steps": 15, "warmup": 5, "mfu_method": "analytic"},
        "train": [{"spec": spec, "status": "oom", "error": "CUDA out of memory"}],
        "skipped": [{"label": "ddpx1", "reason": "needs >= 2 GPUs, 1 visible"}],
    }  # fmt: skip
    md = markdown(report)
    assert (
        "| single | 1 | bf16-mixed | sdpa | off | 256 | - | - | - | - | - | - | oom: CUDA out of memory |"
        in md
    )
    assert "| ddpx1 |" in md and "2,100.0 M parameters" in md


@pytest.mark.slow
def test_isolated_runs_start_their_own_process(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    main(TINY + ["--isolate", "--grad-ckpt", "off", "--strategies", "single", "--loader-workers", "-1"]
         + ["--stage1-steps", "0", "--json", str(out)])  # fmt: skip
    (row,) = json.loads(out.read_text())["train"]
    assert row["status"] == "ok" and row["samples_per_s"] > 0


@pytest.mark.slow
def test_ddp_rehearsal_on_cpu_runs_two_processes(tmp_path: Path) -> None:
    """The multi-process path the GPU strategies take: a child process per run, Lightning launching rank 1."""
    out = tmp_path / "bench.json"
    main(TINY + ["--grad-ckpt", "off", "--strategies", "single", "ddp", "--devices", "2", "--loader-workers", "-1"]
         + ["--stage1-steps", "0", "--json", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    single, ddp = report["train"]
    assert single["status"] == "ok" and single["world_size"] == 1
    assert ddp["status"] == "ok", ddp.get("stderr_tail") or ddp.get("error")
    assert ddp["world_size"] == 2 and ddp["samples_per_s"] == pytest.approx(
        2 * ddp["samples_per_s_per_device"]
    )
    # Same seed and batches on both ranks: DDP's losses are the single process's.
    assert ddp["losses"] == pytest.approx(single["losses"], rel=1e-4)
    assert report["loss_vs_ddp"]["ddp_loss_last"] == ddp["loss_last"]
