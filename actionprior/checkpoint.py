"""What a Stage 1 checkpoint carries besides weights, how to load it, and how to refuse an incompatible one.

``checkpoint["actionprior"]`` holds the embodiment specs, the normalisation statistics with their
fingerprint and the model configuration, so a policy or Stage 2 can rebuild the action prior without the
training data, and a mismatch (different robots, dims, statistics or architecture) fails loudly, naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from actionprior.data.normalization import Normalizer
from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig

CHECKPOINT_KEY = "actionprior"
FORMAT_VERSION = 1
# Model-config keys that fix the weights' shapes and meaning; the rest (sampling steps, flow-time
# distribution, dropout, chunk length) may change when resuming or reusing a checkpoint.
ARCHITECTURE_KEYS = (
    "width",
    "depth",
    "heads",
    "latent_dim",
    "max_state_dim",
    "max_action_dim",
    "state_dims",
    "action_dims",
    "io_mode",
    "use_state",
)


# The action-prior settings a Stage 2 module takes from its Stage 1 checkpoint when they are not set in its
# config: the architecture (compared, must match) and the flow-matching/sampling settings (inherited).
PRIOR_SETTINGS = (
    "width",
    "depth",
    "heads",
    "latent_dim",
    "io_mode",
    "use_state",
    "dropout",
    "flow_alpha",
    "flow_beta",
    "sample_steps",
)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the embodiments, normalisation or model configuration it is loaded into."""


def checkpoint_payload(
    config: ActionPriorConfig, registry: EmbodimentRegistry, normalizer: Normalizer
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "embodiments": registry.to_dicts(),
        "embodiment_fingerprint": registry.fingerprint(),
        "normalization": normalizer.to_dict(),
        "normalization_fingerprint": normalizer.fingerprint,
    }


def compatibility_problems(
    stored: Mapping[str, Any],
    registry: EmbodimentRegistry | None = None,
    normalizer: Normalizer | None = None,
    config: ActionPriorConfig | Mapping[str, Any] | None = None,
    config_keys: tuple[str, ...] | None = None,
) -> list[str]:
    """Differences between a stored payload and what the caller has; empty when compatible.

    ``config_keys`` restricts the model-config comparison (e.g. Stage 2 only cares about the architecture,
    not ``sample_steps``); by default every key is compared.
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
        theirs_cfg = config.to_dict() if isinstance(config, ActionPriorConfig) else dict(config)
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
        listing = "\n  - ".join(problems)
        raise CheckpointMismatchError(f"{source} is incompatible with this configuration:\n  - {listing}")


def read_payload(checkpoint: Mapping[str, Any], source: str) -> dict[str, Any]:
    payload = checkpoint.get(CHECKPOINT_KEY)
    if payload is None:
        raise CheckpointMismatchError(
            f"{source} has no '{CHECKPOINT_KEY}' entry: it is not an actionprior Stage 1 checkpoint "
            f"(top-level keys: {sorted(checkpoint)})"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"{source}: checkpoint format version {version}, this code reads {FORMAT_VERSION}"
        )
    return dict(payload)


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Lightning checkpoints of this project hold only tensors and plain containers: no unpickling of code.
    return torch.load(path, map_location=map_location, weights_only=True)


def prior_settings(path: str | Path) -> dict[str, Any]:
    """The :data:`PRIOR_SETTINGS` of the action prior in a Stage 1 checkpoint."""
    config = read_payload(load_checkpoint_file(path), f"Stage 1 checkpoint '{path}'")["model_config"]
    return {key: config[key] for key in PRIOR_SETTINGS}


def load_action_prior(
    path: str | Path, map_location: str | torch.device = "cpu", prefix: str = "model."
) -> tuple[ActionPrior, EmbodimentRegistry, Normalizer, ActionPriorConfig]:
    """Rebuild the trained :class:`ActionPrior` (eval mode), its registry, normaliser and config from a checkpoint.

    ``prefix`` is where the ActionPrior's weights sit in the checkpoint's ``state_dict`` (``model.`` for
    :class:`~actionprior.training.ActionPriorModule`).
    """
    checkpoint = load_checkpoint_file(path, map_location)
    payload = read_payload(checkpoint, str(path))
    registry = EmbodimentRegistry.from_dicts(payload["embodiments"])
    normalizer = Normalizer.from_dict(payload["normalization"], registry)
    config = ActionPriorConfig.from_dict(payload["model_config"])
    model = ActionPrior(config)
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise CheckpointMismatchError(f"{path}: no weights under the prefix '{prefix}' in its state_dict")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{path}: weights do not match the stored model config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.eval(), registry, normalizer, config


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
