"""Stage 2 training: the VLA (VLM backbone -> z' -> action head) as a LightningModule.

Orchestration only; the model and its loss live in :mod:`actionprior.models.vla`, and the module assembles
the VLA with :meth:`~actionprior.models.vla.VLAConfig.build` (as checkpoints do). It computes
``L = L_pred + aux_weight * (L_align + L_recon)`` with ``aux_weight`` (the paper's lambda) set by the
:class:`~actionprior.training.transfer.ActionPriorTransfer` callback (always 0 for the scratch baseline: no
auxiliary branch), logs every term, aux_weight, the gradient norm, latent statistics and per-embodiment action
error, and configures AdamW with separate learning rates for the backbone and the action module. Any action
head registered in :mod:`actionprior.models.action_head` trains here unchanged.

Checkpoints are self-contained for inference: ``checkpoint["actionprior"]`` holds the Stage 1 payload
(head config, embodiments, normalisation + fingerprints, where the prior came from) plus a ``vla`` entry with
the VLA's settings, the camera order, the image contract and the backbone *spec* -- the text of the config,
tokenizer and image-processor files that ``save_pretrained`` writes (a few MB for a Qwen tokenizer). The
backbone weights are in the state dict, so :meth:`actionprior.checkpoint.StoredCheckpoint.build_vla` rebuilds
the VLA with no data, no hub and no local model directory. The spec is also written into the
hyperparameters, so ``VLAModule.load_from_checkpoint`` rebuilds the backbone from it instead of downloading.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from actionprior.checkpoint import (
    CHECKPOINT_KEY,
    CheckpointMismatchError,
    StoredCheckpoint,
    check_adaptable,
    check_compatible,
    checkpoint_payload,
    data_contract,
    read_policy,
)
from actionprior.data.images import ImageFit
from actionprior.models.action_prior import ActionPriorConfig
from actionprior.models.adaptation import AdaptationReport, copy_embodiment_linear, transfer_prior_weights
from actionprior.models.lora import copy_base_weights, frozen_fingerprint, merge_lora
from actionprior.models.vla import VLAConfig
from actionprior.training.action_scaling import ActionScaler
from actionprior.training.augment import random_shift
from actionprior.training.configs import as_head_config, as_vla_config, settings_dict
from actionprior.training.metrics import EmbodimentActionError
from actionprior.training.optim import adamw_warmup_cosine, param_groups, total_training_steps

log = logging.getLogger(__name__)

BATCH_KEYS = (
    "embodiment_id",
    "state",
    "action",
    "step_mask",
    "action_dim_mask",
    "images",
    "camera_mask",
    "instruction",
)
HISTORY_KEYS = ("history_state", "history_action", "history_mask")
# The VLA settings a policy and the run starting from it (--init_policy) must share: they shape the weights.
POLICY_ARCHITECTURE_KEYS = ("backbone", "num_queries", "head_hidden", "use_state", "use_history", "head")


class VLAModule(L.LightningModule):
    """Stage 2. ``embodiments``/``normalization`` are linked from the DataModule by the CLI.

    Args:
        vla: the VLA's settings (:class:`~actionprior.models.vla.VLAConfig`: backbone, queries, history, and
            ``action_prior``: ``stage1`` or the ``scratch`` baseline).
        prior: the action prior's settings (the action head ``vla.head: action_prior``, the default). Leave unset
            to take them from the Stage 1 checkpoint (the CLI reads ``--stage1_ckpt``, or the checkpoint being
            resumed, before building the module); when set together with a checkpoint, its architecture must
            equal the checkpoint's. The ``scratch`` baseline without ``prior`` uses
            :class:`~actionprior.models.action_prior.ActionPriorConfig`'s defaults, which are Stage 1's.
        head: the settings of any other registered action head (``vla.head``), a mapping or its config object;
            unset: the head's defaults.
        chunk_len: actions per chunk (the CLI links it from ``data.chunk_len``).
        lr: learning rate of the action module (action head, queries, latent head); lr_backbone: of the backbone.
        weight_decay, betas, warmup_steps, min_lr_ratio: AdamW + warmup + cosine (see training/optim.py).
        freeze_backbone, freeze_encoder, freeze_decoder: exclude a component from training (the encoder and
            decoder of the action prior; refused for a head without that part).
        train_error_every_n_steps: how often to sample chunks on a training batch for the per-embodiment
            action error (0 = never; validation always reports it).
        val_seed: seeds validation noise so validation numbers are comparable between runs.
        camera_names: the camera order of ``images`` (stored for inference).
        embodiments: ``EmbodimentRegistry.to_dicts()``; normalization: ``Normalizer.to_dict()``.
        backbone_spec: internal -- filled from a checkpoint to rebuild the backbone offline.
    """

    def __init__(
        self,
        vla: VLAConfig | None = None,
        prior: ActionPriorConfig | None = None,
        head: dict[str, Any] | None = None,
        chunk_len: int = 16,
        lr: float = 3e-4,
        lr_backbone: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.1,
        freeze_backbone: bool = False,
        freeze_encoder: bool = False,
        freeze_decoder: bool = False,
        train_error_every_n_steps: int = 50,
        image_shift: int = 0,
        val_seed: int = 0,
        camera_names: list[str] | None = None,
        embodiments: list[dict] | None = None,
        normalization: dict | None = None,
        backbone_spec: dict | None = None,
    ):
        super().__init__()
        vla = as_vla_config(vla)
        settings = as_head_config(vla, prior, head)
        if settings is None:
            if vla.action_prior != "scratch":
                raise ValueError(
                    "VLAModule: the action prior's settings are not set. Pass --stage1_ckpt to take them from "
                    "the Stage 1 checkpoint, or train the no-prior baseline (-c configs/ablations/no_prior.yaml)"
                )
            settings = ActionPriorConfig()
        hparams = {
            k: v for k, v in locals().items() if k not in ("self", "__class__", "backbone_spec", "settings")
        }
        # Plain containers only: checkpoints are read back with torch.load(weights_only=True).
        key = "prior" if isinstance(settings, ActionPriorConfig) else "head"
        self.save_hyperparameters({**hparams, "vla": vla.to_dict(), key: settings_dict(settings)})
        self.vla_config = vla
        self.registry, self.normalizer = data_contract(embodiments, normalization, "VLAModule")
        self.head_config = settings.bind(self.registry, chunk_len)
        # From a checkpoint (backbone_spec): no hub, the weights come from the state dict.
        if freeze_backbone and vla.lora is not None:
            raise ValueError(
                "VLAModule: freeze_backbone and vla.lora are both set: LoRA already freezes the backbone's own "
                "weights and trains its adapters; set freeze_backbone: false (or drop vla.lora)"
            )
        # A LoRA checkpoint leaves the frozen base out: its backbone is loaded from its source (and checked
        # against the checkpoint's fingerprint in on_load_checkpoint), not rebuilt with random weights.
        self.model = vla.build(self.head_config, None if vla.lora is not None else backbone_spec)
        # With LoRA, checkpoints leave the frozen backbone weights out and name their base instead: the
        # backbone's source, or the policy this run started from (--init_policy), and a fingerprint.
        self.init_policy: str | None = None
        self._base_fingerprint: str | None = None
        for flag, owner, part in (
            (freeze_backbone, self.model, "backbone"),
            (freeze_encoder, self.model.head, "encoder"),
            (freeze_decoder, self.model.head, "decoder"),
        ):
            if flag:
                if not isinstance(getattr(owner, part, None), nn.Module):
                    raise ValueError(f"VLAModule: freeze_{part}: the action head '{vla.head}' has no {part}")
                getattr(owner, part).requires_grad_(False)
        self.camera_names = list(camera_names) if camera_names is not None else None
        # What inference must reproduce of the data pipeline; filled from the DataModule in setup().
        self.image_size: int | None = None
        self.image_fit: ImageFit | None = None
        self.history_len: int | None = None
        self.scaler = ActionScaler(self.normalizer, self.registry.max_action_dim)
        self.val_error = EmbodimentActionError(self.registry.names)
        self.train_error = EmbodimentActionError(self.registry.names)
        # The Stage 1 checkpoint whose weights the action prior started from (None: not loaded, or scratch).
        # Set by ActionPriorTransfer.load_into, kept in this module's checkpoints.
        self.prior_source: str | None = None
        # The weight of L_align + L_recon (the paper's lambda); the ActionPriorTransfer callback sets it before
        # every batch. Always 0 for the scratch baseline: no auxiliary branch.
        self.aux_weight: float = 0.0

    def on_fit_start(self) -> None:
        # The no-prior choice is the model's, not only the callback's: a prior run whose prior was never loaded
        # would otherwise train with a random decoder and aux_weight annealing towards a random encoder.
        if self.vla_config.action_prior == "stage1" and self.prior_source is None:
            raise ValueError(
                "VLAModule: vla.action_prior is 'stage1' but no Stage 1 weights were loaded: pass --stage1_ckpt "
                "(with the ActionPriorTransfer callback), or set vla.action_prior: scratch for the no-prior baseline"
            )
        if self.vla_config.action_prior == "scratch" and self.prior_source is not None:
            raise ValueError(
                f"VLAModule: vla.action_prior is 'scratch' but Stage 1 weights were loaded from {self.prior_source}"
            )

    def setup(self, stage: str) -> None:
        # The camera order, image size and history length the model is trained on travel in the checkpoint,
        # so a Policy rebuilt from it feeds observations exactly as training did.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        cameras = list(datamodule.camera_names)
        if self.camera_names is None:
            self.camera_names = cameras
        elif self.camera_names != cameras:
            raise ValueError(
                f"model.camera_names {self.camera_names} differ from the DataModule's cameras {cameras}; "
                "drop model.init_args.camera_names or set data.camera_names to the same order"
            )
        self.image_size = getattr(datamodule, "image_size", None)
        self.image_fit = getattr(datamodule, "image_fit", None)
        self.history_len = getattr(datamodule, "history_len", None)

    # ------------------------------------------------------------------ steps
    def _check_batch(self, batch: Mapping[str, Any]) -> None:
        needed = BATCH_KEYS + (HISTORY_KEYS if self.vla_config.use_history else ())
        needed += ("current_state",) if self.vla_config.use_state else ()
        missing = [k for k in needed if k not in batch]
        if missing:
            raise KeyError(
                f"Stage 2 batch lacks keys {missing}; it has {sorted(batch)} "
                "(use the DataModule's observation view; see docs/contracts.md)"
            )
        if batch["action"].shape[1] != self.head_config.chunk_len:
            raise ValueError(
                f"batch chunks have {batch['action'].shape[1]} steps but the action head predicts "
                f"chunk_len={self.head_config.chunk_len}; set data.chunk_len and model chunk_len alike"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._check_batch(batch)
        if self.hparams.image_shift:
            batch = {**batch, "images": random_shift(batch["images"], self.hparams.image_shift)}
        aux_weight = float(self.aux_weight) if self.vla_config.action_prior == "stage1" else 0.0
        out = self.model.loss(batch, aux_weight, self.vla_config.history_mode)
        b = batch["action"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=b)
        self.log("train/pred_loss", out.pred, prog_bar=True, batch_size=b)
        self.log("train/aux_weight", aux_weight, batch_size=b)
        if out.align is not None:
            self.log("train/align_loss", out.align, batch_size=b)
            self.log("train/recon_loss", out.recon, batch_size=b)
        if out.pred_no_history is not None:
            self.log("train/pred_loss_no_history", out.pred_no_history, batch_size=b)
        z = out.z_pred
        self.log("train/zpred_std", z.std(0).mean() if b > 1 else z.new_zeros(()), batch_size=b)
        self.log("train/zpred_norm", z.norm(dim=-1).mean(), batch_size=b)
        every = self.hparams.train_error_every_n_steps
        if every and self.global_step % every == 0:
            self._log_action_error(batch, z, self.train_error, "train")
        return out.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After backward, before clipping: the raw norm, overall and per component.
        for name, module in (
            ("", self.model),
            ("_backbone", self.model.backbone),
            ("_prior", self.model.head),  # the tag keeps its name: runs are compared by it
        ):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:
                self.log(f"train/grad_norm{name}", torch.nn.utils.get_total_norm(grads))

    @torch.no_grad()
    def _log_action_error(
        self, batch: Mapping[str, Any], z_pred: Tensor, metric: EmbodimentActionError, stage: str
    ):
        eid, action, step_mask = batch["embodiment_id"], batch["action"], batch["step_mask"]
        pred = self.model.head.sample(z_pred, eid, step_mask=step_mask)
        metric.update(
            self.scaler.unnormalize(pred, eid),
            self.scaler.unnormalize(action, eid),
            self.scaler.mean_chunk(eid, action.shape[1]),
            eid,
            step_mask,
            batch["action_dim_mask"],
        )
        if stage == "train":
            for key, value in metric.compute().items():
                self.log(f"train/{key}", value)
            metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._check_batch(batch)
        # Seeded so that flow noise, flow times and sampling noise are the same in every validation run.
        with torch.random.fork_rng(devices=[batch["action"].device] if batch["action"].is_cuda else []):
            torch.manual_seed(self.hparams.val_seed + batch_idx)
            out = self.model.loss(batch, 0.0, "exact")
            self._log_action_error(batch, out.z_pred, self.val_error, "val")
        self.log(
            "val/pred_loss", out.pred, prog_bar=True, batch_size=batch["action"].shape[0], sync_dist=True
        )

    def on_validation_epoch_end(self) -> None:
        for key, value in self.val_error.compute().items():
            self.log(f"val/{key}", value, prog_bar=key == "mae_ratio")
        self.val_error.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        vla = self.model
        heads = nn.ModuleDict({"latent_head": vla.latent_head})
        if vla.history_proj is not None:
            heads["history_proj"] = vla.history_proj
        if vla.state_token is not None:
            heads["state_token"] = vla.state_token
        groups = (
            param_groups(vla.backbone, h.weight_decay, lr=h.lr_backbone, name="backbone")
            + param_groups(vla.head, h.weight_decay, lr=h.lr, name="action_prior")
            + param_groups(heads, h.weight_decay, lr=h.lr, name="heads")
        )
        # Learned tokens are not weight-decayed (decay would only pull them towards zero).
        groups.append({"params": [vla.queries], "weight_decay": 0.0, "lr": h.lr, "name": "queries/no_decay"})
        grouped = {id(p) for g in groups for p in g["params"]}
        stray = [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in grouped]
        if stray:  # a new trainable parameter must be given a learning rate on purpose
            raise RuntimeError(f"trainable parameters missing from the optimiser groups: {stray[:5]}")
        return adamw_warmup_cosine(
            groups,
            lr=h.lr,
            total_steps=total_training_steps(self.trainer),
            warmup_steps=h.warmup_steps,
            min_lr_ratio=h.min_lr_ratio,
            betas=tuple(h.betas),
        )

    # ------------------------------------------------------------------ starting from a policy
    def init_from_policy(self, stored: StoredCheckpoint | str | Path) -> AdaptationReport:
        """Start from a trained Stage 2 policy (``--init_policy``: an exported folder or a Stage 2 checkpoint).

        Every weight is the policy's (LoRA adapters of a checkpoint merged in first; this run's own adapters,
        if any, start fresh on top, i.e. as the identity). Embodiments are matched by name as ``--init_from``
        does in Stage 1: robots the policy knows keep their projections (and, through ``data.stats_from``,
        their statistics), new ones start fresh. The VLA's architecture and the action head's must match.
        """
        if not isinstance(stored, StoredCheckpoint):
            stored = read_policy(stored)
        source = f"--init_policy '{stored.source}'"
        theirs = VLAConfig.from_dict(stored.vla_settings["config"])
        differ = [
            f"vla.{k} is {getattr(theirs, k)!r} in the policy but {getattr(self.vla_config, k)!r} here"
            for k in POLICY_ARCHITECTURE_KEYS
            if getattr(theirs, k) != getattr(self.vla_config, k)
        ]
        if differ:
            raise CheckpointMismatchError(
                f"{source} is incompatible with this configuration: {'; '.join(differ)}"
            )
        check_adaptable(stored, source, self.registry, self.head_config, normalizer=self.normalizer)
        origin = stored.build_vla()
        merge_lora(origin)
        report = transfer_prior_weights(origin.head, stored.registry, self.model.head, self.registry)
        copy_base_weights(self.model.backbone, origin.backbone.state_dict())
        if self.model.state_token is not None:
            copy_embodiment_linear(
                origin.state_token.project, stored.registry, self.model.state_token.project, self.registry
            )
        mine, given = self.model.state_dict(keep_vars=True), origin.state_dict()
        with torch.no_grad():
            for key, tensor in mine.items():
                if key.startswith(("backbone.", "head.", "state_token.project.")):
                    continue
                if key not in given or given[key].shape != tensor.shape:
                    raise CheckpointMismatchError(
                        f"{source}: '{key}' is missing or shaped differently in the policy"
                    )
                tensor.copy_(given[key])
        self.init_policy = stored.source
        self.prior_source = stored.prior_source or stored.source
        self._base_fingerprint = None  # the base weights are the policy's now
        log.info("Stage 2: initialised from the policy %s: %s", stored.source, report.summary())
        log.info(
            "Stage 2: normalisation statistics of %s are the policy's; %s take the data's",
            report.kept,
            report.added or "no other embodiment",
        )
        if report.added:
            log.warning(
                "Stage 2: embodiments %s are new to the policy: their projections start fresh", report.added
            )
        return report

    # ------------------------------------------------------------------ checkpoints
    def vla_settings(self) -> dict[str, Any]:
        return {
            "config": self.vla_config.to_dict(),
            "camera_names": self.camera_names,
            "image_size": self.image_size,
            "image": self.image_fit.to_dict() if self.image_fit is not None else None,
            "history_len": self.history_len,
            "backbone_spec": self.model.backbone.export_spec(),
        }

    def base_reference(self) -> dict[str, Any]:
        """What a LoRA checkpoint's adapters were trained on: the frozen backbone weights it leaves out."""
        if self._base_fingerprint is None:  # the base is frozen: computed once
            self._base_fingerprint = frozen_fingerprint(self.model.backbone)
        return {
            "backbone": self.vla_config.backbone,
            "init_policy": self.init_policy,
            "fingerprint": self._base_fingerprint,
        }

    def _frozen_backbone_keys(self) -> list[str]:
        return [
            f"model.backbone.{name}"
            for name, p in self.model.backbone.named_parameters(remove_duplicate=False)
            if not p.requires_grad
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        settings = self.vla_settings()
        if self.vla_config.lora is not None:
            state = checkpoint.get("state_dict", {})
            omitted = [k for k in self._frozen_backbone_keys() if k in state]
            for key in omitted:
                del state[key]
            settings["lora_base"] = self.base_reference() | {"omitted": len(omitted)}
        if self.init_policy is not None:
            settings["init_policy"] = self.init_policy
        payload = checkpoint_payload(
            self.head_config, self.registry, self.normalizer, settings, self.prior_source
        )
        checkpoint[CHECKPOINT_KEY] = payload
        # So that load_from_checkpoint rebuilds the backbone from the stored spec, not from the hub.
        checkpoint.setdefault("hyper_parameters", {})["backbone_spec"] = payload["vla"]["backbone_spec"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = "the Stage 2 checkpoint being resumed (--ckpt_path)"
        stored = StoredCheckpoint.from_dict(checkpoint, source).expect_stage(2, "Stage 2 resume")
        check_compatible(
            stored.payload,
            source,
            registry=self.registry,
            normalizer=self.normalizer,
            config=self.head_config,
        )
        mine, theirs = self.vla_config.to_dict(), VLAConfig.from_dict(stored.vla_settings["config"]).to_dict()
        differ = [
            f"vla.{k} is {theirs.get(k)!r} in the checkpoint but {mine[k]!r} here"
            for k in mine
            if theirs.get(k) != mine[k]
        ]
        if differ:
            raise CheckpointMismatchError(
                f"{source} is incompatible with this configuration: {'; '.join(differ)}"
            )
        base = stored.vla_settings.get("lora_base")
        if base is not None:
            self._fill_lora_base(checkpoint, base, source)
        self.prior_source = stored.prior_source
        self.init_policy = self.init_policy or stored.vla_settings.get("init_policy")

    def _fill_lora_base(self, checkpoint: dict[str, Any], base: Mapping[str, Any], source: str) -> None:
        """Put this module's frozen backbone weights into a LoRA checkpoint's state dict (which leaves them
        out), after checking they are the weights its adapters were trained on."""
        mine = self.base_reference()
        if base.get("init_policy") and base.get("init_policy") != mine["init_policy"]:
            raise CheckpointMismatchError(
                f"{source}: its LoRA base weights come from the policy {base['init_policy']}: pass "
                f"--init_policy {base['init_policy']} to resume it"
            )
        if base.get("fingerprint") != mine["fingerprint"]:
            raise CheckpointMismatchError(
                f"{source}: its LoRA adapters were trained on other base weights (fingerprint "
                f"{base.get('fingerprint')} of {base.get('backbone')!r}) than this model's ({mine['fingerprint']} "
                f"of {mine['backbone']!r})"
            )
        own = self.state_dict()
        state = checkpoint.setdefault("state_dict", {})
        for key in self._frozen_backbone_keys():
            state.setdefault(key, own[key])
