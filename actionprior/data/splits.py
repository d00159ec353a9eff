"""Train/validation split of episodes: a stable hash of the episode key, the same on every machine."""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "val", "all"]


def is_val_episode(key: str, val_fraction: float) -> bool:
    """Stable across runs, machines and Python versions (unlike ``hash``): a hash of the key alone."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def in_split(key: str, split: Split, val_fraction: float) -> bool:
    if split == "all":
        return True
    return is_val_episode(key, val_fraction) == (split == "val")
