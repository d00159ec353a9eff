"""Shared fixtures.

``synthetic_dataset``: a small multi-embodiment dataset written once per session with the real
``DatasetWriter`` (3 embodiments with different state/action dims, 2 cameras of 16x16 frames, 5 shards of
unequal sizes). Treat it as read-only; use ``make_synthetic_dataset`` for a private copy to modify.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from actionprior.data.schema import Episode
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.sim.base import ensure_gl_backend

# Headless rendering must be chosen before any test module imports mujoco (metaworld and robosuite do),
# so that a bare `pytest` behaves like `make test`.
ensure_gl_backend()


@dataclass(frozen=True)
class SyntheticDataset:
    path: Path
    episodes: list[Episode]  # in write order; episode i has frames synthetic_frame(seed=0, i, cam, t)

    def by_key(self) -> dict[str, Episode]:
        return {ep.key: ep for ep in self.episodes}


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    path = tmp_path_factory.mktemp("synthetic") / "data"
    return SyntheticDataset(path, write_synthetic_dataset(path))


@pytest.fixture
def make_synthetic_dataset(
    synthetic_dataset: SyntheticDataset, tmp_path: Path
) -> Callable[[], SyntheticDataset]:
    """A factory for private, modifiable copies of ``synthetic_dataset``."""

    def make(name: str = "copy") -> SyntheticDataset:
        path = tmp_path / name
        shutil.copytree(synthetic_dataset.path, path)
        return SyntheticDataset(path, synthetic_dataset.episodes)

    return make
