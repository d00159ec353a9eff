"""Optimiser and learning-rate schedule shared by both stages: AdamW, linear warmup, cosine to a floor.

Parameter groups: matrices are weight-decayed; biases, norm parameters, embeddings and learned tokens are
not (decaying them only shrinks offsets and lookup rows towards zero). Stage 2 builds one decay/no-decay
pair per sub-module with its own learning rate (backbone vs action module) and passes them all here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(
    module: nn.Module, weight_decay: float, lr: float | None = None, name: str = ""
) -> list[dict[str, Any]]:
    """``[decay, no_decay]`` groups of ``module``'s trainable parameters (empty groups are dropped).

    ``lr`` (optional) overrides the optimiser's base learning rate for both groups; ``name`` tags them so
    LearningRateMonitor and checkpoints show which group is which.
    """
    embedding_weights = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and id(p) not in embedding_weights:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = []
    for params, wd, suffix in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
        if not params:
            continue
        group: dict[str, Any] = {
            "params": params,
            "weight_decay": wd,
            "name": f"{name}/{suffix}" if name else suffix,
        }
        if lr is not None:
            group["lr"] = lr
        groups.append(group)
    return groups


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear 0 -> 1 over ``warmup_steps``, then cosine 1 -> ``min_lr_ratio`` at ``total_steps``."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps} and {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def adamw_warmup_cosine(
    groups: Iterable[dict[str, Any]],
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns: AdamW + a per-step warmup/cosine schedule."""
    groups = list(groups)
    use_fused = all(p.is_cuda for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=use_fused or None)
    scheduler = LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio))
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }


def total_training_steps(trainer: Any) -> int:
    """The number of optimiser steps the Trainer will run; refuses an unbounded run (cosine needs an end)."""
    total = trainer.estimated_stepping_batches
    if total is None or not math.isfinite(total) or total < 1:
        raise ValueError(
            "the cosine schedule needs a finite run length: set trainer.max_steps (or max_epochs with a "
            f"sized dataloader); the Trainer estimates {total} steps"
        )
    return int(total)
