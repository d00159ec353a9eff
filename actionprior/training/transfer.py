"""Stage 1 -> Stage 2: load the action prior into the VLA and anneal the auxiliary weight ``aux_weight``.

:class:`ActionPriorTransfer` is the only place where Stage 1 weights enter Stage 2:

* on fit start of a *fresh* Stage 2 run it takes the Stage 1 checkpoint (read once, by the CLI, or here
  when used from Python), refuses it (naming every difference) unless the prior's architecture matches the
  VLA's and every embodiment it knows is in the data with the same dims and normalisation statistics, and
  copies the encoder and decoder tensors in (robots new to the prior get fresh projections; the log says so);
* before every training batch it sets ``aux_weight = max(0, 1 - k / decay_steps)`` on the module (the
  paper's lambda(k), with ``decay_steps`` its N_decay), ``k`` the number of optimizer steps taken so far
  (``trainer.global_step``), so gradient accumulation does not change the schedule;
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
from actionprior.models.action_prior import ActionPrior
from actionprior.models.adaptation import AdaptationReport, transfer_prior_weights

log = logging.getLogger(__name__)


LATENT_HEAD_INITS = ("default", "stage1_mean")


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
        raise ValueError(
            "ActionPriorTransfer: latent_head_init=stage1_mean found no training window to encode"
        )
    return total / count


def aux_weight_schedule(step: int, decay_steps: int) -> float:
    """``aux_weight`` at optimizer step ``step``: ``max(0, 1 - step / decay_steps)``, 1 at the first step, 0
    from ``decay_steps`` on (the paper's lambda(k) with N_decay = ``decay_steps``)."""
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
    return max(0.0, 1.0 - step / decay_steps)


class ActionPriorTransfer(Callback):
    """Loads the Stage 1 prior into a :class:`~actionprior.training.vla_module.VLAModule` and anneals
    ``aux_weight``.

    Args:
        stage1_ckpt: the Stage 1 checkpoint (``--stage1_ckpt`` on the CLI sets it).
        decay_steps: the optimizer step at which ``aux_weight`` reaches 0 (the paper's N_decay: 5000).
        latent_head_init: how the latent head (the ``z'`` head) starts when a prior is loaded: ``default``
            (PyTorch's initialisation) or ``stage1_mean`` (``z'`` starts at the mean Stage 1 latent of
            ``latent_head_init_batches`` training batches, see ``VLA.start_latent_head_at``). Only a fresh Stage 2
            run is affected.
        latent_head_init_batches: training batches encoded for the mean latent.
        zhead_init, zhead_init_batches: deprecated names of the two above (accepted with a warning).
    """

    def __init__(
        self,
        stage1_ckpt: str | None = None,
        decay_steps: int = 5000,
        latent_head_init: str = "default",
        latent_head_init_batches: int = 4,
        zhead_init: str | None = None,
        zhead_init_batches: int | None = None,
    ):
        super().__init__()
        for old, new, value in (
            ("zhead_init", "latent_head_init", zhead_init),
            ("zhead_init_batches", "latent_head_init_batches", zhead_init_batches),
        ):
            if value is not None:
                log.warning("ActionPriorTransfer: %s is deprecated, use %s (same meaning)", old, new)
        latent_head_init = zhead_init if zhead_init is not None else latent_head_init
        if zhead_init_batches is not None:
            latent_head_init_batches = zhead_init_batches
        if decay_steps < 1:
            raise ValueError(f"ActionPriorTransfer: decay_steps must be >= 1, got {decay_steps}")
        if latent_head_init not in LATENT_HEAD_INITS:
            raise ValueError(
                f"ActionPriorTransfer: latent_head_init must be one of {LATENT_HEAD_INITS}, got '{latent_head_init}'"
            )
        self.stage1_ckpt = stage1_ckpt
        self.decay_steps = decay_steps
        self.latent_head_init = latent_head_init
        self.latent_head_init_batches = max(1, int(latent_head_init_batches))
        # The checkpoint already read by the CLI (so that a Stage 2 start reads the file once).
        self.stage1: StoredCheckpoint | None = None

    def aux_weight(self, pl_module: L.LightningModule, step: int) -> float:
        if pl_module.vla_config.action_prior != "stage1":
            return 0.0
        return aux_weight_schedule(step, self.decay_steps)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scratch = pl_module.vla_config.action_prior == "scratch"
        if scratch and self.stage1_ckpt:
            raise ValueError(
                f"ActionPriorTransfer: the no-prior baseline was configured (vla.action_prior: scratch) but a "
                f"Stage 1 checkpoint was given ({self.stage1_ckpt}); drop --stage1_ckpt or the baseline config"
            )
        policy = getattr(pl_module, "init_policy", None)
        if policy is not None and trainer.ckpt_path is None:
            log.info(
                "ActionPriorTransfer: starting from the policy %s; its action head is kept (prior: %s)",
                policy,
                pl_module.prior_source,
            )
        elif pl_module.prior_source is not None or trainer.ckpt_path is not None:
            # Resuming a Stage 2 run: its own checkpoint already holds the (fine-tuned) prior weights.
            log.info(
                "ActionPriorTransfer: resuming Stage 2 from %s; Stage 1 weights are not reloaded (prior: %s)",
                trainer.ckpt_path,
                pl_module.prior_source,
            )
        elif scratch:
            log.info("ActionPriorTransfer: no-prior baseline: action head from scratch, aux_weight = 0")
        elif self.stage1_ckpt:
            self.load_into(pl_module, self.stage1 or StoredCheckpoint.read(self.stage1_ckpt))
            self.stage1 = None  # the weights are in the module now; do not hold a second copy
            if self.latent_head_init == "stage1_mean":
                datamodule = getattr(trainer, "datamodule", None)
                if datamodule is None:
                    raise ValueError(
                        "ActionPriorTransfer: latent_head_init=stage1_mean needs the trainer's DataModule"
                    )
                mean = mean_stage1_latent(pl_module, datamodule, self.latent_head_init_batches)
                pl_module.model.start_latent_head_at(mean)
                log.info(
                    "ActionPriorTransfer: the latent (z') head starts at the mean Stage 1 latent (norm %.3f)",
                    mean.norm(),
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
        if not isinstance(pl_module.model.head, ActionPrior):
            raise ValueError(
                f"ActionPriorTransfer: the VLA's action head '{pl_module.vla_config.head}' is not the action "
                "prior; a Stage 1 checkpoint cannot be loaded into it"
            )
        source = f"Stage 1 checkpoint '{stage1.source}'"
        # The checkpoint's embodiments may be a subset of the data's (a robot the prior has never seen);
        # the ones it knows must be the same robots with the same statistics.
        check_adaptable(
            stage1,
            source,
            registry=pl_module.registry,
            config=pl_module.head_config,
            normalizer=pl_module.normalizer,
            allow_dropped=False,
        )
        # Copies in place, so optimizer state set up before fit start keeps its tensors.
        report = transfer_prior_weights(
            stage1.build_prior(), stage1.registry, pl_module.model.head, pl_module.registry
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
