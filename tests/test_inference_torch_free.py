"""The wire protocol, the policy server, the client and the LIBERO runner import (and work) without torch and
Lightning.

The LeRobot peer environment (benchmarks/peers/setup_lerobot.sh) installs actionprior with ``--no-deps``
beside LeRobot's own torch, and serves LeRobot policies with these modules
(benchmarks/peers/lerobot_server.py); a module-level ``import torch`` here would pull our torch pin there. The LIBERO
environment (scripts/libero_env.sh) has no torch at all: its runner talks to our server through the client with
numpy, msgpack and websockets only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TORCH_FREE = (
    "actionprior.inference.protocol",
    "actionprior.inference.server",
    "actionprior.inference.base",
    "actionprior.inference.observation",
    "actionprior.inference.client",
    "actionprior.embodiments",
    "actionprior.evaluation.libero.runner",
    "actionprior.evaluation.libero.mapping",
    "actionprior.evaluation.libero.episodes",
)

BLOCKER = textwrap.dedent(
    """
    import importlib, importlib.abc, sys

    BLOCKED = ("torch", "lightning", "pytorch_lightning", "torchvision", "transformers")

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: this module must import without it")
            return None

    sys.meta_path.insert(0, Refuse())
    for module in sys.argv[1:]:
        importlib.import_module(module)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("imported", len(sys.argv) - 1)
    """
)


def test_protocol_and_server_import_without_torch_or_lightning() -> None:
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, *TORCH_FREE],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"imported {len(TORCH_FREE)}"


def test_the_blocker_does_block() -> None:
    """The check above can fail: a module that imports torch is refused."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, "actionprior.inference.policy"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "is blocked" in result.stderr


ROUND_TRIP = textwrap.dedent(
    """
    import numpy as np

    from actionprior.embodiments import EmbodimentRegistry
    from actionprior.evaluation.libero.mapping import to_env_action, to_observation
    from actionprior.inference.base import RandomPolicy
    from actionprior.inference.client import PolicyClient
    from actionprior.inference.observation import ObservationSpec
    from actionprior.inference.server import PolicyServer

    registry = EmbodimentRegistry.from_dir(names=["libero_panda"])
    policy = RandomPolicy(ObservationSpec(registry, ("scene", "wrist"), 32), chunk_len=4, seed=3)
    raw = {
        "robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
        "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
        "robot0_gripper_qpos": np.array([0.02, -0.02]),
        "agentview_image": np.zeros((32, 32, 3), np.uint8),
        "robot0_eye_in_hand_image": np.zeros((32, 32, 3), np.uint8),
    }
    with PolicyServer(policy, port=0) as server, PolicyClient(server.url) as client:
        info = client.info()["embodiments"]["libero_panda"]
        assert info == {"state_dim": 8, "action_dim": 7, "cameras": ["scene", "wrist"]}, info
        client.reset()
        actions = [to_env_action(client.act(to_observation(raw, "pick up the bowl", info["cameras"]))) for _ in range(5)]
        assert client.last_replanned  # the fifth action started a new chunk of 4
    assert all(a.shape == (7,) and np.all(np.abs(a) <= 1) for a in actions)
    assert len({a.tobytes() for a in actions}) == 5  # random actions: a real answer each step
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("round trip", len(actions))
    """
)


def test_client_round_trip_without_torch_or_lightning() -> None:
    """What the LIBERO environment runs: a LIBERO observation through the client to a real server and back."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER.replace('print("imported"', '_ = ("imported"') + ROUND_TRIP],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("round trip 5")
