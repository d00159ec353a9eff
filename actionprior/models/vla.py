"""The vision-language-action model: VLM backbone -> latent ``z'`` -> action head -> action chunk.

The VLM reads the camera frames, the instruction, an optional state token, an optional history token
(``z_hist``, the Stage 1 encoder's summary of the past state/action window, projected to the VLM width) and
``Q`` learned query tokens. The *latent head* (an MLP) maps the query tokens' final hidden states to ``z'``; the
*action head* turns ``z'`` into an action chunk. The action head is reached only through the protocol of
:mod:`actionprior.models.action_head`; the paper's is the Stage 1 prior (its flow decoder samples the chunk,
its encoder gives the alignment target ``z = enc(ground-truth window)`` during the early, distillation part
of training). :meth:`VLAConfig.build` is the one place a VLA is assembled, for training and from checkpoints.

Loss (paper): ``L = L_pred + aux_weight * (L_align + L_recon)``, ``aux_weight`` being the paper's lambda, with

* ``L_pred``  = the head's loss conditioned on ``z'`` (the decoder's flow-matching loss for the prior);
* ``L_align`` = ``||z' - sg(z)||^2``, as a mean over latent dims (``z`` is layer-normalised, so this is
  on the same scale for any ``latent_dim``) and over the batch;
* ``L_recon`` = the head's loss conditioned on ``z`` (keeps the encoder/decoder pair a prior).

The auxiliary terms and the history token need a head with a latent (``encode``).

With history, the objective is ``(L(z_hist) + L(no history)) / 2``. ``history_mode="exact"`` runs both
passes (one VLM forward over the batch stacked twice, then one flow loss per pass). ``L_recon`` does not
depend on the pass, so it is computed once: the result equals the mean of the two full per-pass losses
whenever both passes would use the same recon noise draw. ``history_mode="stochastic"`` is a cheaper
approximation: one pass in which each sample's history token is dropped with probability 0.5 (the same
objective in expectation, with more variance). "No history" means the history token is hidden from
attention, which is equivalent to leaving it out of the sequence.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actionprior.models.action_head import (
    ActionHead,
    can_compile,
    can_guide,
    has_latent,
    head_type,
    refuse_unknown_keys,
)
from actionprior.models.backbones import VLMBackbone
from actionprior.models.lora import LoRAConfig, apply_lora, check_quantize_available, quantization_config
from actionprior.models.rtc import RTCGuide
from actionprior.models.state_token import StateToken

HistoryMode = Literal["exact", "stochastic"]
HISTORY_MODES = ("exact", "stochastic")
PriorInit = Literal["stage1", "scratch"]
PRIOR_INITS = ("stage1", "scratch")


@dataclass
class VLAConfig:
    """The VLA's settings besides the action head's: each field is one YAML key (``model.init_args.vla.<field>``).

    Args:
        backbone: hub id, local ``save_pretrained`` directory or ``tiny:<family>``.
        attn_implementation: ``auto`` = flash_attention_2 on CUDA when installed, else ``sdpa``.
        gradient_checkpointing: recompute the backbone's activations in backward (memory for compute).
        backbone_dtype: e.g. ``bfloat16`` to load a large backbone in half precision (None = as stored).
        num_queries: Q learned query tokens appended after image, instruction (and history) tokens.
        head_hidden: hidden width of the latent head (the MLP from the query hidden states to ``z'``).
        use_state: feed the current proprioceptive state as one token (:mod:`actionprior.models.state_token`).
            Not in the paper's VLA; checkpoints written before this setting existed are read as False.
        use_history: feed ``z_hist`` (encoder on the history window) as one token.
        history_mode: ``exact`` = the paper's ``(L(z_hist) + L(none)) / 2`` with both passes;
            ``stochastic`` = one pass, history token dropped per sample with p = 0.5 (cheaper, noisier).
        action_prior: ``stage1`` = the action head starts from a Stage 1 checkpoint and is annealed towards
            it (aux_weight > 0); ``scratch`` = the paper's no-prior baseline (head from scratch, aux_weight = 0).
            Training refuses to start when this choice and the given checkpoint disagree.
        head: the registered name of the action head (:mod:`actionprior.models.action_head`); its settings
            are ``model.init_args.prior`` for ``action_prior`` (the default), ``model.init_args.head`` otherwise.
            ``module:name`` imports ``module`` first (the file that registers a head of your own; a config is
            trusted) and keeps ``name``; a stored config (a checkpoint) must give the bare name.
        lora: LoRA adapters on the backbone (:class:`~actionprior.models.lora.LoRAConfig`; its weights frozen,
            the action module trained fully); None = the backbone trains (or is frozen) as a whole.
    """

    backbone: str = "tiny:qwen3_vl"
    attn_implementation: str = "auto"
    gradient_checkpointing: bool = False
    backbone_dtype: str | None = None
    num_queries: int = 4
    head_hidden: int = 256
    use_state: bool = False
    use_history: bool = False
    history_mode: HistoryMode = "exact"
    action_prior: PriorInit = "stage1"
    head: str = "action_prior"
    lora: LoRAConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lora, Mapping):
            self.lora = LoRAConfig.from_dict(self.lora)
        if ":" in self.head:  # a user's config: import the module that registers the head
            module, _, self.head = self.head.partition(":")
            importlib.import_module(module)
        problems = []
        if self.history_mode not in HISTORY_MODES:
            problems.append(f"history_mode must be one of {HISTORY_MODES}, got '{self.history_mode}'")
        if self.action_prior not in PRIOR_INITS:
            problems.append(f"action_prior must be one of {PRIOR_INITS}, got '{self.action_prior}'")
        for name in ("num_queries", "head_hidden"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid VLAConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VLAConfig:
        refuse_unknown_keys(cls, data)
        # A stored config is untrusted: it never chooses a module to import.
        if ":" in str(data.get("head", "")):
            raise ValueError(
                f"a stored VLA config names its action head by its registered name, got {data['head']!r}"
            )
        # Checkpoints and exports written before the state token existed were trained without it.
        return cls(**{"use_state": False, **data})

    def build(
        self,
        head_config: Any,
        backbone_spec: Mapping[str, Any] | None = None,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool | None = None,
    ) -> VLA:
        """The VLA of these settings: the one place it is assembled (``VLAModule`` and
        :meth:`~actionprior.checkpoint.StoredCheckpoint.build_vla`).

        ``head_config``: the bound config of the head named by :attr:`head`. ``backbone_spec``: rebuild the
        backbone offline from a checkpoint's spec (its weights come from the state dict) instead of loading
        :attr:`backbone`. ``attn_implementation`` / ``gradient_checkpointing`` override the settings' own.
        """
        kind = head_type(self.head)
        if self.action_prior == "stage1" and kind.name != "action_prior":
            raise ValueError(
                f"vla.head '{self.head}' is not the Stage 1 action prior: set vla.action_prior: scratch"
            )
        attn = attn_implementation or self.attn_implementation
        checkpointing = (
            self.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
        )
        quantize = None
        if self.lora is not None:
            check_quantize_available(self.lora)  # QLoRA refuses here, before any weight is loaded
            quantize = quantization_config(self.lora) if self.lora.quantize else None
        if backbone_spec is not None:
            if quantize is not None:
                raise ValueError(
                    "vla.lora.quantize: a QLoRA backbone is loaded from its source (hub id or directory), "
                    "not rebuilt from a checkpoint's spec"
                )
            backbone = VLMBackbone.from_spec(dict(backbone_spec), attn, checkpointing)
        else:
            backbone = VLMBackbone.from_pretrained(
                self.backbone,
                attn,
                checkpointing,
                torch_dtype=self.backbone_dtype,
                quantization_config=quantize,
            )
        if self.lora is not None:
            apply_lora(backbone.model, self.lora, self.backbone)
        return VLA.from_config(backbone, kind.build(kind.config_from(head_config)), self)


@dataclass
class VLALoss:
    """The loss and its terms; ``align``/``recon`` are None when the auxiliary branch was not computed."""

    loss: Tensor
    pred: Tensor
    align: Tensor | None
    recon: Tensor | None
    z_pred: Tensor  # z' of the (first) pass, detached, for logging latent statistics
    pred_no_history: Tensor | None = None  # L_pred of the no-history pass (exact history mode)


class VLA(nn.Module):
    """VLM backbone + latent head + action head (see the module docstring)."""

    def __init__(
        self,
        backbone: VLMBackbone,
        head: ActionHead,
        num_queries: int = 1,
        use_history: bool = False,
        head_hidden: int = 512,
        use_state: bool = False,
    ):
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        if use_history and not has_latent(head):
            raise ValueError(
                f"the history token needs an action head with a latent (encode); {type(head).__name__} has "
                "none: set vla.use_history: false"
            )
        self.backbone = backbone
        self.head = head
        self.num_queries = num_queries
        self.use_history = use_history
        self.use_state = use_state
        width, latent = backbone.hidden_size, head.cond_dim
        # Query tokens start at the scale of typical token embeddings so they do not dominate attention.
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.latent_head = nn.Sequential(
            nn.LayerNorm(num_queries * width),
            nn.Linear(num_queries * width, head_hidden),
            nn.GELU(),
            nn.Linear(head_hidden, latent),
        )
        # z from the Stage 1 encoder is layer-normalised without affine; z' gets the same normalisation so
        # the decoder is always conditioned on latents from the distribution it was trained on.
        self.latent_norm = nn.LayerNorm(latent, elementwise_affine=False)
        self.history_proj = (
            nn.Sequential(nn.Linear(latent, width), nn.GELU(), nn.Linear(width, width))
            if use_history
            else None
        )
        c = head.config
        self.state_token = StateToken(c.state_dims, c.max_state_dim, width) if use_state else None

    @classmethod
    def from_config(cls, backbone: VLMBackbone, head: ActionHead, config: VLAConfig) -> VLA:
        return cls(
            backbone, head, config.num_queries, config.use_history, config.head_hidden, config.use_state
        )

    @torch.no_grad()
    def start_latent_head_at(self, latent: Tensor) -> None:
        """Make ``z'`` start at ``latent`` for every observation: last layer weight 0, bias ``latent``.

        A freshly initialised head puts ``z'`` at an arbitrary point of the latent space, where the Stage 1
        decoder's loss is high; starting at the mean Stage 1 latent is the closest observation-independent
        guess. Like adaLN-zero, the zero weight still receives gradient, so the head learns from step 0.
        """
        last = self.latent_head[-1]
        if latent.shape != last.bias.shape:
            raise ValueError(
                f"latent head start: expected shape {tuple(last.bias.shape)}, got {tuple(latent.shape)}"
            )
        last.weight.zero_()
        last.bias.copy_(latent.to(last.bias))

    # ------------------------------------------------------------------ pieces
    @property
    def latent_dim(self) -> int:
        """The width of ``z'`` (the action head's ``cond_dim``)."""
        return self.head.cond_dim

    @property
    def chunk_len(self) -> int:
        return int(self.head.config.chunk_len)

    @property
    def can_guide(self) -> bool:
        """The action head can continue a previous chunk (``rtc`` execution)."""
        return can_guide(self.head)

    def compile_sampler(self, **options: Any) -> None:
        """Compile the action head's sampling loop (refused, in one line, by a head without one)."""
        if not can_compile(self.head):
            raise ValueError(
                f"action head {type(self.head).__name__} has no compiled sampler (compile_sampler)"
            )
        self.head.compile_sampler(**options)

    def eager_sampler(self) -> None:
        if can_compile(self.head):
            self.head.eager_sampler()

    def _encode(self, state: Tensor | None, action: Tensor, mask: Tensor, embodiment_id: Tensor) -> Tensor:
        if not has_latent(self.head):
            raise ValueError(
                f"action head {type(self.head).__name__} has no latent (encode): the auxiliary terms and the "
                "history token need one (aux_weight 0, vla.use_history: false)"
            )
        return self.head.encode(state, action, mask, embodiment_id)

    def history_latent(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """``z_hist [B, latent]`` from the history window and ``has_history [B]`` (any real past step)."""
        for key in ("history_state", "history_action", "history_mask"):
            if key not in batch:
                raise KeyError(
                    f"use_history is on but the batch has no '{key}' (set history_len > 0 in the data)"
                )
        mask = batch["history_mask"].bool()
        z_hist = self._encode(batch["history_state"], batch["history_action"], mask, batch["embodiment_id"])
        return z_hist, mask.any(dim=1)

    def target_latent(self, batch: Mapping[str, Any]) -> Tensor:
        """``z = enc(ground-truth window)``: the alignment target and the reconstruction condition."""
        return self._encode(
            batch["state"], batch["action"], batch["step_mask"].bool(), batch["embodiment_id"]
        )

    def predict_latent(
        self,
        batch: Mapping[str, Any],
        z_hist: Tensor | None = None,
        history_on: Tensor | None = None,
    ) -> Tensor:
        """``z' [B, latent]``; ``history_on [B]`` bool says which samples see their history token."""
        b = batch["images"].shape[0]
        queries = self.queries.unsqueeze(0).expand(b, -1, -1)
        tokens, present = [], []  # extra tokens in sequence order: [state] [history] queries
        if self.state_token is not None:
            if "current_state" not in batch:
                raise KeyError("use_state is on but the batch has no 'current_state' (docs/contracts.md)")
            state = batch["current_state"].to(queries.dtype)
            tokens.append(self.state_token(state, batch["embodiment_id"]).unsqueeze(1))
            present.append(torch.ones(b, 1, dtype=torch.bool, device=queries.device))
        if self.use_history:
            if z_hist is None or history_on is None:
                raise ValueError("use_history is on: predict_latent needs z_hist and history_on")
            tokens.append(self.history_proj(z_hist).unsqueeze(1).to(queries.dtype))
            present.append(history_on.bool().unsqueeze(1))
        extra = torch.cat([*tokens, queries], dim=1)
        extra_mask = None
        if self.use_history:  # only the history token can be absent
            ones = torch.ones(b, self.num_queries, dtype=torch.bool, device=queries.device)
            extra_mask = torch.cat([*present, ones], dim=1)
        hidden = self.backbone(batch["images"], batch["camera_mask"], batch["instruction"], extra, extra_mask)
        hidden = hidden[:, -self.num_queries :].reshape(b, -1).float()
        return self.latent_norm(self.latent_head(hidden))

    def _stack(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch twice along dim 0: one VLM forward serves both history passes."""
        out: dict[str, Any] = {}
        for key in ("images", "camera_mask", "instruction", "current_state", "embodiment_id"):
            if key not in batch:
                continue
            v = batch[key]
            out[key] = list(v) + list(v) if isinstance(v, list | tuple) else torch.cat([v, v], dim=0)
        return out

    # ------------------------------------------------------------------ objective
    def loss(
        self,
        batch: Mapping[str, Any],
        aux_weight: float,
        history_mode: HistoryMode = "exact",
    ) -> VLALoss:
        """``L_pred + aux_weight * (L_align + L_recon)``; the auxiliary branch runs only if aux_weight > 0."""
        if history_mode not in HISTORY_MODES:
            raise ValueError(f"history_mode must be one of {HISTORY_MODES}, got '{history_mode}'")
        action, step_mask = batch["action"], batch["step_mask"].bool()
        dim_mask, emb = batch["action_dim_mask"].bool(), batch["embodiment_id"]
        aux = aux_weight > 0.0
        # Auxiliary branch first, so the order of random draws is fixed: recon, then the pass(es).
        z = recon = None
        if aux:
            z = self.target_latent(batch)
            recon = self.head.loss(z, action, step_mask, dim_mask, emb)

        def pass_terms(z_pred: Tensor) -> tuple[Tensor, Tensor | None]:
            pred = self.head.loss(z_pred, action, step_mask, dim_mask, emb)
            align = F.mse_loss(z_pred, z.detach()) if z is not None else None
            return pred, align

        pred_none = None
        if not self.use_history:
            z_pred = self.predict_latent(batch)
            pred, align = pass_terms(z_pred)
        else:
            z_hist, has_hist = self.history_latent(batch)
            b = has_hist.shape[0]
            if history_mode == "stochastic":
                keep = torch.rand(b, device=has_hist.device) >= 0.5
                z_pred = self.predict_latent(batch, z_hist, has_hist & keep)
                pred, align = pass_terms(z_pred)
            else:
                both = self.predict_latent(
                    self._stack(batch),
                    torch.cat([z_hist, z_hist], dim=0),
                    torch.cat([has_hist, torch.zeros_like(has_hist)], dim=0),
                )
                z_pred, z_none = both[:b], both[b:]
                pred_hist, align_hist = pass_terms(z_pred)
                pred_none, align_none = pass_terms(z_none)
                pred = (pred_hist + pred_none) / 2
                align = (align_hist + align_none) / 2 if align_hist is not None else None
                if pred_none is not None:
                    pred_none = pred_none.detach()
        total = pred
        if aux:
            total = total + aux_weight * (align + recon)
        return VLALoss(total, pred, align, recon, z_pred.detach(), pred_none)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()  # not just no_grad: skips autograd bookkeeping per op (~10 % of a CPU chunk)
    def sample_actions(
        self,
        batch: Mapping[str, Any],
        steps: int | None = None,
        use_history: bool = True,
        generator: torch.Generator | None = None,
        guide: RTCGuide | None = None,
    ) -> Tensor:
        """An action chunk ``[B, chunk_len, max_action_dim]`` in normalised units (VLM once, then the head's
        sampler); with ``guide``, inpainted to continue the previous chunk (the head's ``sample_rtc``)."""
        if guide is not None and not self.can_guide:
            raise ValueError(
                f"action head {type(self.head).__name__} has no guided sampling (sample_rtc) for rtc execution"
            )
        z_hist = history_on = None
        if self.use_history:
            z_hist, history_on = self.history_latent(batch)
            if not use_history:
                history_on = torch.zeros_like(history_on)
        z_pred = self.predict_latent(batch, z_hist, history_on)
        if guide is not None:
            return self.head.sample_rtc(
                z_pred, batch["embodiment_id"], guide, steps=steps, generator=generator
            )
        return self.head.sample(z_pred, batch["embodiment_id"], steps=steps, generator=generator)
