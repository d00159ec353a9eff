"""The opt-in compiled decoder loop (ActionPrior.compile_sampler) and benchmarks/inference_latency.py on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from actionprior.data.synthetic import synthetic_registry
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from benchmarks.summary import latency_markdown
from benchmarks.summary import main as summary_main

REPO = Path(__file__).resolve().parents[1]


def _prior(steps: int = 4) -> tuple[ActionPrior, torch.Tensor, torch.Tensor]:
    reg = synthetic_registry()
    torch.manual_seed(0)
    cfg = ActionPriorConfig.for_embodiments(
        reg, width=32, depth=2, heads=2, latent_dim=16, chunk_len=6, sample_steps=steps
    )
    ids = torch.arange(5) % len(reg)
    prior = ActionPrior(cfg).eval()
    with torch.no_grad():  # adaLN-Zero starts every block as the identity: perturb so that they all matter
        for param in prior.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return prior, torch.randn(5, 16), ids


def _sample(prior: ActionPrior, z: torch.Tensor, ids: torch.Tensor, **kw) -> torch.Tensor:
    return prior.sample(z, ids, generator=torch.Generator().manual_seed(3), **kw)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_sampler_gives_the_eager_actions(backend: str) -> None:
    prior, z, ids = _prior()
    eager = _sample(prior, z, ids)
    prior.compile_sampler(backend=backend)  # fullgraph: a graph break in the loop would raise here
    compiled = _sample(prior, z, ids)
    assert torch.equal(compiled, eager)
    again = _sample(prior, z + 1.0, ids.flip(0))  # same shapes, new values: reuses the compiled loop
    assert torch.equal(again, _sample(prior, z + 1.0, ids.flip(0), compile=False))
    # Padded action dims stay exactly zero through the compiled loop too.
    mask = prior.decoder.io.action_dim_mask(ids)
    assert torch.all(compiled[~mask[:, None, :].expand_as(compiled)] == 0)


def test_compile_flag_per_call_and_undo() -> None:
    prior, z, ids = _prior(steps=3)
    eager = _sample(prior, z, ids)
    assert prior._compiled_loop is None
    assert torch.equal(_sample(prior, z, ids, compile=False), eager)
    prior.compile_sampler(backend="eager")
    assert prior._compiled_loop is not None
    assert torch.equal(_sample(prior, z, ids, compile=False), eager)  # forced eager
    prior.eager_sampler()
    assert prior._compiled_loop is None
    # compile=True compiles on first use (the default: inductor; here the cheap backend first).
    prior.compile_sampler(backend="aot_eager")
    assert torch.equal(_sample(prior, z, ids, compile=True), eager)


def test_copies_of_a_compiled_prior_start_eager() -> None:
    import copy

    prior, z, ids = _prior(steps=2)
    prior.compile_sampler(backend="eager")
    clone = copy.deepcopy(prior)
    assert clone._compiled_loop is None and prior._compiled_loop is not None
    with torch.no_grad():
        clone.decoder.z_cond.weight.add_(1.0)  # the copy samples with its own weights
    assert not torch.equal(_sample(clone, z, ids), _sample(prior, z, ids))


@pytest.mark.slow
def test_inductor_compiled_sampler_matches_eager() -> None:
    """The real thing on CPU: inductor generates C++ (needs a compiler; ~30 s)."""
    prior, z, ids = _prior()
    eager = _sample(prior, z, ids)
    prior.compile_sampler()  # mode reduce-overhead: CUDA graphs on GPU, plain inductor on CPU
    assert torch.allclose(_sample(prior, z, ids), eager, atol=1e-5)


def test_latency_benchmark_times_eager_and_compiled_decoder(tmp_path: Path, monkeypatch) -> None:
    from benchmarks.inference_latency import main

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["inference_latency"])
    out = tmp_path / "latency.json"
    report = main(
        ["--threads", "1", "--iters", "2", "--warmup", "1", "--compile-decoder", "--compile-backend", "eager"]
        + ["--target-ms", "1e6", "--json", str(out), "--image-size", "32"]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [r["decoder_mode"] for r in report["rows"]] == ["eager", "compiled"]
    for row in report["rows"]:
        for part in ("backbone", "decoder", "total", "act"):
            assert row[part]["wall_median_ms"] > 0
        assert (
            row["total"]["wall_median_ms"]
            <= sum(row[p]["wall_p90_ms"] for p in ("batch", "history", "backbone", "decoder")) + 1e-6
        )
    assert report["target"]["met"] is True and report["device"] == "cpu"
    md = latency_markdown(report)
    assert "| compiled | 5 | 1 |" in md and "met: True" in md
    summary = tmp_path / "summary.md"
    summary_main(["--latency", str(out), "--train", str(tmp_path / "missing.json"), "--out", str(summary)])
    text = summary.read_text()
    assert "not written" in text and "Inference latency per action chunk" in text


def test_latency_benchmark_refuses_cuda_without_a_gpu(monkeypatch) -> None:
    from benchmarks.inference_latency import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
