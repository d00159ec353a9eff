"""Stage 1 training: the action prior (encoder -> z -> flow-matching decoder) as a LightningModule.

This class only orchestrates: it builds :class:`~actionprior.models.ActionPrior` from its init args,
computes the flow-matching loss, configures AdamW with warmup + cosine, logs, validates by sampling
chunks, and stores embodiments / normalisation / model config in every checkpoint. Gradient clipping is
the Trainer's ``gradient_clip_val``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from actionprior.checkpoint import (
    CHECKPOINT_KEY,
    StoredCheckpoint,
    check_adaptable,
    check_compatible,
    checkpoint_payload,
    data_contract,
)
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.adaptation import AdaptationReport, transfer_prior_weights
from actionprior.training.action_scaling import ActionScaler
from actionprior.training.configs import as_prior_config, settings_dict
from actionprior.training.metrics import EmbodimentActionError
from actionprior.training.optim import adamw_warmup_cosine, param_groups, total_training_steps

log = logging.getLogger(__name__)

BATCH_KEYS = ("embodiment_id", "state", "action", "step_mask", "action_dim_mask")


class ActionPriorModule(L.LightningModule):
    """Stage 1. ``embodiments``/``normalization`` are linked from the DataModule by the CLI.

    Args:
        prior: the action prior's settings (:class:`~actionprior.models.action_prior.ActionPriorConfig`).
        chunk_len: action chunk length H (linked from ``data.chunk_len`` by the CLI).
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW, linear warmup then cosine to
            ``lr * min_lr_ratio`` at the Trainer's last step.
        val_seed: seeds validation noise and flow times so that validation numbers are comparable.
        embodiments: ``EmbodimentRegistry.to_dicts()`` of the training data.
        normalization: ``Normalizer.to_dict()`` of the training data.
    """

    def __init__(
        self,
        prior: ActionPriorConfig | None = None,
        chunk_len: int = 16,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.1,
        val_seed: int = 0,
        embodiments: list[dict] | None = None,
        normalization: dict | None = None,
    ):
        super().__init__()
        prior = as_prior_config(prior) or ActionPriorConfig()
        hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        # Plain containers only: checkpoints are read back with torch.load(weights_only=True).
        self.save_hyperparameters({**hparams, "prior": settings_dict(prior)})
        self.registry, self.normalizer = data_contract(embodiments, normalization, "ActionPriorModule")
        config = prior.bind(self.registry, chunk_len)
        self.model = ActionPrior(config)
        self.scaler = ActionScaler(self.normalizer, config.max_action_dim)
        self.val_error = EmbodimentActionError(self.registry.names)
        # The prior this run was adapted from (``--init_from``), recorded in its checkpoints as prior_source.
        self.prior_source: str | None = None

    @property
    def config(self) -> ActionPriorConfig:
        return self.model.config

    def _check_batch(self, batch: dict[str, Any]) -> None:
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(
                f"Stage 1 batch lacks keys {missing}; it has {sorted(batch)} (see docs/contracts.md)"
            )

    def _encode(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model.encode(batch["state"], batch["action"], batch["step_mask"], batch["embodiment_id"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self._check_batch(batch)
        z = self._encode(batch)
        loss = self.model.loss(
            z, batch["action"], batch["step_mask"], batch["action_dim_mask"], batch["embodiment_id"]
        )
        b = z.shape[0]
        self.log("train/flow_loss", loss, prog_bar=True, batch_size=b)
        with torch.no_grad():
            # Spread across the batch (per latent dim): near 0 means z ignores its input (collapse).
            self.log("train/z_std", z.std(0).mean() if b > 1 else z.new_zeros(()), batch_size=b)
            self.log("train/z_mean", z.mean(), batch_size=b)
            self.log("train/z_norm", z.norm(dim=-1).mean(), batch_size=b)
        if self.trainer.optimizers:
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=b
            )
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after backward and before gradient clipping: the raw norm.
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._check_batch(batch)
        action, eid, step_mask = batch["action"], batch["embodiment_id"], batch["step_mask"]
        if action.shape[1] != self.config.chunk_len:
            raise ValueError(
                f"validation batch has chunks of {action.shape[1]} steps but the model samples "
                f"chunk_len={self.config.chunk_len}; set data.chunk_len and model.chunk_len alike"
            )
        generator = torch.Generator(device=action.device).manual_seed(self.hparams.val_seed + batch_idx)
        z = self._encode(batch)
        loss = self.model.loss(z, action, step_mask, batch["action_dim_mask"], eid, generator=generator)
        self.log("val/flow_loss", loss, prog_bar=True, batch_size=z.shape[0], sync_dist=True)
        pred = self.model.sample(z, eid, generator=generator, step_mask=step_mask)
        target = self.scaler.unnormalize(action, eid)
        self.val_error.update(
            self.scaler.unnormalize(pred, eid),
            target,
            self.scaler.mean_chunk(eid, action.shape[1]),
            eid,
            step_mask,
            batch["action_dim_mask"],
        )

    def on_validation_epoch_end(self) -> None:
        for key, value in self.val_error.compute().items():
            self.log(f"val/{key}", value, prog_bar=key == "mae_ratio")
        self.val_error.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        return adamw_warmup_cosine(
            param_groups(self.model, h.weight_decay, name="action_prior"),
            lr=h.lr,
            total_steps=total_training_steps(self.trainer),
            warmup_steps=h.warmup_steps,
            min_lr_ratio=h.min_lr_ratio,
            betas=tuple(h.betas),
        )

    def adapt_from(self, stored: StoredCheckpoint | str | Path) -> AdaptationReport:
        """Start from a trained prior (``--init_from``), which may know other robots than this run's data.

        Embodiments are matched by name: shared weights load exactly, a robot the checkpoint knows keeps
        its projections and embedding, a new one keeps this module's fresh (from-scratch) init. The
        checkpoint's robots must have the same dims and the same statistics here (the DataModule's
        ``stats_from`` keeps them), and the architecture must match; anything else is refused, named.
        """
        if not isinstance(stored, StoredCheckpoint):
            stored = StoredCheckpoint.read(stored)
        stored.expect_stage(1, "--init_from")
        check_adaptable(
            stored,
            f"--init_from checkpoint '{stored.source}'",
            registry=self.registry,
            config=self.config,
            normalizer=self.normalizer,
        )
        report = transfer_prior_weights(stored.build_prior(), stored.registry, self.model, self.registry)
        self.prior_source = stored.source
        log.info("Stage 1: initialised from %s: %s", stored.source, report.summary())
        return report

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_payload(
            self.config, self.registry, self.normalizer, prior_source=self.prior_source
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming (``--ckpt_path``) into a module built from different data or a different architecture
        # would otherwise fail later with an opaque shape error, or worse, train on mis-normalised data.
        source = "the checkpoint being resumed (--ckpt_path)"
        stored = StoredCheckpoint.from_dict(checkpoint, source).expect_stage(1, "Stage 1 resume")
        self.prior_source = stored.prior_source
        check_compatible(
            stored.payload,
            source,
            registry=self.registry,
            normalizer=self.normalizer,
            config=self.config,
        )
