"""Serve trained LeRobot policies (ACT, Diffusion Policy) with actionprior's websocket protocol, so that
``actionprior eval --via-server`` runs them on exactly the episodes ours get. Runs in the peer environment:

    benchmarks/peers/.venv-lerobot/bin/python benchmarks/peers/lerobot_server.py \\
        --policy robosuite_panda_osc=runs/peers/act-panda --policy metaworld_sawyer=runs/peers/act-sawyer
    actionprior eval --via-server ws://127.0.0.1:8765 --suite sim-default --only robosuite_panda_osc ...

One LeRobot policy per embodiment (a LeRobot dataset, hence a LeRobot policy, has one state and action
size). PATH is a ``train_lerobot.py`` output folder (its ``checkpoints/last/pretrained_model``) or a
``pretrained_model`` folder. Each policy is loaded with its own pre- and post-processor, as
``lerobot_eval`` loads it, and acts as in LeRobot's own rollout (``lerobot.scripts.lerobot_eval.rollout``):
the observation goes through ``preprocess_observation`` (cameras to float CHW in [0, 1] under
``observation.images.<camera>``, state to ``observation.state``), gets the instruction as ``task``, then the
preprocessor (batching, normalisation), ``policy.select_action`` (LeRobot's queues: a chunk is predicted
when the action queue is empty and ``n_action_steps`` of it are executed; Diffusion Policy keeps its last
``n_obs_steps`` observations) and the postprocessor (unnormalisation). The raw action goes back.

The server is actionprior's (``actionprior.inference.server.PolicyServer``): every connection gets its own
episode state (here: its own copy of each LeRobot policy object, sharing the weights, with its own queues).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actionprior.data.images import ImageFit
from actionprior.embodiments import EmbodimentRegistry
from actionprior.inference.base import BasePolicy, History
from actionprior.inference.observation import ObservationSpec
from actionprior.inference.server import DEFAULT_HOST, DEFAULT_PORT, PolicyServer

CAMERA_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"


class PeerPolicyError(ValueError):
    """A LeRobot policy folder cannot be served for the embodiment it was given; one line says why."""


def pretrained_dir(path: Path) -> Path:
    """The ``pretrained_model`` folder of a training output folder, or ``path`` itself."""
    for candidate in (path, path / "checkpoints" / "last" / "pretrained_model", path / "pretrained_model"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise PeerPolicyError(
        f"{path}: no LeRobot policy (config.json + model.safetensors) here, in checkpoints/last/pretrained_model "
        "or in pretrained_model"
    )


@dataclass
class LoadedPolicy:
    """One embodiment's LeRobot policy with its processors, as ``lerobot_eval`` loads them."""

    path: Path
    policy: Any  # lerobot PreTrainedPolicy
    preprocessor: Any
    postprocessor: Any
    cameras: tuple[str, ...]
    image_hw: tuple[int, int] | None
    state_dim: int
    action_dim: int

    @property
    def kind(self) -> str:
        return str(self.policy.config.type)

    @property
    def n_action_steps(self) -> int:
        return int(self.policy.config.n_action_steps)

    def describe(self) -> dict[str, Any]:
        cfg = self.policy.config
        return {
            "type": self.kind,
            "path": str(self.path),
            "n_action_steps": self.n_action_steps,
            "chunk_size": int(getattr(cfg, "chunk_size", getattr(cfg, "horizon", 0))),
            "n_obs_steps": int(cfg.n_obs_steps),
        }


def load_policy(path: Path, device: str, n_action_steps: int | None = None) -> LoadedPolicy:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    folder = pretrained_dir(path)
    config = PreTrainedConfig.from_pretrained(folder)
    config.device = device
    if n_action_steps is not None:
        # An evaluation choice LeRobot's eval also offers (--policy.n_action_steps); training is unchanged.
        config.n_action_steps = n_action_steps
    policy = get_policy_class(config.type).from_pretrained(folder, config=config)
    policy.eval()
    preprocessor, postprocessor = make_pre_post_processors(
        policy_cfg=config,
        pretrained_path=str(folder),
        preprocessor_overrides={"device_processor": {"device": device}},
    )
    images = {k: ft.shape for k, ft in config.input_features.items() if k.startswith(CAMERA_PREFIX)}
    shapes = {tuple(s[1:]) for s in images.values()}
    if len(shapes) > 1:
        raise PeerPolicyError(f"{folder}: cameras of different sizes {sorted(shapes)}")
    return LoadedPolicy(
        path=folder,
        policy=policy,
        preprocessor=preprocessor,
        postprocessor=postprocessor,
        cameras=tuple(k[len(CAMERA_PREFIX) :] for k in images),
        image_hw=shapes.pop() if shapes else None,  # type: ignore[arg-type]
        state_dim=int(config.input_features[STATE_KEY].shape[0]) if STATE_KEY in config.input_features else 0,
        action_dim=int(config.output_features[ACTION_KEY].shape[0]),
    )


def _queued_actions(policy: Any) -> int | None:
    """Actions LeRobot's policy still holds in its queue (ACT: ``_action_queue``, Diffusion Policy:
    ``_queues['action']``); None for a policy without one."""
    queue = getattr(policy, "_action_queue", None)
    if queue is None:
        queues = getattr(policy, "_queues", None)
        queue = queues.get(ACTION_KEY) if isinstance(queues, dict) else None
    return None if queue is None else len(queue)


