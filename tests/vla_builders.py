"""Shared builders for the Stage 2 tests: a tiny VLA and in-memory observation-view batches.

Batches follow docs/contracts.md (normalised, padded to the registry's max dims). The action chunk is a
deterministic function of the embodiment and the instruction, so a model that reads its inputs can
drive the loss down within a few dozen steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from actionprior.data.synthetic import synthetic_registry
from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.backbones import VLMBackbone
from actionprior.models.vla import VLA

CHUNK, HISTORY, CAMERAS, IMAGE = 4, 3, 2, 32
INSTRUCTIONS = ("pick up the red cube", "open the drawer", "push the puck to the goal")


def registry() -> EmbodimentRegistry:
    return synthetic_registry()


# The action prior's settings of the tiny test VLA (what the CLI would read from a Stage 1 checkpoint).
TINY_PRIOR: dict[str, Any] = dict(
    width=32,
    depth=1,
    heads=2,
    latent_dim=16,
    io_mode="projection",
    use_state=True,
    dropout=0.0,
    flow_alpha=1.5,
    flow_beta=1.0,
    sample_steps=3,
)


def prior_config(reg: EmbodimentRegistry, **overrides: Any) -> ActionPriorConfig:
    return ActionPriorConfig(**{**TINY_PRIOR, **overrides}).bind(reg, CHUNK)


def tiny_vla(
    kind: str = "qwen3_vl",
    use_history: bool = False,
    num_queries: int = 2,
    seed: int = 0,
    use_state: bool = True,
) -> VLA:
    reg = registry()
    torch.manual_seed(seed)
    backbone = VLMBackbone.from_pretrained(f"tiny:{kind}", tiny_seed=seed)
    return VLA(
        backbone,
        ActionPrior(prior_config(reg)),
        num_queries=num_queries,
        use_history=use_history,
        head_hidden=32,
        use_state=use_state,
    )


def make_sample(index: int, reg: EmbodimentRegistry, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed * 100_003 + index)
    e = index % len(reg)
    spec = reg[e]
    s_max, a_max = reg.max_state_dim, reg.max_action_dim
    task = index % len(INSTRUCTIONS)
    state = torch.zeros(CHUNK, s_max)
    state[:, : spec.state_dim] = torch.randn(CHUNK, spec.state_dim, generator=g)
    action = torch.zeros(CHUNK, a_max)
    # A smooth chunk set by (task, embodiment): learnable from the instruction and the embodiment id.
    phase = torch.linspace(0, 1, CHUNK)[:, None] * (1 + task) + torch.arange(spec.action_dim)[None, :] * 0.3
    action[:, : spec.action_dim] = torch.sin(phase + e)
    hist_state = torch.zeros(HISTORY, s_max)
    hist_state[:, : spec.state_dim] = torch.randn(HISTORY, spec.state_dim, generator=g)
    hist_action = torch.zeros(HISTORY, a_max)
    hist_action[:, : spec.action_dim] = torch.randn(HISTORY, spec.action_dim, generator=g)
    step_mask = torch.ones(CHUNK, dtype=torch.bool)
    step_mask[-1] = index % 4 != 3  # some windows run past the episode end
    history_mask = torch.ones(HISTORY, dtype=torch.bool)
    if index % 5 == 0:
        history_mask[:] = False  # the first step of an episode has no history
    images = torch.randint(0, 256, (CAMERAS, 3, IMAGE, IMAGE), generator=g, dtype=torch.uint8)
    camera_mask = torch.tensor([True, index % 3 != 1])
    images[~camera_mask] = 0
    return {
        "embodiment_id": torch.tensor(e),
        "state": state,
        "current_state": state[0],
        "action": action,
        "step_mask": step_mask,
        "state_dim_mask": torch.arange(s_max) < spec.state_dim,
        "action_dim_mask": torch.arange(a_max) < spec.action_dim,
        "history_state": hist_state,
        "history_action": hist_action,
        "history_mask": history_mask,
        "images": images,
        "camera_mask": camera_mask,
        "instruction": INSTRUCTIONS[task],
        "task": f"task{task}",
    }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = values if isinstance(values[0], str) else torch.stack(values)
    return out


def make_batch(batch_size: int = 4, seed: int = 0, start: int = 0) -> dict[str, Any]:
    reg = registry()
    return collate([make_sample(start + i, reg, seed) for i in range(batch_size)])


class SyntheticObsDataset(Dataset):
    def __init__(self, size: int = 16, seed: int = 0):
        self.reg, self.size, self.seed = registry(), size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_sample(index, self.reg, self.seed)


def normalization(reg: EmbodimentRegistry | None = None, seed: int = 0) -> dict[str, Any]:
    """``Normalizer.to_dict()`` of statistics over random episodes of every embodiment."""
    import numpy as np

    from actionprior.data.normalization import Normalizer
    from actionprior.data.stats import compute_stats

    reg = reg or registry()
    rng = np.random.default_rng(seed)
    episodes = [
        (s.name, rng.normal(size=(20, s.state_dim)), rng.normal(size=(20, s.action_dim))) for s in reg
    ]
    return Normalizer(compute_stats(episodes), reg).to_dict()


def module_kwargs(reg: EmbodimentRegistry | None = None, **overrides: Any) -> dict[str, Any]:
    """VLAModule init args for a tiny, fast model matching :func:`prior_config`; an override of a
    VLAConfig or ActionPriorConfig field goes into that config."""
    from actionprior.models.vla import VLAConfig

    reg = reg or registry()
    vla: dict[str, Any] = dict(backbone="tiny:qwen3_vl", num_queries=2, head_hidden=32)
    prior = dict(TINY_PRIOR)
    kw: dict[str, Any] = dict(
        chunk_len=CHUNK,
        warmup_steps=0,
        lr=1e-3,
        lr_backbone=1e-3,
        train_error_every_n_steps=0,
        camera_names=["scene", "wrist"],
        embodiments=reg.to_dicts(),
        normalization=normalization(reg),
    )
    for key, value in overrides.items():
        if key in VLAConfig.__dataclass_fields__:
            vla[key] = value
        elif key in ActionPriorConfig.settings():
            prior[key] = value
        else:
            kw[key] = value
    return {"vla": VLAConfig(**vla), "prior": ActionPriorConfig(**prior), **kw}


def loader(size: int = 16, batch_size: int = 4, seed: int = 0):
    from torch.utils.data import DataLoader

    return DataLoader(
        SyntheticObsDataset(size, seed), batch_size=batch_size, shuffle=False, collate_fn=collate
    )
