"""One batch contract: the training stream and the policy build the same tensors for the same window."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from actionprior.data.batch import HISTORY_KEYS, BatchBuilder, to_torch
from actionprior.data.normalization import Normalizer
from actionprior.data.shards import iter_episodes, iter_shard, shard_source
from actionprior.data.stream import WindowStream
from actionprior.data.synthetic import synthetic_registry
from actionprior.data.writer import load_stats
from actionprior.inference.base import History
from actionprior.inference.policy import Policy

CHUNK, HISTORY = 4, 3


class RecordingModel(torch.nn.Module):
    """Stands in for the VLA: remembers the batch and returns a zero chunk."""

    def __init__(self, action_dim: int):
        super().__init__()
        self.action_dim = action_dim
        self.batches: list[dict] = []

    def sample_actions(self, batch, steps=None, generator=None):
        self.batches.append(batch)
        return torch.zeros(1, CHUNK, self.action_dim)


@pytest.mark.parametrize("t", [0, 1, 2, 3, 7])  # before, at and after the history fills up
def test_training_window_and_policy_batch_are_identical(synthetic_dataset, t) -> None:
    registry = synthetic_registry()
    normalizer = Normalizer(load_stats(synthetic_dataset.path), registry)
    episode = next(iter_episodes(synthetic_dataset.path, registry, with_frames=True))
    cameras = ["scene", "wrist"]

    # Training path: the stream decodes the episode's sample and collates the window at time t.
    source = shard_source(synthetic_dataset.path, "observation", "all", 0.0)
    stream = WindowStream([source], registry, normalizer, view="observation", split="all", chunk_len=CHUNK,
                          history_len=HISTORY, camera_names=cameras, windows_per_episode=1)  # fmt: skip
    sample = next(s for url in source.urls for s in iter_shard(url) if s["__key__"] == episode.key)
    pooled = stream._decode(sample, np.random.default_rng(0))
    pooled.timesteps = np.array([t])
    pooled.images, pooled.camera_mask = stream._decode_frames(
        sample, json.loads(sample["meta.json"]), pooled.timesteps, "x"
    )
    train = stream.collate([pooled], np.array([t]), np.array([0]))
    frames = {cam: episode.frames[cam][t] for cam in cameras}

    # Inference path: a Policy that lived through steps 0..t-1 of the same episode.
    model = RecordingModel(registry.max_action_dim)
    size = frames["scene"].shape[0]
    policy = Policy(model, normalizer, cameras, size, chunk_len=CHUNK, history_len=HISTORY, replan_every=1)
    policy.reset()
    history = History(HISTORY)
    for step in range(t):
        history.append(episode.state[step], episode.action[step])
    observation = {"embodiment": episode.embodiment, "state": episode.state[t], "images": frames,
                   "instruction": episode.instruction}  # fmt: skip
    served = policy.build_batch(observation, history)

    want = to_torch(train)
    for key in (*HISTORY_KEYS, "embodiment_id", "state_dim_mask", "action_dim_mask", "images", "camera_mask"):
        assert served[key].dtype == want[key].dtype, key
        assert torch.equal(served[key], want[key]), key
    assert served["instruction"] == [episode.instruction]
    assert "state" not in served  # sampling never reads the future chunk, so inference does not invent one


def test_builder_refuses_cameras_of_different_sizes() -> None:
    builder = BatchBuilder(synthetic_registry(), None, CHUNK, HISTORY, ["scene", "wrist"])
    with pytest.raises(ValueError, match="share one HxWx3 size"):
        builder.cameras({"scene": np.zeros((8, 8, 3), np.uint8), "wrist": np.zeros((4, 4, 3), np.uint8)})


def test_inference_never_imports_lightning(tmp_path) -> None:
    """The policy package acts from a checkpoint without Lightning (a robot computer need not install it)."""
    code = f"""
import sys
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
from policy_builders import raw_observation
from actionprior.inference.policy import Policy
policy = Policy.from_checkpoint({str(tmp_path / "tiny.ckpt")!r}, image_size=32, history_len=3)
policy.reset()
print(policy.act(raw_observation("synth_arm7")).shape)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics"))
assert not bad, bad
"""
    from policy_builders import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(7,)")
