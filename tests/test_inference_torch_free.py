"""The wire protocol and the policy server import without torch and Lightning.

The LeRobot peer environment (benchmarks/peers/setup_lerobot.sh) installs actionprior with ``--no-deps``
beside LeRobot's own torch, and serves LeRobot policies with these modules
(benchmarks/peers/lerobot_server.py); a module-level ``import torch`` here would pull our torch pin there.
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
