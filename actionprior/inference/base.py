"""The closed-loop machinery every policy shares: validation, chunk execution, history ring buffer.

A chunked policy predicts ``H`` future actions at once. Executing all of them open-loop is brittle and
re-predicting every step wastes compute; how the chunks become one action per step is the policy's
execution mode (:mod:`actionprior.inference.execution`): ``replan`` executes the first ``replan_every``
actions of each chunk and then predicts a new chunk from the newest observation (the default),
``ensemble`` averages overlapping chunks, ``rtc`` inpaints each new chunk to continue the previous one.
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

from actionprior.inference.execution import ChunkExecutor, ChunkGuide, ExecutionConfig
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
    """Validates each observation, executes chunks as ``execution`` says, keeps history.

    Subclasses implement :meth:`predict_chunk`, returning ``[H, Da]`` unnormalised actions; those that can
    continue a previous chunk (``rtc``) set ``supports_guidance`` and accept its ``guide``.
    """

    supports_guidance = False

    def __init__(
        self,
        obs_spec: ObservationSpec,
        replan_every: int = 1,
        history_len: int = 0,
        execution: ExecutionConfig | None = None,
    ):
        if replan_every < 1:
            raise ValueError(f"replan_every must be >= 1, got {replan_every}")
        self.execution = execution or ExecutionConfig()
        if self.execution.mode == "rtc" and not self.supports_guidance:
            raise ValueError(
                f"{type(self).__name__} cannot execute 'rtc' (real-time chunking needs a flow decoder to "
                "guide); use --execution replan or ensemble"
            )
        self.obs_spec = obs_spec
        self.replan_every = replan_every
        self.history_len = history_len
        self.last_inference_ms = 0.0  # model time of the most recent chunk
        self.last_replanned = False  # the last act() computed a chunk
        self.last_switched = False  # the last act()'s action came (in part) from a chunk not used before
        self.reset()

    @abstractmethod
    def predict_chunk(
        self, observation: dict[str, Any], history: History, guide: ChunkGuide | None = None
    ) -> np.ndarray:
        """A chunk ``[H, Da]`` of unnormalised actions for an already validated observation (``guide``:
        what an ``rtc`` chunk must continue; only passed to policies with ``supports_guidance``)."""

    def reset(self) -> None:
        """Start a new episode: forget chunks, the step count and history."""
        self._executor = ChunkExecutor(self.replan_every, self.execution)
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

    @property
    def step(self) -> int:
        """The step of the episode whose action comes next."""
        return self._executor.step

    def _validate(self, observation: dict[str, Any]) -> dict[str, Any]:
        obs = validate_observation(observation, self.obs_spec)
        embodiment = obs["embodiment"]
        if self._embodiment is not None and embodiment != self._embodiment:
            raise ObservationError(
                f"embodiment changed from '{self._embodiment}' to '{embodiment}' within an episode; "
                "call reset() before controlling another robot"
            )
        self._embodiment = embodiment
        return obs

    def _chunk(self, obs: dict[str, Any], step: int, delay_steps: int) -> np.ndarray:
        """Predict (and time) the chunk of ``step``'s observation, guided in ``rtc`` mode."""
        guide = self._executor.guide(step, delay_steps) if self.execution.mode == "rtc" else None
        start = time.perf_counter()
        if guide is None:
            chunk = self.predict_chunk(obs, self._history)
        else:
            chunk = self.predict_chunk(obs, self._history, guide)
        chunk = np.asarray(chunk, dtype=np.float32)
        self.last_inference_ms = (time.perf_counter() - start) * 1e3
        action_dim = self.obs_spec.registry[obs["embodiment"]].action_dim
        if chunk.ndim != 2 or chunk.shape[1] != action_dim or len(chunk) == 0:
            raise RuntimeError(
                f"{type(self).__name__}.predict_chunk returned shape {chunk.shape}, "
                f"expected [H>=1, {action_dim}] for '{obs['embodiment']}'"
            )
        return chunk

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        """The action of the present step (computing a chunk when one is due)."""
        obs = self._validate(observation)
        executor = self._executor
        self.last_replanned = executor.due()
        if self.last_replanned:
            executor.add(self._chunk(obs, executor.step, self.execution.delay_steps), executor.step)
        action = executor.next_action()
        self.last_switched = executor.switched
        self._history.append(obs["state"], action)
        return action

    def plan(
        self,
        observation: dict[str, Any],
        step: int,
        delay_steps: int = 0,
        executed: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """A whole chunk ``[H, Da]`` for the observation of ``step``, for a client that executes chunks itself
        (asynchronous inference). ``executed``: the (states, actions) it executed since its last request,
        appended to the history first; ``delay_steps``: how many of the chunk's first actions will have been
        executed (from the previous chunk) when it arrives, frozen by ``rtc``."""
        obs = self._validate(observation)
        last = self._executor.last_request
        if last is not None and step < last:
            raise ObservationError(
                f"step {step} is before the previous request's step {last}; steps must not go back"
            )
        if delay_steps < 0:
            raise ObservationError(f"delay_steps must be >= 0, got {delay_steps}")
        if executed is not None:
            spec = self.obs_spec.registry[obs["embodiment"]]
            states, actions = executed
            if states.shape[1:] != (spec.state_dim,) or actions.shape[1:] != (spec.action_dim,):
                raise ObservationError(
                    f"executed states/actions must be [k, {spec.state_dim}] / [k, {spec.action_dim}] for "
                    f"'{spec.name}', got {list(states.shape)} / {list(actions.shape)}"
                )
            if not (np.isfinite(states).all() and np.isfinite(actions).all()):
                raise ObservationError("executed states/actions hold non-finite values")
            for state, action in zip(states, actions, strict=True):
                self._history.append(state, action)
        chunk = self._chunk(obs, step, delay_steps)
        self._executor.add(chunk, step, arrival=step + delay_steps)
        self.last_replanned = True
        return chunk

    def normalize_action(self, embodiment: str, actions: np.ndarray) -> np.ndarray | None:
        """Actions in the policy's normalised units (None: this policy has no normalisation)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "policy": type(self).__name__,
            "replan_every": self.replan_every,
            "history_len": self.history_len,
            "execution": self.execution.to_dict(),
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
        execution: ExecutionConfig | None = None,
    ):
        self.bounds = bounds or {}
        self.chunk_len = chunk_len
        self._rng = np.random.default_rng(seed)
        super().__init__(obs_spec, replan_every=chunk_len, execution=execution)

    def predict_chunk(
        self, observation: dict[str, Any], history: History, guide: ChunkGuide | None = None
    ) -> np.ndarray:
        dim = self.obs_spec.registry[observation["embodiment"]].action_dim
        low, high = self.bounds.get(observation["embodiment"], (-np.ones(dim), np.ones(dim)))
        return self._rng.uniform(low, high, size=(self.chunk_len, dim)).astype(np.float32)
