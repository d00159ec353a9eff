"""Stage 1 -> Stage 2: load the action prior into the VLA and anneal the auxiliary weight lambda.

:class:`ActionPriorTransfer` is the only place where Stage 1 weights enter Stage 2:

* on fit start of a *fresh* Stage 2 run it takes the Stage 1 checkpoint (read once, by the CLI, or here
  when used from Python), refuses it (naming every difference) unless the prior's architecture matches the
  VLA's and every embodiment it knows is in the data with the same dims and normalisation statistics, and
  copies the encoder and decoder tensors in (robots new to the prior get fresh projections; the log says so);
* before every training batch it sets ``aux_weight = lambda(k) = max(0, 1 - k / decay_steps)`` on the
  module, with ``k`` the number of optimizer steps taken so far (``trainer.global_step``), so gradient
  accumulation does not change the schedule;
* a run resumed from a Stage 2 checkpoint never reloads Stage 1 weights (the module's checkpoint records
  where its prior came from).

Whether there is a prior at all is the model's choice (``vla.action_prior``: ``stage1`` or ``scratch``);
this callback refuses a checkpoint for the scratch baseline, and the module refuses a ``stage1`` run
whose prior was never loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from actionprior.checkpoint import StoredCheckpoint, check_adaptable
from actionprior.models.adaptation import AdaptationReport, transfer_prior_weights

log = logging.getLogger(__name__)


ZHEAD_INITS = ("default", "stage1_mean")


@torch.no_grad()
def mean_stage1_latent(pl_module: L.LightningModule, datamodule: Any, batches: int) -> torch.Tensor:
    """Mean ``z = enc(window)`` of the loaded Stage 1 encoder over the first training ``batches``.

    Reads a stream of its own (the training loader is untouched) under a forked RNG, so the training run
    draws exactly the same random numbers with and without this initialisation.
    """
    vla = pl_module.model
    device = pl_module.device
    total, count = None, 0
    with torch.random.fork_rng(devices=[]):
        for i, batch in enumerate(datamodule.make_stream("train")):
            if i >= batches:
                break
            as_tensor = {
                k: torch.as_tensor(batch[k]).to(device)
                for k in ("state", "action", "step_mask", "embodiment_id")
            }
            z = vla.target_latent(as_tensor)
            total = z.sum(0) if total is None else total + z.sum(0)
            count += z.shape[0]
    if not count:
        raise ValueError("ActionPriorTransfer: zhead_init=stage1_mean found no training window to encode")
    return total / count


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
        zhead_init: how the ``z'`` head starts when a prior is loaded: ``default`` (PyTorch's initialisation)
            or ``stage1_mean`` (``z'`` starts at the mean Stage 1 latent of ``zhead_init_batches`` training
            batches, see ``VLA.start_latent_head_at``). Only a fresh Stage 2 run is affected.
        zhead_init_batches: training batches encoded for the mean latent.
    """

    def __init__(
        self,
        stage1_ckpt: str | None = None,
        decay_steps: int = 5000,
        zhead_init: str = "default",
        zhead_init_batches: int = 4,
    ):
        super().__init__()
        if decay_steps < 1:
            raise ValueError(f"ActionPriorTransfer: decay_steps must be >= 1, got {decay_steps}")
        if zhead_init not in ZHEAD_INITS:
            raise ValueError(
                f"ActionPriorTransfer: zhead_init must be one of {ZHEAD_INITS}, got '{zhead_init}'"
            )
        self.stage1_ckpt = stage1_ckpt
        self.decay_steps = decay_steps
        self.zhead_init = zhead_init
        self.zhead_init_batches = max(1, int(zhead_init_batches))
        # The checkpoint already read by the CLI (so that a Stage 2 start reads the file once).
        self.stage1: StoredCheckpoint | None = None

    def aux_weight(self, pl_module: L.LightningModule, step: int) -> float:
        if pl_module.vla_config.action_prior != "stage1":
            return 0.0
        return lambda_schedule(step, self.decay_steps)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scratch = pl_module.vla_config.action_prior == "scratch"
        if scratch and self.stage1_ckpt:
            raise ValueError(
                f"ActionPriorTransfer: the no-prior baseline was configured (vla.action_prior: scratch) but a "
                f"Stage 1 checkpoint was given ({self.stage1_ckpt}); drop --stage1_ckpt or the baseline config"
            )
        if pl_module.prior_source is not None or trainer.ckpt_path is not None:
            # Resuming a Stage 2 run: its own checkpoint already holds the (fine-tuned) prior weights.
            log.info(
                "ActionPriorTransfer: resuming Stage 2 from %s; Stage 1 weights are not reloaded (prior: %s)",
                trainer.ckpt_path,
                pl_module.prior_source,
            )
        elif scratch:
            log.info("ActionPriorTransfer: no-prior baseline: decoder from scratch, lambda = 0")
        elif self.stage1_ckpt:
            self.load_into(pl_module, self.stage1 or StoredCheckpoint.read(self.stage1_ckpt))
            self.stage1 = None  # the weights are in the module now; do not hold a second copy
            if self.zhead_init == "stage1_mean":
                datamodule = getattr(trainer, "datamodule", None)
                if datamodule is None:
                    raise ValueError(
                        "ActionPriorTransfer: zhead_init=stage1_mean needs the trainer's DataModule"
                    )
                mean = mean_stage1_latent(pl_module, datamodule, self.zhead_init_batches)
                pl_module.model.start_latent_head_at(mean)
                log.info(
                    "ActionPriorTransfer: z' head starts at the mean Stage 1 latent (norm %.3f)", mean.norm()
                )
        else:
            raise ValueError(
                "ActionPriorTransfer: Stage 2 starts from the Stage 1 action prior, but no checkpoint was given: "
                "pass --stage1_ckpt PATH (`make stage1` writes runs/stage1/checkpoints/last.ckpt), or train the "
                "no-prior baseline with -c configs/ablations/no_prior.yaml"
            )
        pl_module.aux_weight = self.aux_weight(pl_module, trainer.global_step)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        pl_module.aux_weight = self.aux_weight(pl_module, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"decay_steps": self.decay_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
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
    def load_into(pl_module: L.LightningModule, stage1: StoredCheckpoint | str | Path) -> AdaptationReport:
        """Check the Stage 1 checkpoint against the module and copy its encoder and decoder weights.

        Embodiments are matched by name (:func:`~actionprior.models.adaptation.transfer_prior_weights`):
        the data may add robots the prior has never seen; they start from fresh projections.
        """
        if not isinstance(stage1, StoredCheckpoint):
            stage1 = StoredCheckpoint.read(stage1)
        stage1.expect_stage(1, "--stage1_ckpt")
        source = f"Stage 1 checkpoint '{stage1.source}'"
        # The checkpoint's embodiments may be a subset of the data's (a robot the prior has never seen);
        # the ones it knows must be the same robots with the same statistics.
        check_adaptable(
            stage1,
            source,
            registry=pl_module.registry,
            config=pl_module.prior_config,
            normalizer=pl_module.normalizer,
            allow_dropped=False,
        )
        # Copies in place, so optimizer state set up before fit start keeps its tensors.
        report = transfer_prior_weights(
            stage1.build_prior(), stage1.registry, pl_module.model.prior, pl_module.registry
        )
        pl_module.prior_source = stage1.source
        log.info(
            "ActionPriorTransfer: loaded encoder and decoder from %s: %s", stage1.source, report.summary()
        )
        if report.added:
            log.warning(
                "ActionPriorTransfer: embodiments %s are new to the Stage 1 prior: their projections and "
                "embeddings start fresh (the default init) and are learnt in Stage 2",
                report.added,
            )
        return report
