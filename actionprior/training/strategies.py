"""Distributed strategies for the cluster configs (``configs/cluster/*.yaml``).

* DDP: Lightning's own ``DDPStrategy`` (works on CPU with gloo as well).
* :class:`BackboneFSDPStrategy`: FSDP that auto-wraps each decoder layer of the model -- the layer classes a
  Hugging Face backbone lists in ``_no_split_modules`` plus the action module's blocks -- so every layer is its
  own shard unit instead of the whole model being gathered at once.
* :class:`DeepSpeedZeroStrategy`: DeepSpeed ZeRO stage 2 or 3.

FSDP and DeepSpeed need CUDA. Both classes check for it (and DeepSpeed for the ``deepspeed`` package) *before*
building anything, raising :class:`StrategyError` with the fix, instead of Lightning's traceback from deep inside
the process launch. ``deepspeed`` is never imported here; its presence is checked with ``find_spec``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

log = logging.getLogger(__name__)

STRATEGY_NAMES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
CUDA_ONLY = ("fsdp", "deepspeed_zero2", "deepspeed_zero3")
_CPU_ACCELERATORS = ("cpu", "mps")


class StrategyError(ValueError):
    """A strategy that cannot run here; the message names the setting to change."""


def require_cuda(what: str, accelerator: str | None = None) -> None:
    """Fail clearly when ``what`` (a CUDA-only strategy) is asked for on CPU."""
    if accelerator is not None and str(accelerator).lower() in _CPU_ACCELERATORS:
        raise StrategyError(
            f"{what} runs on CUDA GPUs only, but trainer.accelerator={accelerator!r}. Use GPUS=<n> "
            "(--trainer.accelerator gpu) on a GPU machine, or configs/cluster/ddp.yaml on CPU."
        )
    if not torch.cuda.is_available():
        raise StrategyError(
            f"{what} runs on CUDA GPUs only and no CUDA device is visible (torch.cuda.is_available() is False). "
            "Run on a GPU machine, or use configs/cluster/ddp.yaml on CPU."
        )


def require_package(package: str, what: str, extra: str = "gpu") -> None:
    if importlib.util.find_spec(package) is None:
        raise StrategyError(
            f"{what} needs the '{package}' package, which is not installed; "
            f"install the optional extra with: pip install '.[{extra}]'"
        )


def decoder_layer_classes(model: nn.Module, extra_names: Iterable[str] = ()) -> set[type[nn.Module]]:
    """Layer classes to shard one by one: every ``_no_split_modules`` entry of Hugging Face submodules (their
    decoder / vision blocks) plus ``extra_names``, keeping only classes that actually occur in ``model``."""
    names = set(extra_names)
    for module in model.modules():
        no_split = getattr(module, "_no_split_modules", None)
        if no_split:
            names.update(no_split)
    return {type(m) for m in model.modules() if type(m).__name__ in names}


class BackboneFSDPStrategy(FSDPStrategy):
    """FSDP with the auto-wrap policy derived from the model itself when it is set up.

    Args:
        wrap_layers: extra layer class names to wrap, e.g. the action module's ``TransformerBlock``
            (Hugging Face backbones contribute their ``_no_split_modules`` automatically).
        activation_checkpointing: recompute the wrapped layers' activations in backward (saves memory).
        **kwargs: passed to Lightning's ``FSDPStrategy`` (sharding_strategy, state_dict_type, cpu_offload, ...).
    """

    def __init__(
        self,
        wrap_layers: list[str] | None = None,
        activation_checkpointing: bool = False,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        state_dict_type: Literal["full", "sharded"] = "full",
        **kwargs: Any,
    ) -> None:
        require_cuda("FSDP")
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)
        self.wrap_layers = list(wrap_layers or [])
        self.activation_checkpointing = activation_checkpointing

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if "auto_wrap_policy" not in self.kwargs:  # an explicit policy from the user wins
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            classes = decoder_layer_classes(model, self.wrap_layers)
            if classes:
                rank_zero_info(
                    f"FSDP: wrapping each {', '.join(sorted(c.__name__ for c in classes))} separately"
                )
                self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
                if self.activation_checkpointing:
                    self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(classes)}
            else:
                rank_zero_warn(
                    "FSDP: no decoder layers found (no `_no_split_modules` and none of "
                    f"wrap_layers={self.wrap_layers} in the model); the whole model is one shard unit"
                )
        return super()._setup_model(model)


class DeepSpeedZeroStrategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO (stage 2: shard optimizer state + gradients; stage 3: also parameters). CUDA only."""

    def __init__(
        self,
        stage: Literal[2, 3] = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        **kwargs: Any,
    ) -> None:
        if stage not in (2, 3):
            raise StrategyError(f"DeepSpeedZeroStrategy: stage must be 2 or 3, got {stage}")
        require_cuda(f"DeepSpeed ZeRO-{stage}")
        require_package("deepspeed", f"DeepSpeed ZeRO-{stage}")
        super().__init__(
            stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters, **kwargs
        )


def check_strategy_request(strategy: Any, accelerator: Any = None) -> None:
    """Check a *parsed, not yet instantiated* ``trainer.strategy`` against ``trainer.accelerator``.

    For LightningCLI's ``before_instantiate_classes``: a CUDA-only strategy on CPU fails here with one clear
    message, before jsonargparse instantiates the class (which would wrap the error in its union diagnostics).
    """
    if strategy is None:
        return
    if isinstance(strategy, str):
        name = strategy
    elif isinstance(strategy, Mapping):
        name = str(strategy.get("class_path", ""))
    else:
        name = str(getattr(strategy, "class_path", "") or type(strategy).__name__)
    if any(marker in name.lower() for marker in ("fsdp", "deepspeed")):
        require_cuda(name, accelerator if isinstance(accelerator, str) else None)


def build_strategy(name: str, accelerator: str = "auto", **kwargs: Any) -> Strategy:
    """Build a strategy by name, checking the accelerator first (``fsdp``/``deepspeed_*`` need CUDA)."""
    if name not in STRATEGY_NAMES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    if name in CUDA_ONLY:
        require_cuda(name, accelerator)
    if name == "ddp":
        return DDPStrategy(**kwargs)
    if name == "fsdp":
        return BackboneFSDPStrategy(**kwargs)
    return DeepSpeedZeroStrategy(stage=2 if name == "deepspeed_zero2" else 3, **kwargs)
