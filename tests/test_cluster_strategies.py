"""Strategy factory and configs/cluster/*.yaml: CUDA-only strategies fail clearly on CPU, FSDP wraps layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn

from actionprior.training import strategies
from actionprior.training.strategies import (
    BackboneFSDPStrategy,
    DeepSpeedZeroStrategy,
    StrategyError,
    build_strategy,
    check_strategy_request,
    decoder_layer_classes,
)

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "configs" / "cluster"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")


def _trainer_parser() -> ArgumentParser:
    """The same `trainer:` section LightningCLI builds, so the YAML is checked the way `actionprior fit` reads it."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(Trainer, "trainer", fail_untyped=False)
    return parser


def _tiny_backbone_with_action_blocks() -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from actionprior.models.transformer import TransformerBlock

    config = Qwen2Config(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=64,
    )  # fmt: skip
    model = nn.Module()
    model.backbone = Qwen2ForCausalLM(config)
    model.decoder = nn.ModuleList([TransformerBlock(width=16, heads=2) for _ in range(2)])
    return model


@no_cuda
@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3", "fsdp"])
@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_cuda_only_strategies_on_cpu_raise_a_clear_error(name: str, accelerator: str) -> None:
    with pytest.raises(StrategyError, match="runs on CUDA GPUs only") as err:
        build_strategy(name, accelerator=accelerator)
    assert "configs/cluster/ddp.yaml" in str(err.value)  # the message says what to use instead


@no_cuda
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"])
def test_cluster_yaml_with_cuda_only_strategy_fails_clearly_when_instantiated(config: str) -> None:
    parser = _trainer_parser()
    cfg = parser.parse_path(str(CLUSTER / config))
    # What LightningCLI's before_instantiate_classes hook sees: the parsed class_path and the accelerator.
    with pytest.raises(StrategyError, match="runs on CUDA GPUs only, but trainer.accelerator='cpu'"):
        check_strategy_request(cfg.trainer.strategy, "cpu")
    # Instantiating anyway still fails with our message (jsonargparse wraps it in its union diagnostics).
    with pytest.raises(ValueError, match="runs on CUDA GPUs only"):
        parser.instantiate_classes(cfg)


def test_check_strategy_request_lets_cpu_strategies_through() -> None:
    for strategy in (None, "ddp", "auto", {"class_path": "lightning.pytorch.strategies.DDPStrategy"}):
        check_strategy_request(strategy, "cpu")


def test_deepspeed_without_the_package_points_to_the_gpu_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # get past the CUDA check
    monkeypatch.setattr(strategies.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StrategyError, match=r"needs the 'deepspeed' package.*pip install '\.\[gpu\]'"):
        DeepSpeedZeroStrategy(stage=3)


def test_deepspeed_stage_must_be_2_or_3() -> None:
    with pytest.raises(StrategyError, match="stage must be 2 or 3, got 1"):
        DeepSpeedZeroStrategy(stage=1)  # type: ignore[arg-type]


def test_ddp_yaml_builds_a_cpu_trainer_with_accumulation() -> None:
    parser = _trainer_parser()
    cfg = parser.parse_args(
        ["--config", str(CLUSTER / "ddp.yaml"), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
         "--trainer.precision", "32-true", "--trainer.accumulate_grad_batches", "4", "--trainer.logger", "false"]
    )  # fmt: skip
    trainer = parser.instantiate_classes(cfg).trainer  # the Trainer itself, as LightningCLI builds it
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.accumulate_grad_batches == 4
    kwargs = trainer.strategy._ddp_kwargs
    assert (kwargs["find_unused_parameters"], kwargs["gradient_as_bucket_view"]) == (True, True)


def test_every_cluster_config_sets_bf16_and_accumulation() -> None:
    import yaml

    names = sorted(p.name for p in CLUSTER.glob("*.yaml"))
    assert names == ["ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"]
    for name in names:
        trainer = yaml.safe_load((CLUSTER / name).read_text())["trainer"]
        assert trainer["precision"] == "bf16-mixed", name
        assert trainer["accumulate_grad_batches"] >= 1, name
        assert not {"devices", "num_nodes", "accelerator"} & set(trainer), (
            f"{name} must leave the layout to the launcher"
        )


def test_decoder_layer_classes_come_from_no_split_modules_and_wrap_layers() -> None:
    model = _tiny_backbone_with_action_blocks()
    names = {c.__name__ for c in decoder_layer_classes(model)}
    assert names == {"Qwen2DecoderLayer"}
    names = {c.__name__ for c in decoder_layer_classes(model, ["TransformerBlock", "NotInTheModel"])}
    assert names == {"Qwen2DecoderLayer", "TransformerBlock"}


def test_fsdp_strategy_sets_the_auto_wrap_policy_from_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen: dict = {}

    def fake_setup(self, model):  # Lightning's FSDP wrapping needs a GPU; capture what it would receive
        seen["kwargs"] = dict(self.kwargs)
        seen["ckpt"] = dict(self._activation_checkpointing_kwargs)
        return model

    monkeypatch.setattr(FSDPStrategy, "_setup_model", fake_setup)
    strategy = BackboneFSDPStrategy(wrap_layers=["TransformerBlock"], activation_checkpointing=True)
    model = _tiny_backbone_with_action_blocks()
    strategy._setup_model(model)
    policy = seen["kwargs"]["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert {c.__name__ for c in policy._module_classes} == {"Qwen2DecoderLayer", "TransformerBlock"}
    assert isinstance(seen["ckpt"]["auto_wrap_policy"], ModuleWrapPolicy)
    assert seen["kwargs"]["use_orig_params"] is True


@pytest.mark.slow  # a fresh interpreter importing Lightning: 5-20 s on a loaded 2-core machine
def test_no_optional_gpu_package_is_imported_by_the_cluster_code() -> None:
    code = (
        "import sys, lightning_apps.launch, lightning_apps.slurm, lightning_apps.lightning_ai, "
        "actionprior.training.strategies as s\n"
        "s.build_strategy('ddp')\n"
        "bad = [m for m in ('deepspeed', 'flash_attn', 'lightning_sdk') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
