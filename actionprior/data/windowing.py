"""Cutting training windows out of an episode (pure numpy, vectorised over several start times).

A window at time ``t`` (see docs/contracts.md) is the chunk ``s_t … s_{t+H-1}`` / ``a_t … a_{t+H-1}`` and the
history ``s_{t-K} … s_{t-1}`` / ``a_{t-K} … a_{t-1}``. Steps past the episode end and before its start are
zeros with a False mask; feature columns beyond the embodiment's own dims are zeros with a False dim mask.
Padding happens once per episode (:func:`pad_episode`); every window is then a contiguous slice of the
padded arrays, so a batch is two ``np.stack`` calls over views (:func:`gather_windows`). That is what keeps
the trajectory view fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PaddedEpisode:
    """An episode with ``history_len`` zero rows before it, ``chunk_len`` after it and zero feature columns
    up to the padded widths, so that every window is one contiguous slice ``[t, t + K + H)``."""

    state: np.ndarray  # [K + T + H, state_width]
    action: np.ndarray  # [K + T + H, action_width]
    length: int
    chunk_len: int
    history_len: int


def _padded(x: np.ndarray, before: int, after: int, width: int, name: str) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"{name} must be [T, D], got shape {x.shape}")
    if x.shape[1] > width:
        raise ValueError(f"{name} has {x.shape[1]} dims, more than the padded width {width}")
    out = np.zeros((before + x.shape[0] + after, width), dtype=np.float32)
    out[before : before + x.shape[0], : x.shape[1]] = x
    return out


def pad_episode(
    state: np.ndarray,
    action: np.ndarray,
    chunk_len: int,
    history_len: int,
    state_width: int,
    action_width: int,
) -> PaddedEpisode:
    if chunk_len < 1 or history_len < 0:
        raise ValueError(f"chunk_len must be >= 1 and history_len >= 0, got {chunk_len} and {history_len}")
    if state.shape[0] != action.shape[0]:
        raise ValueError(f"state has {state.shape[0]} steps but action has {action.shape[0]}")
    return PaddedEpisode(
        state=_padded(state, history_len, chunk_len, state_width, "state"),
        action=_padded(action, history_len, chunk_len, action_width, "action"),
        length=int(state.shape[0]),
        chunk_len=chunk_len,
        history_len=history_len,
    )


def gather_windows(episodes: Sequence[PaddedEpisode], starts: np.ndarray) -> dict[str, np.ndarray]:
    """One window per (episode, start) pair, stacked along a leading axis ``N = len(episodes)``.

    Returns ``state``/``action`` ``[N, H, width]``, ``step_mask`` ``[N, H]``, ``history_state``/
    ``history_action`` ``[N, K, width]``, ``history_mask`` ``[N, K]``. All episodes must share H and K.
    """
    if not episodes:
        raise ValueError("gather_windows needs at least one episode")
    h, k = episodes[0].chunk_len, episodes[0].history_len
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    lengths = np.array([ep.length for ep in episodes], dtype=np.int64)
    if len(starts) != len(episodes):
        raise ValueError(f"{len(episodes)} episodes but {len(starts)} start times")
    if (starts < 0).any() or (starts >= lengths).any():
        bad = [(int(t), int(n)) for t, n in zip(starts, lengths, strict=True) if not 0 <= t < n]
        raise ValueError(f"window start times outside their episodes (start, length): {bad}")
    # Padded row t covers time t - K, so rows [t, t + K + H) are the times t-K .. t+H-1: a view, no copy.
    span = k + h
    state = np.stack([ep.state[t : t + span] for ep, t in zip(episodes, starts, strict=True)])
    action = np.stack([ep.action[t : t + span] for ep, t in zip(episodes, starts, strict=True)])
    return {
        "state": np.ascontiguousarray(state[:, k:]),
        "action": np.ascontiguousarray(action[:, k:]),
        "step_mask": starts[:, None] + np.arange(h) < lengths[:, None],
        "history_state": np.ascontiguousarray(state[:, :k]),
        "history_action": np.ascontiguousarray(action[:, :k]),
        "history_mask": starts[:, None] + np.arange(-k, 0) >= 0,
    }


def cut_windows(
    state: np.ndarray,
    action: np.ndarray,
    starts: np.ndarray,
    chunk_len: int,
    history_len: int,
    state_width: int,
    action_width: int,
) -> dict[str, np.ndarray]:
    """Windows of one episode at each time in ``starts`` (``[N]`` ints in ``[0, T)``); see :func:`gather_windows`."""
    padded = pad_episode(state, action, chunk_len, history_len, state_width, action_width)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    return gather_windows([padded] * len(starts), starts)


def cut_window(
    state: np.ndarray,
    action: np.ndarray,
    t: int,
    chunk_len: int,
    history_len: int,
    state_width: int,
    action_width: int,
) -> dict[str, np.ndarray]:
    """The single window at time ``t`` (the arrays of :func:`cut_windows` without the leading axis)."""
    out = cut_windows(state, action, np.array([t]), chunk_len, history_len, state_width, action_width)
    return {key: value[0] for key, value in out.items()}
