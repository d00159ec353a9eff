"""The LeRobot peer end to end: export -> LeRobot's own ACT training (a few steps) -> the adapter serving it
with our websocket protocol, answered by our client.

Runs in the peer environment made by ``bash benchmarks/peers/setup_lerobot.sh`` (or the virtualenv named
by ``ACTIONPRIOR_PEER_VENV``); skipped, saying so, when it is absent.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from processes import run_or_fail_on_hang

from actionprior.data.exporters.lerobot import export
from actionprior.data.synthetic import synthetic_registry, write_synthetic_dataset
from actionprior.inference.client import PolicyClient, PolicyServerError

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("ACTIONPRIOR_PEER_VENV", ROOT / "benchmarks" / "peers" / ".venv-lerobot"))
PEER_PYTHON = VENV / "bin" / "python"
EMBODIMENT = "synth_arm7"  # 9-D state, 7-D action, cameras scene and wrist
N_ACTION_STEPS = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PEER_PYTHON.is_file(),
        reason=f"no LeRobot peer environment at {VENV}: run `bash benchmarks/peers/setup_lerobot.sh`",
    ),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def _train(dataset: Path, out: Path) -> dict:
    # A small ACT (its ResNet-18 backbone as shipped) so that two steps take seconds, not minutes.
    sets = [
        "dim_model=64",
        "dim_feedforward=128",
        "n_heads=2",
        "n_encoder_layers=1",
        "n_vae_encoder_layers=1",
    ]
    cmd = [
        str(PEER_PYTHON),
        str(ROOT / "benchmarks" / "peers" / "train_lerobot.py"),
        "--policy=act",
        f"--dataset={dataset}",
        f"--output-dir={out}",
        "--steps=2",
        "--batch-size=2",
        "--num-workers=0",
        "--device=cpu",
        "--chunk-size=8",
        f"--n-action-steps={N_ACTION_STEPS}",
        *(f"--set={s}" for s in sets),
    ]
    log = run_or_fail_on_hang(cmd, 900, ROOT, _env(), "train_lerobot.py")
    assert "policy.pretrained_backbone_weights" in log  # the change list is printed
    return json.loads((out / "peer_run.json").read_text())


def _start_server(policy_dir: Path, specs: Path) -> tuple[subprocess.Popen, str]:
    cmd = [
        str(PEER_PYTHON),
        str(ROOT / "benchmarks" / "peers" / "lerobot_server.py"),
        f"--policy={EMBODIMENT}={policy_dir}",
        "--port=0",
        f"--embodiments-dir={specs}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen = []
    try:
        while True:
            line = lines.get(timeout=300)
            seen.append(line)
            if line.startswith("serving LeRobot policies on "):
                return proc, line.split(" on ", 1)[1].strip()
    except queue.Empty:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("lerobot_server.py did not start within 300 s:\n" + "".join(seen)[-3000:])


def test_lerobot_act_trained_and_served_with_our_protocol(tmp_path: Path) -> None:
    src = tmp_path / "ours"
    write_synthetic_dataset(
        src, episodes_per_embodiment=3, length_range=(12, 16), image_size=32, embodiments=[EMBODIMENT]
    )
    dataset = tmp_path / "lerobot"
    export(src, dataset, embodiment=EMBODIMENT, frames="images")

    run = _train(dataset, tmp_path / "act")
    assert run["lerobot"] == "0.4.4" and run["policy"] == "act" and run["steps"] == 2
    assert len(run["step_seconds"]) == 2 and all(s > 0 for s in run["step_seconds"])
    assert run["total_wall_s"] >= sum(run["step_seconds"]) and run["parameters"] > 1_000_000
    changed = {c["field"]: c for c in run["changes"]}
    assert changed["policy.pretrained_backbone_weights"]["used"] is None
    assert changed["policy.push_to_hub"]["used"] is False
    assert (
        changed["policy.chunk_size"]["lerobot_default"] == 100 and changed["policy.chunk_size"]["used"] == 8
    )
    assert "dataset.video_backend" not in changed  # images in the parquet: nothing to decode

    specs = tmp_path / "embodiments"
    specs.mkdir()
    (specs / f"{EMBODIMENT}.yaml").write_text(yaml.safe_dump(synthetic_registry()[EMBODIMENT].to_dict()))
    proc, url = _start_server(tmp_path / "act", specs)
    try:
        with PolicyClient(url, timeout=120) as client:
            info = client.info()
            assert info["embodiments"] == {
                EMBODIMENT: {"state_dim": 9, "action_dim": 7, "cameras": ["scene", "wrist"]}
            }
            assert info["image_size"] == 32 and info["camera_names"] == ["scene", "wrist"]
            assert info["replan_every"] == N_ACTION_STEPS and info["lerobot"][EMBODIMENT]["type"] == "act"
            rng = np.random.default_rng(0)

            def observation() -> dict:
                return {
                    "embodiment": EMBODIMENT,
                    "state": rng.normal(size=9).astype(np.float32),
                    "images": {
                        c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in ("scene", "wrist")
                    },
                    "instruction": "reach the target",
                }

            for _ in range(2):  # two episodes: reset empties LeRobot's action queue
                client.reset()
                replanned = []
                for _ in range(N_ACTION_STEPS + 1):
                    action = client.act(observation())
                    assert action.shape == (7,) and action.dtype == np.float32 and np.isfinite(action).all()
                    replanned.append(client.last_replanned)
                assert replanned == [True] + [False] * (N_ACTION_STEPS - 1) + [True]
            bad = observation()
            bad["state"] = np.zeros(5, dtype=np.float32)
            with pytest.raises(PolicyServerError, match=r"must have shape \(9,\)"):
                client.act(bad)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
