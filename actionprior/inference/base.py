"""The closed-loop machinery every policy shares: validation, action-chunk queue, history ring buffer.

A chunked policy predicts ``H`` future actions at once. Executing all of them open-loop is brittle and
re-predicting every step wastes compute; the usual compromise, done here, is to execute the first
``replan_every`` actions of each chunk and then predict a new chunk from the newest observation.
The history ring buffer holds the last ``history_len`` (state, executed action) pairs, which the VLA
compresses into its history latent.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, Protocol, runtime_checkable

import numpy as np

from actionprior.inference.observation import ObservationError, ObservationSpec, validate_observation


@runtime_checkable
class PolicyLike(Protocol):
    """Anything that maps raw observations to unnormalised actions: a Policy or a PolicyClient."""

    def act(self, observation: dict[str, Any]) -> np.ndarray: ...

    def reset(self) -> None: ...


class History:
    """The last ``length`` (state, action) pairs of one episode, oldest first, in raw units."""

    def __init__(self, length: int):
        if length < 0:
            raise ValueError(f"history length must be >= 0, got {length}")
        self.length = length
        self.states: deque[np.ndarray] = deque(maxlen=max(length, 1))
        self.actions: deque[np.ndarray] = deque(maxlen=max(length, 1))

    def append(self, state: np.ndarray, action: np.ndarray) -> None:
        if self.length == 0:
            return
        self.states.append(np.asarray(state, dtype=np.float32))
        self.actions.append(np.asarray(action, dtype=np.float32))

    def __len__(self) -> int:
        return 0 if self.length == 0 else len(self.states)

    def recent(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The remembered ``states [n, Ds]`` and ``actions [n, Da]``, oldest first (None, None when empty)."""
        if not len(self):
            return None, None
        return np.stack(self.states), np.stack(self.actions)


class BasePolicy(ABC):
    """Validates each observation, replans every ``replan_every`` steps, keeps history.

    Subclasses implement :meth:`predict_chunk`, returning ``[H, Da]`` unnormalised actions.
    """

    def __init__(self, obs_spec: ObservationSpec, replan_every: int = 1, history_len: int = 0):
        if replan_every < 1:
            raise ValueError(f"replan_every must be >= 1, got {replan_every}")
        self.obs_spec = obs_spec
        self.replan_every = replan_every
        self.history_len = history_len
        self.last_inference_ms = 0.0  # model time of the most recent replan
        self.last_replanned = False
        self.reset()

    @abstractmethod
    def predict_chunk(self, observation: dict[str, Any], history: History) -> np.ndarray:
        """A chunk ``[H, Da]`` of unnormalised actions for an already validated observation."""

    def reset(self) -> None:
        """Start a new episode: forget queued actions and history."""
        self._queue: deque[np.ndarray] = deque()
        self._history = History(self.history_len)
        self._embodiment: str | None = None

    def fork(self) -> BasePolicy:
        """A policy with fresh episode state that shares this one's weights (one per server client)."""
        other = copy.copy(self)
        other.reset()
        return other

    @property
    def history(self) -> History:
        return self._history

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        obs = validate_observation(observation, self.obs_spec)
        embodiment = obs["embodiment"]
        if self._embodiment is not None and embodiment != self._embodiment:
            raise ObservationError(
                f"embodiment changed from '{self._embodiment}' to '{embodiment}' within an episode; "
                "call reset() before controlling another robot"
            )
        self._embodiment = embodiment
        self.last_replanned = not self._queue
        if self.last_replanned:
            start = time.perf_counter()
            chunk = np.asarray(self.predict_chunk(obs, self._history), dtype=np.float32)
            self.last_inference_ms = (time.perf_counter() - start) * 1e3
            action_dim = self.obs_spec.registry[embodiment].action_dim
            if chunk.ndim != 2 or chunk.shape[1] != action_dim or len(chunk) == 0:
                raise RuntimeError(
                    f"{type(self).__name__}.predict_chunk returned shape {chunk.shape}, "
                    f"expected [H>=1, {action_dim}] for '{embodiment}'"
                )
            self._queue.extend(chunk[: self.replan_every])
        action = self._queue.popleft()
        self._history.append(obs["state"], action)
        return action.copy()

    def describe(self) -> dict[str, Any]:
        return {
            "policy": type(self).__name__,
            "replan_every": self.replan_every,
            "history_len": self.history_len,
            **self.obs_spec.to_dict(),
        }


class RandomPolicy(BasePolicy):
    """Uniform random actions within per-dimension bounds: the floor any trained policy must beat."""

    def __init__(
        self,
        obs_spec: ObservationSpec,
        bounds: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        chunk_len: int = 1,
        seed: int = 0,
    ):
        self.bounds = bounds or {}
        self.chunk_len = chunk_len
        self._rng = np.random.default_rng(seed)
        super().__init__(obs_spec, replan_every=chunk_len)

    def predict_chunk(self, observation: dict[str, Any], history: History) -> np.ndarray:
        dim = self.obs_spec.registry[observation["embodiment"]].action_dim
        low, high = self.bounds.get(observation["embodiment"], (-np.ones(dim), np.ones(dim)))
        return self._rng.uniform(low, high, size=(self.chunk_len, dim)).astype(np.float32)
