"""The model batch (docs/contracts.md), built in one place for training and for inference.

Training cuts windows out of recorded episodes; a policy has one live observation and the history it
remembers. Both go through :class:`BatchBuilder`: the same normalisation, the same padding to the registry's
widths (:func:`~actionprior.data.windowing.pad_episode`), the same window cutting
(:func:`~actionprior.data.windowing.gather_windows`), the same dimension masks, the same image fitting
(:class:`~actionprior.data.images.ImageFit`: frames of any size in, the model's square images out) and the same
camera stacking.
A live observation is treated as the last step of an episode made of the remembered history, so its history
keys are exactly those of the training window cut at that time (a test checks it key by key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from actionprior.data.images import ImageFit
from actionprior.data.normalization import Normalizer
from actionprior.data.windowing import PaddedEpisode, gather_windows, pad_episode
from actionprior.embodiments import EmbodimentRegistry

# Keys stacked from per-window arrays (training); a policy's batch has the history ones only.
WINDOW_KEYS = ("state", "action", "step_mask", "history_state", "history_action", "history_mask")
HISTORY_KEYS = ("history_state", "history_action", "history_mask")


class BatchBuilder:
    """Turns episodes or live observations into the contract's batch (numpy arrays; see :func:`to_torch`).

    ``normalizer=None`` keeps raw units (used to check round trips). ``image_fit`` fits every frame to the model's
    square size (None: frames are stacked as they are, and must share one size).
    """

    def __init__(
        self,
        registry: EmbodimentRegistry,
        normalizer: Normalizer | None,
        chunk_len: int,
        history_len: int,
        camera_names: Sequence[str],
        image_fit: ImageFit | None = None,
    ):
        self.registry = registry
        self.image_fit = image_fit
        self.normalizer = normalizer
        self.chunk_len = chunk_len
        self.history_len = history_len
        self.camera_names = list(camera_names)
        self.state_dim_masks = registry.dim_masks("state")
        self.action_dim_masks = registry.dim_masks("action")

    # -- episodes ------------------------------------------------------------------------------------
    def pad(self, embodiment: str, state: np.ndarray, action: np.ndarray) -> PaddedEpisode:
        """A raw episode normalised and padded once, so that every window is a slice of it."""
        if self.normalizer is not None:
            state = self.normalizer.normalize(embodiment, "state", state)
            action = self.normalizer.normalize(embodiment, "action", action)
        return pad_episode(
            state,
            action,
            self.chunk_len,
            self.history_len,
            self.registry.max_state_dim,
            self.registry.max_action_dim,
        )

    def windows(
        self, episodes: Sequence[PaddedEpisode], embodiment_ids: np.ndarray, starts: np.ndarray
    ) -> dict[str, Any]:
        """Windows of ``episodes`` at times ``starts``: the window keys, embodiment ids and dim masks."""
        windows = gather_windows(episodes, starts)
        batch: dict[str, Any] = {key: windows[key] for key in WINDOW_KEYS}
        # The state the policy observes when it acts: the window's first step (a model input; the chunk's
        # states are the Stage 1 encoder's, and unknown at inference).
        batch["current_state"] = np.ascontiguousarray(windows["state"][:, 0])
        ids = np.asarray(embodiment_ids, dtype=np.int64)
        batch["embodiment_id"] = ids
        batch["state_dim_mask"] = self.state_dim_masks[ids]
        batch["action_dim_mask"] = self.action_dim_masks[ids]
        return batch

    # -- cameras -------------------------------------------------------------------------------------
    def cameras(self, frames: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``images [C, 3, h, w]`` uint8 in camera order and ``camera_mask [C]`` from ``{camera: HxWx3}``;
        absent cameras are zeros with a False mask. Frames are fitted by ``image_fit`` (without one they must
        share one size)."""
        if self.image_fit is not None:
            frames = {
                cam: self.image_fit(np.asarray(f)) for cam, f in frames.items() if cam in self.camera_names
            }
        mask = np.array([cam in frames for cam in self.camera_names], dtype=bool)
        shapes = {np.shape(frames[cam]) for cam in self.camera_names if cam in frames}
        if len(shapes) != 1:
            raise ValueError(f"camera frames must share one HxWx3 size, got {sorted(shapes)}")
        h, w, _ = shapes.pop()
        images = np.zeros((len(self.camera_names), 3, h, w), dtype=np.uint8)
        for c, cam in enumerate(self.camera_names):
            if mask[c]:
                images[c] = np.asarray(frames[cam]).transpose(2, 0, 1)
        return images, mask

    # -- live observations ---------------------------------------------------------------------------
    def observation(
        self,
        embodiment: str,
        state: np.ndarray,
        frames: Mapping[str, np.ndarray],
        instruction: str,
        history_state: np.ndarray | None = None,
        history_action: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """The batch (B = 1) for one raw observation and the raw ``[n, D]`` history before it (oldest first).

        The history and the current step form an episode whose window at the current time is cut exactly
        as in training; its chunk keys (future states and actions) are unknown at inference and left out.
        """
        spec = self.registry[embodiment]
        hs = np.zeros((0, spec.state_dim), np.float32) if history_state is None else history_state
        ha = np.zeros((0, spec.action_dim), np.float32) if history_action is None else history_action
        n = min(len(hs), self.history_len)  # only the last history_len steps can reach the window
        hs, ha = hs[len(hs) - n :], ha[len(ha) - n :]
        states = np.concatenate([np.asarray(hs, np.float32), np.asarray(state, np.float32)[None]])
        actions = np.concatenate([np.asarray(ha, np.float32), np.zeros((1, spec.action_dim), np.float32)])
        eid = np.array([self.registry.id_of(embodiment)])
        batch = self.windows([self.pad(embodiment, states, actions)], eid, np.array([n]))
        for key in ("state", "action", "step_mask"):
            del batch[key]
        images, camera_mask = self.cameras(frames)
        batch["images"], batch["camera_mask"] = images[None], camera_mask[None]
        batch["instruction"] = [instruction]
        return batch


def to_torch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """numpy arrays -> tensors (zero-copy); lists of strings stay lists."""
    import torch

    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
