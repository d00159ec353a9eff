"""The model configs as the LightningModules receive them: dataclasses from the CLI, dicts from a checkpoint.

Hyperparameters are saved as plain dicts (checkpoints are read with ``torch.load(weights_only=True)``, which
refuses pickled classes), so a module rebuilt from its checkpoint gets dicts back and turns them into the
dataclasses here, with the dataclass's own unknown-key check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actionprior.models.action_prior import ActionPriorConfig
from actionprior.models.vla import VLAConfig


def as_prior_config(value: ActionPriorConfig | Mapping[str, Any] | None) -> ActionPriorConfig | None:
    if value is None or isinstance(value, ActionPriorConfig):
        return value
    return ActionPriorConfig.from_dict(
        {k: v for k, v in dict(value).items() if k in ActionPriorConfig.settings()}
    )


def as_vla_config(value: VLAConfig | Mapping[str, Any] | None) -> VLAConfig:
    if value is None:
        return VLAConfig()
    return value if isinstance(value, VLAConfig) else VLAConfig.from_dict(dict(value))


def settings_dict(config: ActionPriorConfig) -> dict[str, Any]:
    """The user-facing settings of a prior config (what its YAML block holds)."""
    return {key: getattr(config, key) for key in ActionPriorConfig.settings()}
