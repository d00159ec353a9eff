"""Checkpoints: what they carry besides weights, how they are checked, and the models built from them.

Torch only (no Lightning), so that inference never imports the training stack. ``checkpoint["actionprior"]``
(the *payload*) holds the embodiment specs, the normalisation statistics with their fingerprint, the action
head's configuration (``model_config``; the action prior's in Stage 1) and where a prior came from
(``prior_source``); a Stage 2 checkpoint adds a ``vla`` entry (the :class:`~actionprior.models.vla.VLAConfig`,
whose ``head`` names the registered action head, camera order, image contract, history length, and the
backbone *spec*: the text of the files ``save_pretrained`` writes, so the backbone rebuilds with no hub). A
mismatch (other robots, dims, statistics or architecture) fails loudly, naming it.

A checkpoint file is read once (:meth:`StoredCheckpoint.read`, through :mod:`actionprior.checkpoint_file`) into a
:class:`StoredCheckpoint`, from which the settings, the compatibility checks and the models are all taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The file layer (reading, format versions) lives in checkpoint_file.py; its names are re-exported here.
from actionprior.checkpoint_file import (  # noqa: F401
    CHECKPOINT_KEY,
    FORMAT_VERSION,
    MODEL_PREFIX,
    POLICY_BACKBONE_DIR,
    POLICY_WEIGHTS,
    CheckpointError,
    load_checkpoint_file,
    read_payload,
    read_policy_metadata,
    verify_zip_checksums,
)
from actionprior.data.normalization import Normalizer
from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.action_head import head_type
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.adaptation import adaptation_problems


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the embodiments, normalisation or model configuration it is loaded into."""


