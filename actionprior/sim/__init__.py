"""Simulator adapters, scripted experts and demonstration collection.

``make_env(embodiment, task, seed)`` builds the environment of one suite entry; the simulator packages
(metaworld, robosuite) are imported only when an environment is built.
"""

from __future__ import annotations

from collections.abc import Sequence

from actionprior.embodiments import DEFAULT_EMBODIMENT_DIR, EmbodimentRegistry
from actionprior.sim.base import Expert, Obs, SimEnv, SimError, ensure_gl_backend
from actionprior.sim.suite import DEFAULT_SUITE, Suite, SuiteError, TaskEntry, load_suite

__all__ = [
    "DEFAULT_SUITE",
    "Expert",
    "Obs",
    "SimEnv",
    "SimError",
    "Suite",
    "SuiteError",
    "TaskEntry",
    "ensure_gl_backend",
    "load_suite",
    "make_env",
    "make_expert",
]


def make_env(
    embodiment: str,
    task: str,
    seed: int,
    image_size: int = 64,
    cameras: Sequence[str] | None = None,
    suite: str | Suite = DEFAULT_SUITE,
    registry: EmbodimentRegistry | None = None,
) -> SimEnv:
    """The environment for ``task`` on ``embodiment`` as the suite defines it (instructions, step limit)."""
    registry = registry or EmbodimentRegistry.from_dir(DEFAULT_EMBODIMENT_DIR)
    spec = registry[embodiment]
    entry = (suite if isinstance(suite, Suite) else load_suite(suite, registry)).entry(embodiment, task)
    if image_size <= 0:
        raise SimError(f"image_size must be positive, got {image_size}")
    simulator = spec.sim.get("simulator")
    if simulator == "metaworld":
        from actionprior.sim.metaworld import MetaWorldEnv

        return MetaWorldEnv(spec, entry, seed, image_size, cameras)
    if simulator == "robosuite":
        from actionprior.sim.robosuite_env import RobosuiteEnv

        return RobosuiteEnv(spec, entry, seed, image_size, cameras)
    raise SimError(
        f"embodiment '{embodiment}': sim.simulator is '{simulator}'; supported: 'metaworld', 'robosuite'"
    )


def make_expert(env: SimEnv) -> Expert:
    from actionprior.sim.experts import make_expert as _make_expert

    return _make_expert(env)