class LeRobotPolicy(BasePolicy):
    """actionprior's policy interface over LeRobot policies, one per embodiment."""

    def __init__(self, policies: dict[str, LoadedPolicy], registry: EmbodimentRegistry):
        self.policies = policies
        sizes = {p.image_hw for p in policies.values() if p.image_hw is not None}
        if any(h != w for h, w in sizes) or len(sizes) > 1:
            raise PeerPolicyError(
                f"the policies read images of {sorted(sizes)}; actionprior's protocol sends one square size"
            )
        cameras: list[str] = []
        for name, loaded in policies.items():
            spec = registry[name]
            if (spec.state_dim, spec.action_dim) != (loaded.state_dim, loaded.action_dim):
                raise PeerPolicyError(
                    f"{loaded.path}: state/action dims {loaded.state_dim}/{loaded.action_dim}, but embodiment "
                    f"'{name}' has {spec.state_dim}/{spec.action_dim}; was it trained on an export of '{name}'?"
                )
            missing = [c for c in loaded.cameras if c not in spec.cameras]
            if missing:
                raise PeerPolicyError(
                    f"{loaded.path}: cameras {missing} are not cameras of embodiment '{name}'"
                )
            cameras += [c for c in loaded.cameras if c not in cameras]
        size = sizes.pop()[0] if sizes else None
        # Each embodiment sends exactly the cameras its LeRobot policy reads.
        specs = [dataclasses.replace(registry[name], cameras=policies[name].cameras) for name in policies]
        steps = {p.n_action_steps for p in policies.values()}
        super().__init__(
            ObservationSpec(EmbodimentRegistry(specs), tuple(cameras), size), replan_every=min(steps)
        )
        # Camera frames come at any size (as to our policies): fitted like the exported training frames were.
        self._fit = ImageFit(size) if size else None

    def reset(self) -> None:
        super().reset()
        # Per connection and episode: a shallow copy of the LeRobot policy (same weights, own queues).
        self._live: dict[str, Any] = {}

    def _episode_policy(self, embodiment: str) -> Any:
        if embodiment not in self._live:
            live = copy.copy(self.policies[embodiment].policy)
            ensembler = getattr(live, "temporal_ensembler", None)
            if ensembler is not None:
                live.temporal_ensembler = copy.deepcopy(ensembler)
            live.reset()
            self._live[embodiment] = live
        return self._live[embodiment]

    def _batch(self, obs: dict[str, Any]) -> dict[str, Any]:
        from lerobot.envs.utils import preprocess_observation

        loaded = self.policies[obs["embodiment"]]
        raw = {
            "pixels": {cam: self._fitted(obs["images"][cam])[None] for cam in loaded.cameras},
            "agent_pos": np.asarray(obs["state"], dtype=np.float32)[None],
        }
        batch = preprocess_observation(raw)
        batch["task"] = [obs["instruction"]]
        return loaded.preprocessor(batch)

    def _fitted(self, frame: np.ndarray) -> np.ndarray:
        return self._fit(frame) if self._fit is not None else frame

    def _select(self, policy: Any, obs: dict[str, Any]) -> np.ndarray:
        import torch

        loaded = self.policies[obs["embodiment"]]
        with torch.inference_mode():
            action = policy.select_action(self._batch(obs))
            action = loaded.postprocessor(action)
        return action.detach().to("cpu").numpy().reshape(-1).astype(np.float32)

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        obs = self._validate(observation)
        embodiment = obs["embodiment"]
        policy = self._episode_policy(embodiment)
        self.last_replanned = _queued_actions(policy) in (0, None)
        start = time.perf_counter()
        action = self._select(policy, obs)
        if self.last_replanned:
            self.last_inference_ms = (time.perf_counter() - start) * 1e3
        return action

    def predict_chunk(self, observation: dict[str, Any], history: History) -> np.ndarray:
        """The ``n_action_steps`` actions LeRobot executes from ``observation`` at an episode's start (a fresh
        copy of the policy; Diffusion Policy's observation queue is filled with this observation)."""
        live = copy.copy(self.policies[observation["embodiment"]].policy)
        live.reset()
        steps = self.policies[observation["embodiment"]].n_action_steps
        return np.stack([self._select(live, observation) for _ in range(steps)])

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        steps = {name: p.n_action_steps for name, p in self.policies.items()}
        info["replan_every"] = next(iter(steps.values())) if len(set(steps.values())) == 1 else steps
        info["lerobot"] = {name: p.describe() for name, p in self.policies.items()}
        return info


def parse_policies(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise PeerPolicyError(f"--policy {item!r}: expected EMBODIMENT=PATH")
        if name in out:
            raise PeerPolicyError(f"--policy: embodiment '{name}' given twice")
        out[name] = Path(path)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="EMBODIMENT=PATH",
        help="a trained LeRobot policy for one embodiment (repeat for several)",
    )
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (printed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="torch seed (Diffusion Policy samples noise)")
    p.add_argument(
        "--n-action-steps",
        type=int,
        default=None,
        help="actions executed per predicted chunk (default: as trained, LeRobot's n_action_steps)",
    )
    p.add_argument(
        "--embodiments-dir",
        type=Path,
        default=None,
        help="embodiment specs (default: actionprior's configs/embodiments, as `actionprior eval` uses)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        torch.manual_seed(args.seed)
        paths = parse_policies(args.policy)
        kwargs = {"names": list(paths)}
        registry = (
            EmbodimentRegistry.from_dir(args.embodiments_dir, **kwargs)
            if args.embodiments_dir
            else EmbodimentRegistry.from_dir(**kwargs)
        )
        loaded = {name: load_policy(path, args.device, args.n_action_steps) for name, path in paths.items()}
        policy = LeRobotPolicy(loaded, registry)
    except (PeerPolicyError, ValueError, FileNotFoundError) as exc:
        print(f"lerobot_server.py: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    server = PolicyServer(policy, args.host, args.port)
    # One line with the URL first (scripts and tests read it), then what the policy expects.
    print(f"serving LeRobot policies on {server.url}", flush=True)
    print(json.dumps(policy.describe()), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