def checkpoint_payload(
    config: Any,
    registry: EmbodimentRegistry,
    normalizer: Normalizer,
    vla: Mapping[str, Any] | None = None,
    prior_source: str | None = None,
) -> dict[str, Any]:
    """The payload of a checkpoint: ``config`` is the bound head config (the action prior's in Stage 1)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "embodiments": registry.to_dicts(),
        "embodiment_fingerprint": registry.fingerprint(),
        "normalization": normalizer.to_dict(),
        "normalization_fingerprint": normalizer.fingerprint,
        "prior_source": prior_source,
    }
    if vla is not None:
        payload["vla"] = dict(vla)
    return payload


def compatibility_problems(
    stored: Mapping[str, Any],
    registry: EmbodimentRegistry | None = None,
    normalizer: Normalizer | None = None,
    config: Any = None,
    config_keys: tuple[str, ...] | None = None,
) -> list[str]:
    """Differences between a stored payload and what the caller has; empty when compatible.

    ``config_keys`` restricts the model-config comparison (e.g. Stage 2 only cares about
    :meth:`ActionPriorConfig.architecture_keys`); by default every key is compared.
    """
    problems: list[str] = []
    stored_registry = EmbodimentRegistry.from_dicts(stored["embodiments"])
    if registry is not None:
        problems += [f"embodiments: {p}" for p in stored_registry.diff(registry)]
        for label, mine, theirs in (
            ("max_state_dim", stored_registry.max_state_dim, registry.max_state_dim),
            ("max_action_dim", stored_registry.max_action_dim, registry.max_action_dim),
        ):
            if mine != theirs:
                problems.append(f"dims: {label} is {mine} in the checkpoint but {theirs} here")
    if normalizer is not None:
        theirs_fp = normalizer.fingerprint
        mine_fp = stored["normalization_fingerprint"]
        if mine_fp != theirs_fp:
            detail = _stats_difference(stored["normalization"], normalizer.to_dict())
            problems.append(
                f"normalisation fingerprint is {mine_fp} in the checkpoint but {theirs_fp} here ({detail}); "
                "the model was trained on differently normalised data"
            )
    if config is not None:
        mine_cfg = dict(stored["model_config"])
        theirs_cfg = dict(config) if isinstance(config, Mapping) else config.to_dict()
        for key in config_keys or sorted(set(mine_cfg) | set(theirs_cfg)):
            if mine_cfg.get(key) != theirs_cfg.get(key):
                problems.append(
                    f"model config: {key} is {mine_cfg.get(key)!r} in the checkpoint but {theirs_cfg.get(key)!r} here"
                )
    return problems


def _stats_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    if a.get("mode") != b.get("mode"):
        return f"mode {a.get('mode')} vs {b.get('mode')}"
    sa, sb = a.get("stats", {}), b.get("stats", {})
    if set(sa) != set(sb):
        return f"embodiments {sorted(sa)} vs {sorted(sb)}"
    changed = [name for name in sorted(sa) if sa[name] != sb[name]]
    return f"statistics differ for {changed}"


def check_compatible(stored: Mapping[str, Any], source: str, **kwargs: Any) -> None:
    """Raise :class:`CheckpointMismatchError` listing every difference (see :func:`compatibility_problems`)."""
    problems = compatibility_problems(stored, **kwargs)
    if problems:
        listing = "; ".join(problems)
        raise CheckpointMismatchError(f"{source} is incompatible with this configuration: {listing}")


def check_adaptable(
    stored: StoredCheckpoint,
    source: str,
    registry: EmbodimentRegistry,
    config: ActionPriorConfig,
    normalizer: Normalizer | None = None,
    allow_dropped: bool = True,
) -> None:
    """Raise :class:`CheckpointMismatchError` unless the checkpoint's prior can move onto ``registry``.

    Unlike :func:`check_compatible`, other embodiments are allowed (matched by name, see
    :mod:`actionprior.models.adaptation`); same-name embodiments must be the same robot with the same
    statistics, and the architecture must match. ``allow_dropped=False`` also refuses checkpoint
    embodiments that ``registry`` lacks.
    """
    problems = adaptation_problems(
        stored.registry,
        registry,
        stored.prior_config,
        config,
        stored.normalizer.to_dict() if normalizer is not None else None,
        normalizer.to_dict() if normalizer is not None else None,
        allow_dropped=allow_dropped,
    )
    if problems:
        raise CheckpointMismatchError(
            f"{source} is incompatible with this configuration: {'; '.join(problems)}"
        )


@dataclass
class StoredCheckpoint:
    """One checkpoint read from disk: its payload decoded, its weights, and the models it describes."""

    source: str
    checkpoint: dict[str, Any]
    payload: dict[str, Any]
    registry: EmbodimentRegistry
    normalizer: Normalizer
    head_config: Any  # the bound config of the action head (an ActionPriorConfig in Stage 1)

    @property
    def stage(self) -> int:
        return 2 if "vla" in self.payload else 1

    @property
    def vla_settings(self) -> dict[str, Any]:
        if self.stage != 2:
            raise CheckpointError(
                f"{self.source} is a Stage 1 (action prior) checkpoint, not a Stage 2 VLA checkpoint"
            )
        return dict(self.payload["vla"])

    @property
    def head_name(self) -> str:
        """The registered name of the action head (``action_prior`` for Stage 1)."""
        return _head_name(self.payload)

    @property
    def prior_config(self) -> ActionPriorConfig:
        """The action prior's config: of a Stage 1 checkpoint, or of a VLA whose head is the prior."""
        if not isinstance(self.head_config, ActionPriorConfig):
            raise CheckpointError(
                f"{self.source}: its action head is '{self.head_name}', not the action prior"
            )
        return self.head_config

    @property
    def prior_source(self) -> str | None:
        """The checkpoint the prior started from (``--init_from`` in Stage 1, ``--stage1_ckpt`` in Stage 2)."""
        return self.payload.get("prior_source")

    @classmethod
    def from_dict(cls, checkpoint: dict[str, Any], source: str) -> StoredCheckpoint:
        """Decode (and, for an older format, upgrade in place: see :mod:`actionprior.checkpoint_file`)."""
        payload = read_payload(checkpoint, source)
        try:
            registry = EmbodimentRegistry.from_dicts(payload["embodiments"])
            normalizer = Normalizer.from_dict(payload["normalization"], registry)
            config = head_type(_head_name(payload)).config_from(payload["model_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: its actionprior entry is malformed ({exc})") from None
        return cls(source, checkpoint, payload, registry, normalizer, config)

    @classmethod
    def read(cls, path: str | Path, map_location: str | torch.device = "cpu") -> StoredCheckpoint:
        return cls.from_dict(load_checkpoint_file(path, map_location), str(path))

    def expect_stage(self, stage: int, what: str) -> StoredCheckpoint:
        if self.stage != stage:
            kinds = {1: "a Stage 1 (action prior)", 2: "a Stage 2 (VLA)"}
            raise CheckpointError(
                f"{what}: {self.source} is {kinds[self.stage]} checkpoint, not {kinds[stage]} one"
            )
        return self

    def model_state(self, prefix: str = MODEL_PREFIX) -> dict[str, torch.Tensor]:
        state = self.checkpoint.get("state_dict") or {}
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            raise CheckpointError(f"{self.source}: no weights under the prefix '{prefix}' in its state_dict")
        return weights

    def build_prior(self) -> ActionPrior:
        """The trained :class:`ActionPrior` (eval mode): of a Stage 1 checkpoint, or the head of a VLA."""
        model = ActionPrior(self.prior_config)
        weights = self.model_state()
        if self.stage == 2:
            weights = {k[len("head.") :]: v for k, v in weights.items() if k.startswith("head.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"{self.source}: weights do not match the stored model config "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.eval()

    def build_vla(self, attn_implementation: str = "auto") -> Any:
        """The trained VLA (eval mode), assembled by :meth:`~actionprior.models.vla.VLAConfig.build`; needs no
        data and no network -- except a LoRA training checkpoint, which holds the adapters but not the frozen
        base: that is rebuilt from its source (the backbone, or the policy the run started from) and checked
        against the checkpoint's fingerprint of it."""
        from actionprior.models.vla import VLAConfig

        settings = self.vla_settings
        config = VLAConfig.from_dict(settings["config"])
        base = settings.get("lora_base")
        state = self.model_state()
        if base is None:
            vla = config.build(self.head_config, settings["backbone_spec"], attn_implementation, False)
        else:
            vla = self._build_on_lora_base(config, base, attn_implementation)
            own = vla.state_dict()
            for name, p in vla.backbone.named_parameters(remove_duplicate=False):
                if not p.requires_grad:
                    state.setdefault(f"backbone.{name}", own[f"backbone.{name}"])
        try:
            vla.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointMismatchError(
                f"{self.source}: weights do not match the stored VLA config ({str(exc).splitlines()[0]})"
            ) from None
        return vla.eval()

    def _build_on_lora_base(self, config: Any, base: Mapping[str, Any], attn_implementation: str) -> Any:
        from actionprior.models.lora import copy_base_weights, frozen_fingerprint, merge_lora

        policy = base.get("init_policy")
        if policy:  # the base is that policy's backbone (its adapters, if any, merged)
            origin = read_policy(policy).build_vla(attn_implementation)
            merge_lora(origin)
            vla = config.build(
                self.head_config, self.vla_settings["backbone_spec"], attn_implementation, False
            )
            copy_base_weights(vla.backbone, origin.backbone.state_dict())
        else:
            vla = config.build(self.head_config, None, attn_implementation, False)
        found = frozen_fingerprint(vla.backbone)
        if found != base.get("fingerprint"):
            raise CheckpointMismatchError(
                f"{self.source}: its LoRA adapters were trained on base weights with fingerprint "
                f"{base.get('fingerprint')}, but {policy or config.backbone} gives {found}"
            )
        return vla


def read_policy_folder(root: str | Path) -> StoredCheckpoint:
    """An exported policy folder (``actionprior export``) as a :class:`StoredCheckpoint`. Untrusted: the JSON is
    size-capped, weights are read by safetensors (tensors only), backbone files are the folder's plain files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(root)
    meta = read_policy_metadata(root)
    backbone = root / POLICY_BACKBONE_DIR
    if not backbone.is_dir():
        raise CheckpointError(f"{root}: no {POLICY_BACKBONE_DIR}/ folder with the backbone's files")
    files = {p.name: p.read_text() for p in sorted(backbone.iterdir()) if p.is_file()}
    payload = dict(meta["payload"])
    vla = dict(payload.get("vla") or {})
    vla["backbone_spec"] = {"source": vla.pop("backbone_source", ""), "files": files}
    payload["vla"] = vla
    try:
        weights = load_file(str(root / POLICY_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{root / POLICY_WEIGHTS}: cannot read the weights ({exc})") from None
    state = {MODEL_PREFIX + k: v for k, v in weights.items()}
    return StoredCheckpoint.from_dict({"state_dict": state, "actionprior": payload}, str(root))


def read_policy(path: str | Path) -> StoredCheckpoint:
    """A Stage 2 policy: an exported folder or a Stage 2 checkpoint file (``--init_policy``)."""
    path = Path(path)
    if path.is_dir():
        stored = read_policy_folder(path)
    elif path.is_file():
        stored = StoredCheckpoint.read(path)
    else:
        raise FileNotFoundError(f"no exported policy folder or checkpoint file at '{path}'")
    return stored.expect_stage(2, "a policy")


def _head_name(payload: Mapping[str, Any]) -> str:
    vla = payload.get("vla")
    if not isinstance(vla, Mapping):
        return "action_prior"
    config = vla.get("config")
    return str(config.get("head", "action_prior")) if isinstance(config, Mapping) else "action_prior"


def load_action_prior(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[ActionPrior, EmbodimentRegistry, Normalizer, ActionPriorConfig]:
    """Rebuild the trained :class:`ActionPrior` (eval mode), its registry, normaliser and config from a file."""
    stored = StoredCheckpoint.read(path, map_location)
    return stored.build_prior(), stored.registry, stored.normalizer, stored.prior_config


def data_contract(
    embodiments: list[dict] | None, normalization: dict | None, owner: str
) -> tuple[EmbodimentRegistry, Normalizer]:
    """Registry and normaliser from a LightningModule's ``embodiments``/``normalization`` init args."""
    if embodiments is None or normalization is None:
        raise ValueError(
            f"{owner} needs `embodiments` and `normalization` (the CLI links them from the DataModule; "
            "in Python pass registry.to_dicts() and normalizer.to_dict())"
        )
    registry = EmbodimentRegistry.from_dicts(embodiments)
    return registry, Normalizer.from_dict(normalization, registry)
