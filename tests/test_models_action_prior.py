"""ActionPrior: overfitting, padding invariance, the action-only option, the sampler and un-normalisation."""

import numpy as np
import pytest
import torch

from actionprior.data.normalization import Normalizer
from actionprior.data.stats import compute_stats
from actionprior.data.synthetic import make_episode, synthetic_registry
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.training.action_scaling import ActionScaler

STATE_DIMS, ACTION_DIMS = [3, 5], [2, 4]


def _config(**overrides) -> ActionPriorConfig:
    base = dict(
        width=32,
        depth=1,
        heads=2,
        latent_dim=8,
        chunk_len=5,
        max_state_dim=5,
        max_action_dim=4,
        state_dims=STATE_DIMS,
        action_dims=ACTION_DIMS,
    )
    return ActionPriorConfig.from_dict({**base, **overrides})


def _batch(b: int = 6, h: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    eid = torch.arange(b) % 2
    sdm = torch.arange(5)[None] < torch.tensor(STATE_DIMS)[eid][:, None]
    adm = torch.arange(4)[None] < torch.tensor(ACTION_DIMS)[eid][:, None]
    step = torch.ones(b, h, dtype=torch.bool)
    step[0, 3:] = False
    step[3, 1:] = False
    real = step[:, :, None]
    return {
        "embodiment_id": eid,
        "state": torch.randn(b, h, 5, generator=g) * sdm[:, None] * real,
        "action": torch.randn(b, h, 4, generator=g) * adm[:, None] * real,
        "step_mask": step,
        "state_dim_mask": sdm,
        "action_dim_mask": adm,
    }


def _loss(model: ActionPrior, batch: dict[str, torch.Tensor], seed: int = 0) -> torch.Tensor:
    z = model.encode(batch["state"], batch["action"], batch["step_mask"], batch["embodiment_id"])
    g = torch.Generator().manual_seed(seed)
    return model.loss(
        z, batch["action"], batch["step_mask"], batch["action_dim_mask"], batch["embodiment_id"], g
    )


@pytest.mark.parametrize("io_mode", ["projection", "padded"])
def test_padded_dims_and_steps_do_not_change_z_or_loss(io_mode):
    torch.manual_seed(0)
    model = ActionPrior(_config(io_mode=io_mode)).eval()
    batch = _batch()
    garbage = dict(batch)
    fake_s = ~(batch["step_mask"][:, :, None] & batch["state_dim_mask"][:, None, :])
    fake_a = ~(batch["step_mask"][:, :, None] & batch["action_dim_mask"][:, None, :])
    garbage["state"] = batch["state"] + 50.0 * torch.randn_like(batch["state"]) * fake_s
    garbage["action"] = batch["action"] + 50.0 * torch.randn_like(batch["action"]) * fake_a
    assert not torch.equal(garbage["action"], batch["action"])
    with torch.no_grad():
        args = ("state", "action", "step_mask", "embodiment_id")
        z, z_garbage = (model.encode(*(b[k] for k in args)) for b in (batch, garbage))
        assert torch.allclose(z, z_garbage, atol=1e-5)
        assert _loss(model, batch).item() == pytest.approx(_loss(model, garbage).item(), rel=1e-5)
    # ...while a change on a real step and a real dim does change the loss.
    real = dict(batch)
    real["action"] = batch["action"].clone()
    real["action"][1, 0, 0] += 3.0
    with torch.no_grad():
        assert _loss(model, real).item() != pytest.approx(_loss(model, batch).item(), rel=1e-5)


def test_action_only_prior_ignores_state():
    torch.manual_seed(0)
    model = ActionPrior(_config(use_state=False)).eval()
    assert model.encoder.io.state_in is None
    batch = _batch()
    with torch.no_grad():
        z1 = model.encode(batch["state"], batch["action"], batch["step_mask"], batch["embodiment_id"])
        z2 = model.encode(None, batch["action"], batch["step_mask"], batch["embodiment_id"])
    assert torch.equal(z1, z2)
    with_state = ActionPrior(_config())
    with pytest.raises(ValueError, match="state must be"):
        with_state.encode(None, batch["action"], batch["step_mask"], batch["embodiment_id"])


def test_sampler_shapes_zero_padding_and_seeded_determinism():
    torch.manual_seed(0)
    model = ActionPrior(_config(sample_steps=4)).eval()
    z = torch.randn(6, 8)
    eid = torch.arange(6) % 2
    a = model.sample(z, eid, generator=torch.Generator().manual_seed(7))
    b = model.sample(z, eid, generator=torch.Generator().manual_seed(7))
    c = model.sample(z, eid, generator=torch.Generator().manual_seed(8))
    assert a.shape == (6, 5, 4)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.all(a[eid == 0][:, :, 2:] == 0), "embodiment 0 has 2 action dims; the rest must be zero"
    assert torch.all(a[eid == 1] != 0)
    # More Euler steps is a different (finer) integration of the same field.
    assert not torch.allclose(a, model.sample(z, eid, steps=12, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("io_mode", ["projection", "padded"])
def test_sampler_integrates_the_training_velocity(io_mode):
    """The sampler precomputes per-step conditioning and gathered weights; it must integrate exactly the
    field that training fits (``decoder.forward``), step by step."""
    torch.manual_seed(0)
    model = ActionPrior(_config(io_mode=io_mode)).eval()
    for p in model.decoder.parameters():  # adaLN-zero starts at the identity; make every path count
        torch.nn.init.normal_(p, std=0.2)
    z, eid = torch.randn(4, 8), torch.tensor([0, 1, 1, 0])
    steps = 6
    out = model.sample(z, eid, steps=steps, generator=torch.Generator().manual_seed(3))
    dim_mask = model.decoder.io.action_dim_mask(eid).float()
    x = torch.randn(4, 5, 4, generator=torch.Generator().manual_seed(3)) * dim_mask[:, None, :]
    with torch.no_grad():
        for i in range(steps):
            x = x + model.decoder(x, torch.full((4,), i / steps), z, eid) / steps
    assert torch.allclose(out, x, atol=1e-5)
    assert out.abs().sum() > 0


def test_tiny_model_overfits_one_batch_and_reconstructs_it():
    torch.manual_seed(0)
    model = ActionPrior(_config(width=64, chunk_len=4, latent_dim=16, flow_alpha=1.0, flow_beta=1.0))
    batch = _batch(b=4, h=4)
    batch["step_mask"][:] = True
    batch["action"] = torch.randn(4, 4, 4).clamp(-1.5, 1.5) * batch["action_dim_mask"][:, None]
    batch["state"] = torch.randn(4, 4, 5) * batch["state_dim_mask"][:, None]
    rep = 16  # many flow times per step for the same four windows

    def repeated(x: torch.Tensor) -> torch.Tensor:
        return x.repeat(rep, *([1] * (x.ndim - 1)))

    def loss_of(generator: torch.Generator) -> torch.Tensor:
        z = model.encode(batch["state"], batch["action"], batch["step_mask"], batch["embodiment_id"])
        keys = ("action", "step_mask", "action_dim_mask", "embodiment_id")
        return model.loss(repeated(z), *(repeated(batch[k]) for k in keys), generator=generator)

    with torch.no_grad():
        initial = loss_of(torch.Generator().manual_seed(0)).item()
    steps = 200
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = loss_of(g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        final = loss_of(torch.Generator().manual_seed(0)).item()
        z = model.encode(batch["state"], batch["action"], batch["step_mask"], batch["embodiment_id"])
        chunk = model.sample(z, batch["embodiment_id"], generator=torch.Generator().manual_seed(0))
    assert initial > 1.0 and final < 0.1, (initial, final)
    real = batch["action_dim_mask"][:, None, :].expand_as(chunk)
    error = (chunk - batch["action"]).abs()[real].mean().item()
    scale = batch["action"].abs()[real].mean().item()
    assert error < 0.08 * scale, (error, scale)


def test_config_names_every_problem():
    with pytest.raises(ValueError) as err:
        _config(width=30, heads=4, max_action_dim=3, io_mode="slots")
    message = str(err.value)
    for expected in ("max_action_dim 3 < largest action dim 4", "io_mode", "divisible by heads"):
        assert expected in message


def test_action_scaler_matches_the_numpy_normalizer():
    registry = synthetic_registry()
    rng = np.random.default_rng(0)
    episodes = [make_episode(spec, f"e{i}_{spec.name}", 30, rng) for i in range(3) for spec in registry]
    stats = compute_stats((ep.embodiment, ep.state, ep.action) for ep in episodes)
    normalizer = Normalizer(stats, registry, "quantile")
    scaler = ActionScaler(normalizer)
    a_max = registry.max_action_dim
    eid = torch.tensor([2, 0, 1, 0])
    raw = torch.zeros(4, 3, a_max)
    for i, e in enumerate(eid.tolist()):
        spec = registry[e]
        raw[i, :, : spec.action_dim] = torch.from_numpy(episodes[e].action[:3])
    normed = scaler.normalize(raw, eid)
    for i, e in enumerate(eid.tolist()):
        spec = registry[e]
        expected = normalizer.normalize(spec.name, "action", raw[i, :, : spec.action_dim].numpy())
        np.testing.assert_allclose(normed[i, :, : spec.action_dim].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert torch.all(normed[i, :, spec.action_dim :] == 0)
    assert torch.allclose(scaler.unnormalize(normed, eid), raw, atol=1e-5)
    mean = scaler.mean_chunk(eid, 3)
    assert mean.shape == (4, 3, a_max)
    assert mean[1, 2, 0].item() == pytest.approx(stats[registry[0].name]["action"]["mean"][0], rel=1e-6)
