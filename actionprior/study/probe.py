"""Early-training probe: ``L_pred`` alone and the gradient norms it causes, over the first Stage 2 steps.

The gradient logged during training (``train/grad_norm*``) is the gradient of the whole loss, which with a
prior includes ``aux_weight * (L_align + L_recon)``. The paper's "16x lower gradient norm" is about ``L_pred``;
this callback measures exactly that: before each of the first ``steps`` optimizer steps it evaluates
``L_pred`` on the training batch (auxiliary weight 0) and the norm of its gradient with respect to the
backbone and to the action module (prior, query tokens, heads) separately, under a forked RNG and without
touching ``.grad``, so the run trains exactly as it would without the probe. Results go to a JSON file:

    {"steps": [0, 1, ...], "pred_loss": [...], "grad_backbone": [...], "grad_action": [...]}

Add it to a Stage 2 run with a config file that lists it among ``trainer.callbacks`` (the study runner
writes one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class EarlyTrainingProbe(Callback):
    """Records ``L_pred`` and its gradient norms (backbone / action module) for the first ``steps`` steps."""

    def __init__(self, out: str, steps: int = 200):
        super().__init__()
        self.out = Path(out)
        self.steps = int(steps)
        self.record: dict[str, list[float]] = {
            "steps": [],
            "pred_loss": [],
            "grad_backbone": [],
            "grad_action": [],
        }
        if self.out.exists():  # a resumed run continues its own record instead of overwriting it
            stored = json.loads(self.out.read_text())
            if isinstance(stored, dict) and set(stored) == set(self.record):
                self.record = stored

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        step = trainer.global_step
        if step >= self.steps or (self.record["steps"] and self.record["steps"][-1] >= step):
            return
        vla = pl_module.model
        backbone = [p for p in vla.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        action = [p for p in vla.parameters() if p.requires_grad and id(p) not in ids]
        devices = [batch["action"].device] if batch["action"].is_cuda else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            pred = vla.loss(batch, 0.0, pl_module.vla_config.history_mode).pred
            grads = torch.autograd.grad(pred, backbone + action, allow_unused=True)
        norms = [_norm(grads[: len(backbone)]), _norm(grads[len(backbone) :])]
        self.record["steps"].append(step)
        self.record["pred_loss"].append(float(pred.detach()))
        self.record["grad_backbone"].append(norms[0])
        self.record["grad_action"].append(norms[1])
        if len(self.record["steps"]) % 25 == 0 or step == self.steps - 1:
            self._write()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write()

    def _write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record))
        tmp.replace(self.out)


def _norm(grads: tuple[torch.Tensor | None, ...]) -> float:
    present = [g.detach().float() for g in grads if g is not None]
    if not present:
        return 0.0
    return float(math.sqrt(sum(float(g.pow(2).sum()) for g in present)))
