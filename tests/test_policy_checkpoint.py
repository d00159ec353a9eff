"""Policy: checkpoint → raw-observation controller (batch building, un-normalisation, queue, stats check)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from policy_builders import (
    CAMERAS,
    CHUNK,
    HISTORY,
    IMAGE,
    raw_observation,
    tiny_stats,
    write_tiny_checkpoint,
)

from actionprior.data.normalization import Normalizer
from actionprior.data.stats import stats_fingerprint
from actionprior.data.synthetic import synthetic_registry
from actionprior.inference.observation import ObservationError, validate_observation
from actionprior.inference.policy import Policy, PolicyCheckpointError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def policy(ckpt) -> Policy:
    return Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, replan_every=2)


class FixedChunkModel(torch.nn.Module):
    """Returns a known normalised chunk and remembers the batch it was given."""

    def __init__(self, chunk: torch.Tensor):
        super().__init__()
        self.chunk = chunk
        self.batches: list[dict] = []

    def sample_actions(self, batch, steps=None, generator=None):
        self.batches.append(batch)
        return self.chunk.clone()


def test_checkpoint_policy_acts_in_raw_units_and_is_reproducible(policy: Policy) -> None:
    assert policy.describe()["camera_names"] == list(CAMERAS) and policy.chunk_len == CHUNK
    obs = raw_observation("synth_arm7", seed=1)
    policy.reset()
    first = [policy.act(obs) for _ in range(5)]
    assert all(a.shape == (7,) and a.dtype == np.float32 for a in first)
    policy.reset()
    np.testing.assert_array_equal(np.stack(first), np.stack([policy.act(obs) for _ in range(5)]))
    assert len(policy.history) == HISTORY  # capped ring buffer
    other = policy.fork()
    other.seed = 1
    other.reset()
    assert not np.allclose(other.act(obs), first[0])


def test_batch_matches_training_layout(policy: Policy) -> None:
    reg, norm = policy.registry, policy.normalizer
    policy.reset()
    obs = raw_observation("synth_arm4", seed=2)
    a0 = policy.act(obs)
    batch = policy.build_batch(validate_observation(obs, policy.obs_spec), policy.history)
    assert batch["images"].shape == (1, 2, 3, IMAGE, IMAGE) and batch["images"].dtype == torch.uint8
    np.testing.assert_array_equal(batch["images"][0, 1].permute(1, 2, 0).numpy(), obs["images"]["wrist"])
    assert batch["camera_mask"].tolist() == [[True, True]]
    assert batch["embodiment_id"].item() == reg.id_of("synth_arm4")
    # one past step, right-aligned; normalised with the training statistics; zero padding beyond dim 4
    assert batch["history_mask"].tolist() == [[False, False, True]]
    assert batch["history_state"].shape == (1, HISTORY, reg.max_state_dim)
    np.testing.assert_allclose(
        batch["history_action"][0, -1, :4].numpy(), norm.normalize("synth_arm4", "action", a0), rtol=1e-5
    )
    np.testing.assert_allclose(
        batch["history_state"][0, -1, :6].numpy(),
        norm.normalize("synth_arm4", "state", obs["state"]),
        rtol=1e-5,
    )
    assert not batch["history_action"][0, :, 4:].any() and not batch["history_state"][0, :2].any()


def test_actions_are_unnormalised_chunk_prefixes() -> None:
    reg = synthetic_registry()
    norm = Normalizer(tiny_stats(reg), reg)
    chunk = torch.linspace(-1, 1, CHUNK * reg.max_action_dim).reshape(1, CHUNK, reg.max_action_dim)
    model = FixedChunkModel(chunk)
    pol = Policy(model, norm, CAMERAS, IMAGE, chunk_len=CHUNK, history_len=0, replan_every=3)
    obs = raw_observation("synth_arm8")
    got = np.stack([pol.act(obs) for _ in range(4)])
    expected = norm.unnormalize("synth_arm8", "action", chunk[0, :, :8].numpy())
    np.testing.assert_allclose(got[:3], expected[:3], rtol=1e-6)
    np.testing.assert_allclose(got[3], expected[0], rtol=1e-6)  # replanned after 3
    assert len(model.batches) == 2
    with pytest.raises(ValueError, match=r"replan_every must be in \[1, chunk_len=4\]"):
        Policy(model, norm, CAMERAS, IMAGE, chunk_len=CHUNK, replan_every=5)


def test_policy_refuses_foreign_statistics(ckpt, tmp_path) -> None:
    pol = Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY)
    fp = pol.normalizer.fingerprint
    assert Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, expected_stats=fp)
    with pytest.raises(
        PolicyCheckpointError,
        match=rf"the expected fingerprint 0000 is neither its normalisation fingerprint {fp} \(statistics and "
        r"mode\) nor the fingerprint \w+ that the stats.json of its statistics records",
    ):
        Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, expected_stats="0000")
    # A dataset's own stats.json (the format write_stats writes), as a file or as its folder: the exact
    # statistics the model was trained with are accepted, others refused.
    for name, seed in (("same", 0), ("other", 1)):
        (tmp_path / name).mkdir()
        stats = tiny_stats(pol.registry, seed=seed)
        payload = {"schema_version": 1, "fingerprint": stats_fingerprint(stats), "embodiments": stats}
        (tmp_path / name / "stats.json").write_text(json.dumps(payload))
    # ... and so is the `fingerprint` field of that stats.json (issue 26: it was refused as foreign).
    recorded = json.loads((tmp_path / "same" / "stats.json").read_text())["fingerprint"]
    assert recorded != fp
    assert Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, expected_stats=recorded)
    other_recorded = json.loads((tmp_path / "other" / "stats.json").read_text())["fingerprint"]
    with pytest.raises(PolicyCheckpointError, match=f"expected fingerprint {other_recorded} is neither"):
        Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, expected_stats=other_recorded)
    same = tmp_path / "same" / "stats.json"
    assert Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, expected_stats=same)
    assert Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, expected_stats=same.parent)
    other = tmp_path / "other" / "stats.json"
    with pytest.raises(PolicyCheckpointError, match="stats.json give .*wrong statistics"):
        Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, expected_stats=other)
    with pytest.raises(PolicyCheckpointError, match="does not record history_len"):
        Policy.from_checkpoint(ckpt, image_size=IMAGE)


def test_policy_validates_raw_observations(policy: Policy) -> None:
    policy.reset()
    obs = raw_observation("synth_arm4", cameras=("scene",))
    with pytest.raises(ObservationError, match=r"missing \['wrist'\]"):
        policy.act(obs)
    obs = raw_observation("synth_arm4")
    obs["images"]["scene"] = np.zeros((IMAGE * 2, IMAGE * 2, 4), np.uint8)  # any size, but RGB
    with pytest.raises(
        ObservationError, match=r"image 'scene' must be uint8 \[h, w, 3\] \(rgb\), got shape \(64, 64, 4\)"
    ):
        policy.act(obs)
