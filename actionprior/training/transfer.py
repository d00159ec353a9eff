"""Stage 1 -> Stage 2: load the action prior into the VLA and anneal the distillation weight lambda.

:class:`ActionPriorTransfer` is the only place where Stage 1 weights enter Stage 2:

* on fit start of a *fresh* Stage 2 run it reads the Stage 1 checkpoint, refuses it (naming every
  difference) unless embodiments, dims, normalisation statistics and the prior's architecture match the
  VLA's, and copies the encoder and decoder tensors into the VLA;
* before every training batch it sets ``lambda(k) = max(0, 1 - k / decay_steps)`` on the module, with
  ``k`` the number of optimizer steps taken so far (``trainer.global_step``), so gradient accumulation
  does not change the schedule;
* its state (whether the prior was loaded, from where, the schedule length) is stored in the Stage 2
  checkpoint, and a run resumed from a Stage 2 checkpoint never reloads Stage 1 weights.

The no-prior baseline is ``stage1_ckpt: null``: the decoder trains from scratch and lambda stays 0, so
the auxiliary branch (encoder on the ground-truth window, L_align, L_recon) is never computed.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from actionprior.checkpoint import (
    ARCHITECTURE_KEYS,
    check_compatible,
    load_action_prior,
    load_checkpoint_file,
    read_payload,
)

log = logging.getLogger(__name__)


def lambda_schedule(step: int, decay_steps: int) -> float:
    """``max(0, 1 - step / decay_steps)``: 1 at the first step, 0 from ``decay_steps`` on."""
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
    return max(0.0, 1.0 - step / decay_steps)


class ActionPriorTransfer(Callback):
    """Loads the Stage 1 prior into a :class:`~actionprior.training.vla_module.VLAModule` and anneals lambda.

    Args:
        stage1_ckpt: the Stage 1 checkpoint (``--stage1_ckpt`` on the CLI sets it).
        decay_steps: N_decay, the optimizer step at which lambda reaches 0 (paper: 5000).
        baseline_no_prior: the paper's no-prior baseline (decoder from scratch, lambda = 0). Explicit on purpose:
            a forgotten ``--stage1_ckpt`` must not silently turn a prior run into the baseline, and a baseline
            run must not silently load a prior.
    """

    def __init__(
        self, stage1_ckpt: str | None = None, decay_steps: int = 5000, baseline_no_prior: bool = False
    ):
        super().__init__()
        if decay_steps < 1:
            raise ValueError(f"ActionPriorTransfer: decay_steps must be >= 1, got {decay_steps}")
        self.stage1_ckpt = stage1_ckpt
        self.decay_steps = decay_steps
        self.baseline_no_prior = baseline_no_prior
        self.loaded_from: str | None = None  # the Stage 1 checkpoint whose weights this run started from

    @property
    def use_prior(self) -> bool:
        return self.loaded_from is not None

    def aux_weight(self, step: int) -> float:
        return lambda_schedule(step, self.decay_steps) if self.use_prior else 0.0

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.loaded_from is not None or trainer.ckpt_path is not None:
            # Resuming a Stage 2 run: its own checkpoint already holds the (fine-tuned) prior weights.
            log.info(
                "ActionPriorTransfer: resuming Stage 2 from %s; Stage 1 weights are not reloaded (prior: %s)",
                trainer.ckpt_path,
                self.loaded_from,
            )
        elif self.baseline_no_prior:
            if self.stage1_ckpt:
                raise ValueError(
                    f"ActionPriorTransfer: the no-prior baseline was configured (baseline_no_prior: true) but a "
                    f"Stage 1 checkpoint was given ({self.stage1_ckpt}); drop --stage1_ckpt or the baseline config"
                )
            log.info("ActionPriorTransfer: no-prior baseline: decoder from scratch, lambda = 0")
        elif self.stage1_ckpt:
            self.load_into(pl_module, self.stage1_ckpt)
            self.loaded_from = str(self.stage1_ckpt)
        else:
            raise ValueError(
                "ActionPriorTransfer: Stage 2 starts from the Stage 1 action prior, but no checkpoint was given: "
                "pass --stage1_ckpt PATH (`make stage1` writes runs/stage1/checkpoints/last.ckpt), or train the "
                "no-prior baseline with -c configs/ablations/no_prior.yaml"
            )
        pl_module.aux_weight = self.aux_weight(trainer.global_step)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        pl_module.aux_weight = self.aux_weight(trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"loaded_from": self.loaded_from, "decay_steps": self.decay_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded_from = state_dict.get("loaded_from")
        stored = state_dict.get("decay_steps", self.decay_steps)
        if stored != self.decay_steps:
            log.warning(
                "ActionPriorTransfer: decay_steps is %d in the resumed checkpoint and %d in the config; "
                "using the config's value",
                stored,
                self.decay_steps,
            )

    # ------------------------------------------------------------------ loading
    @staticmethod
    def load_into(pl_module: L.LightningModule, path: str) -> None:
        """Check the Stage 1 checkpoint against the module and copy its encoder and decoder weights."""
        source = f"Stage 1 checkpoint '{path}'"
        payload = read_payload(load_checkpoint_file(path), source)
        check_compatible(
            payload,
            source,
            registry=pl_module.registry,
            normalizer=pl_module.normalizer,
            config=pl_module.prior_config,
            config_keys=ARCHITECTURE_KEYS,
        )
        prior, _, _, _ = load_action_prior(path)
        target = pl_module.model.prior
        # load_state_dict copies in place, so optimizer state set up before fit start keeps its tensors.
        target.encoder.load_state_dict(prior.encoder.state_dict())
        target.decoder.load_state_dict(prior.decoder.state_dict())
        log.info("ActionPriorTransfer: loaded encoder and decoder from %s", path)
