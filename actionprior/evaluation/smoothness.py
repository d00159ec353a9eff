"""Smoothness of an executed action sequence ``[T, Da]`` (one episode), per control step.

* ``rms_jerk``: root mean square, over steps and action dims, of the third difference
  ``a[t+3] - 3 a[t+2] + 3 a[t+1] - a[t]`` (the jerk with the control step as time unit); None below 4 steps.
* ``max_boundary_jump``: the largest ``|a[t] - a[t-1]|`` (Euclidean, over action dims) at the steps ``t`` where
  a new chunk took effect (None when no chunk boundary was crossed).
* ``action_tv``: total variation per step, ``sum_t |a[t] - a[t-1]|_1 / (T - 1)`` (per step, so that episodes of
  different lengths compare); None below 2 steps.

Computed in the policy's normalised action units where the policy has them (a checkpoint's Normalizer, also
through a server), else in raw units (the simulators' action range, [-1, 1]); the report says which.
``actionprior eval`` leaves the embodiment's gripper dims out (``gripper_action_dims``): a gripper command is
binary in the simulators, and its open/close switch is a decision, not the stutter these figures measure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rms_jerk(actions: np.ndarray) -> float | None:
    a = np.asarray(actions, dtype=np.float64)
    if len(a) < 4:
        return None
    return float(np.sqrt(np.mean(np.diff(a, n=3, axis=0) ** 2)))


def boundary_jumps(actions: np.ndarray, boundaries: Sequence[int]) -> list[float]:
    """``|a[t] - a[t-1]|`` at every boundary step ``t >= 1`` (steps of a chunk taking effect)."""
    a = np.asarray(actions, dtype=np.float64)
    return [float(np.linalg.norm(a[t] - a[t - 1])) for t in boundaries if 1 <= t < len(a)]


def action_tv(actions: np.ndarray) -> float | None:
    a = np.asarray(actions, dtype=np.float64)
    if len(a) < 2:
        return None
    return float(np.abs(np.diff(a, axis=0)).sum() / (len(a) - 1))


def smoothness(actions: np.ndarray, boundaries: Sequence[int]) -> dict[str, float | None]:
    jumps = boundary_jumps(actions, boundaries)
    return {
        "rms_jerk": rms_jerk(actions),
        "max_boundary_jump": max(jumps) if jumps else None,
        "action_tv": action_tv(actions),
    }


SMOOTHNESS_KEYS = ("rms_jerk", "max_boundary_jump", "action_tv")
