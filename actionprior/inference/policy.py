"""A trained VLA as a robot controller: raw observations in, unnormalised actions out.

:class:`Policy` wraps the VLA with the same :class:`~actionprior.data.normalization.Normalizer` that
training used (it travels inside the checkpoint), builds the model's batch (docs/contracts.md) from one
raw observation plus the history ring buffer, samples an action chunk, un-normalises it and queues the
first ``replan_every`` actions (see :class:`~actionprior.inference.base.BasePolicy`).

Sampling noise comes from a generator re-seeded on every ``reset()``, so an episode is reproducible and
a server connection produces exactly the actions of an in-process policy with the same seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actionprior.data.normalization import Normalizer
from actionprior.embodiments import EmbodimentError
from actionprior.inference.base import BasePolicy, History
from actionprior.inference.observation import ObservationSpec


class PolicyCheckpointError(ValueError):
    """A checkpoint cannot be turned into a policy (wrong kind, foreign statistics, missing fields)."""


class Policy(BasePolicy):
    def __init__(
        self,
        model: torch.nn.Module,
        normalizer: Normalizer,
        camera_names: tuple[str, ...] | list[str],
        image_size: int,
        chunk_len: int,
        history_len: int = 0,
        replan_every: int | None = None,
        sampling_steps: int | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        """``model`` has ``sample_actions(batch, steps, generator=...)`` -> ``[B, H, A_max]`` (normalised)."""
        self.model = model.to(device).eval()
        self.normalizer = normalizer
        self.registry = normalizer.registry
        self.chunk_len = chunk_len
        self.sampling_steps = sampling_steps
        self.device = torch.device(device)
        self.seed = seed
        replan_every = replan_every or chunk_len
        if not 1 <= replan_every <= chunk_len:
            raise ValueError(f"replan_every must be in [1, chunk_len={chunk_len}], got {replan_every}")
        spec = ObservationSpec(self.registry, tuple(camera_names), image_size)
        super().__init__(spec, replan_every=replan_every, history_len=history_len)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        replan_every: int | None = None,
        sampling_steps: int | None = None,
        expected_stats: str | Path | None = None,
        image_size: int | None = None,
        history_len: int | None = None,
        seed: int = 0,
    ) -> Policy:
        """Rebuild the VLA of a Stage 2 checkpoint with its embodiments, normaliser and camera order.

        ``expected_stats`` (a fingerprint or a ``stats.json``) makes the policy refuse a checkpoint trained
        on other statistics. ``image_size``/``history_len`` override or supply what the checkpoint lacks.
        """
        from actionprior.checkpoint import load_checkpoint_file
        from actionprior.training.vla_module import build_vla_from_checkpoint

        source = str(path)
        checkpoint = load_checkpoint_file(path, map_location="cpu")
        try:
            vla, registry, normalizer, settings = build_vla_from_checkpoint(checkpoint)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise PolicyCheckpointError(f"{source}: cannot rebuild the VLA: {exc}") from exc
        check_stats_fingerprint(normalizer, expected_stats, source)
        data_hp = checkpoint.get("datamodule_hyper_parameters") or {}
        image_size = image_size or settings.get("image_size") or data_hp.get("image_size")
        if not image_size:
            raise PolicyCheckpointError(
                f"{source} does not record the training image size; pass image_size= (--image-size)"
            )
        if history_len is None:
            history_len = settings.get("history_len", data_hp.get("history_len"))
        if history_len is None:
            if vla.use_history:
                raise PolicyCheckpointError(
                    f"{source} uses history but does not record history_len; pass history_len="
                )
            history_len = 0
        camera_names = settings.get("camera_names")
        if not camera_names:
            raise PolicyCheckpointError(
                f"{source}: the checkpoint records no camera_names (vla.camera_names)"
            )
        return cls(
            vla,
            normalizer,
            camera_names,
            int(image_size),
            chunk_len=vla.prior.config.chunk_len,
            history_len=int(history_len) if vla.use_history else 0,
            replan_every=replan_every,
            sampling_steps=sampling_steps,
            device=device,
            seed=seed,
        )

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        super().reset()
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

    # ------------------------------------------------------------------ model input
    def build_batch(self, observation: dict[str, Any], history: History) -> dict[str, Any]:
        """The model batch (B=1) for a validated raw observation, normalised and padded like training."""
        emb = observation["embodiment"]
        spec = self.registry[emb]
        s_max, a_max = self.registry.max_state_dim, self.registry.max_action_dim
        cams = self.obs_spec.camera_names
        size = self.obs_spec.image_size
        images = torch.zeros(1, len(cams), 3, size, size, dtype=torch.uint8)
        camera_mask = torch.zeros(1, len(cams), dtype=torch.bool)
        for i, cam in enumerate(cams):
            if cam in observation["images"]:
                images[0, i] = torch.from_numpy(np.array(observation["images"][cam])).permute(2, 0, 1)
                camera_mask[0, i] = True
        hs, ha, hm = history.arrays(spec.state_dim, spec.action_dim)
        history_state = np.zeros((1, self.history_len, s_max), np.float32)
        history_action = np.zeros((1, self.history_len, a_max), np.float32)
        if hm.any():
            history_state[0, hm, : spec.state_dim] = self.normalizer.normalize(emb, "state", hs[hm])
            history_action[0, hm, : spec.action_dim] = self.normalizer.normalize(emb, "action", ha[hm])
        state = np.zeros((1, self.chunk_len, s_max), np.float32)
        state[0, 0, : spec.state_dim] = self.normalizer.normalize(emb, "state", observation["state"])
        batch = {
            "embodiment_id": torch.tensor([self.registry.id_of(emb)]),
            "state": torch.from_numpy(state),
            "state_dim_mask": (torch.arange(s_max) < spec.state_dim)[None],
            "action_dim_mask": (torch.arange(a_max) < spec.action_dim)[None],
            "history_state": torch.from_numpy(history_state),
            "history_action": torch.from_numpy(history_action),
            "history_mask": torch.from_numpy(hm.copy())[None],
            "images": images,
            "camera_mask": camera_mask,
            "instruction": [observation["instruction"]],
        }
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def predict_chunk(self, observation: dict[str, Any], history: History) -> np.ndarray:
        batch = self.build_batch(observation, history)
        chunk = self.model.sample_actions(batch, steps=self.sampling_steps, generator=self._generator)
        emb = observation["embodiment"]
        dim = self.registry[emb].action_dim
        normalised = chunk[0, :, :dim].float().cpu().numpy()
        return self.normalizer.unnormalize(emb, "action", normalised)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "chunk_len": self.chunk_len,
            "sampling_steps": self.sampling_steps,
            "normalization_fingerprint": self.normalizer.fingerprint,
            "device": str(self.device),
        }


def check_stats_fingerprint(normalizer: Normalizer, expected: str | Path | None, source: str) -> None:
    """Refuse a checkpoint whose statistics differ from ``expected``.

    ``expected`` is a fingerprint string or a ``stats.json`` file (raw per-embodiment statistics); the
    file is normalised with the checkpoint's mode and registry, so the comparison is like for like.
    """
    if expected is None:
        return
    path = Path(expected)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"statistics file not found: {path}")
        data = json.loads(path.read_text())
        stats = data.get("stats", data) if isinstance(data, dict) else data
        try:
            want = Normalizer(stats, normalizer.registry, normalizer.mode).fingerprint
        except (EmbodimentError, KeyError, TypeError) as exc:
            raise PolicyCheckpointError(f"{path}: cannot compare with {source}: {exc}") from exc
        label = f"statistics in {path}"
    else:
        want, label = str(expected), "the expected fingerprint"
    if want != normalizer.fingerprint:
        raise PolicyCheckpointError(
            f"{source} was trained with normalisation fingerprint {normalizer.fingerprint}, but {label} "
            f"gives {want}: its actions would be un-normalised with the wrong statistics"
        )
