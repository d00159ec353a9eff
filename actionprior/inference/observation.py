"""What a raw observation must look like for a given policy, and a validator with actionable errors.

A raw observation is what a simulator or robot produces, plus the embodiment name::

    {"embodiment": str, "state": float [Ds], "images": {camera: uint8 [h, w, 3]}, "instruction": str}

Frames come at the camera's native size: the batch contract fits them to the policy's square image size
(:mod:`actionprior.data.images`). The same validator runs in-process (:class:`~actionprior.inference.policy.Policy`) and in the policy
server, so a request that the server accepts is exactly one that ``Policy.act`` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actionprior.data.images import MAX_FRAME_PIXELS
from actionprior.embodiments import EmbodimentRegistry

OBSERVATION_KEYS = ("embodiment", "state", "images", "instruction")
MAX_INSTRUCTION_CHARS = 2000


class ObservationError(ValueError):
    """An observation does not match what the policy expects; the text names the key and the dims."""


@dataclass(frozen=True)
class ObservationSpec:
    """The inputs a policy was trained on: embodiments, camera order and the square image size frames are fitted
    to (frames of any size are accepted)."""

    registry: EmbodimentRegistry
    camera_names: tuple[str, ...]
    image_size: int | None  # None: the policy reads no images (e.g. a scripted or random baseline)

    def cameras_for(self, embodiment: str) -> tuple[str, ...]:
        """The cameras this embodiment must send, in the policy's camera order."""
        if self.image_size is None:
            return ()
        own = set(self.registry[embodiment].cameras)
        return tuple(c for c in self.camera_names if c in own)

    def to_dict(self) -> dict[str, Any]:
        return {
            "embodiments": {
                spec.name: {
                    "state_dim": spec.state_dim,
                    "action_dim": spec.action_dim,
                    "cameras": list(self.cameras_for(spec.name)),
                }
                for spec in self.registry
            },
            "camera_names": list(self.camera_names),
            "image_size": self.image_size,
        }


def validate_observation(obs: Any, spec: ObservationSpec) -> dict[str, Any]:
    """Check ``obs`` against ``spec``; return it with ``state`` as float32. Raises ObservationError."""
    if not isinstance(obs, Mapping):
        raise ObservationError(f"observation must be a mapping with keys {list(OBSERVATION_KEYS)}")
    missing = [k for k in OBSERVATION_KEYS if k not in obs]
    if missing:
        raise ObservationError(f"observation is missing keys {missing}; expected {list(OBSERVATION_KEYS)}")
    unknown = sorted(str(k) for k in obs if k not in OBSERVATION_KEYS)
    if unknown:
        raise ObservationError(f"observation has unknown keys {unknown}; expected {list(OBSERVATION_KEYS)}")

    embodiment = obs["embodiment"]
    if not isinstance(embodiment, str) or embodiment not in spec.registry:
        raise ObservationError(f"unknown embodiment {embodiment!r}; this policy knows {spec.registry.names}")
    emb = spec.registry[embodiment]

    state = obs["state"]
    if not isinstance(state, np.ndarray):
        raise ObservationError(f"'state' must be a numpy array, got {type(state).__name__}")
    if state.dtype.kind != "f":
        raise ObservationError(f"'state' must be a float array (float32), got dtype {state.dtype}")
    if state.shape != (emb.state_dim,):
        raise ObservationError(
            f"'state' for embodiment '{embodiment}' must have shape ({emb.state_dim},), got {state.shape}"
        )
    if not np.all(np.isfinite(state)):
        bad = np.flatnonzero(~np.isfinite(state)).tolist()
        raise ObservationError(f"'state' has non-finite values at dims {bad}")

    instruction = obs["instruction"]
    if not isinstance(instruction, str):
        raise ObservationError(f"'instruction' must be a string, got {type(instruction).__name__}")
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise ObservationError(
            f"'instruction' has {len(instruction)} characters, limit is {MAX_INSTRUCTION_CHARS}"
        )

    images = obs["images"]
    if not isinstance(images, Mapping):
        raise ObservationError(
            f"'images' must be a mapping camera -> uint8 [h, w, 3], got {type(images).__name__}"
        )
    expected = spec.cameras_for(embodiment)
    _check_cameras(images, expected, embodiment)
    for cam in expected:
        img = images[cam]
        if not isinstance(img, np.ndarray):
            raise ObservationError(f"image '{cam}' must be a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise ObservationError(f"image '{cam}' must have dtype uint8, got {img.dtype}")
        if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
            raise ObservationError(f"image '{cam}' must be uint8 [h, w, 3] (rgb), got shape {img.shape}")
        if img.shape[0] * img.shape[1] > MAX_FRAME_PIXELS:
            raise ObservationError(
                f"image '{cam}' has {img.shape[0]}x{img.shape[1]} pixels, more than {MAX_FRAME_PIXELS}"
            )

    out = dict(obs)
    out["state"] = state.astype(np.float32, copy=False)
    return out


def _check_cameras(images: Mapping[str, Any], expected: Sequence[str], embodiment: str) -> None:
    missing = [c for c in expected if c not in images]
    extra = sorted(str(c) for c in images if c not in expected)
    if missing or extra:
        raise ObservationError(
            f"embodiment '{embodiment}' must send exactly the cameras {list(expected)}; "
            f"missing {missing}, unexpected {extra}"
        )
