"""The model configs as the LightningModules receive them: dataclasses from the CLI, dicts from a checkpoint.

Hyperparameters are saved as plain dicts (checkpoints are read with ``torch.load(weights_only=True)``, which
refuses pickled classes), so a module rebuilt from its checkpoint gets dicts back and turns them into the
dataclasses here, with the dataclass's own unknown-key check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actionprior.models.action_head import head_type
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


def as_head_config(vla: VLAConfig, prior: Any, head: Any) -> Any | None:
    """The (unbound) settings of the action head ``vla.head``: ``prior`` for the action prior (None when unset:
    read from a Stage 1 checkpoint), ``head`` for any other registered head (its defaults when unset)."""
    kind = head_type(vla.head)
    if kind.name == "action_prior":
        if head is not None:
            raise ValueError(
                "VLAModule: `head` is for other action heads; the action prior's settings go under `prior`"
            )
        return as_prior_config(prior)
    if prior is not None:
        raise ValueError(
            f"VLAModule: vla.head is '{vla.head}', but `prior` (the action prior's settings) was set; "
            "give the head's settings under `head`"
        )
    config = kind.config_from(head if head is not None else {})
    return kind.config_from({k: v for k, v in config.to_dict().items() if k in type(config).settings()})


def settings_dict(config: Any) -> dict[str, Any]:
    """The user-facing settings of a head config (what its YAML block holds)."""
    return {key: getattr(config, key) for key in type(config).settings()}
