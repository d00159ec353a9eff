"""Flow-matching maths: time sampler, interpolation, masked loss, Euler integration."""

import pytest
import torch

from actionprior.models.flow_matching import (
    euler_sample,
    interpolate,
    masked_mse,
    sample_flow_time,
    target_velocity,
)


@pytest.mark.parametrize(("alpha", "beta"), [(1.5, 1.0), (1.0, 1.5), (2.0, 3.0), (0.5, 0.7)])
def test_flow_time_is_beta_distributed(alpha, beta):
    t = sample_flow_time(40_000, alpha, beta, generator=torch.Generator().manual_seed(0))
    assert t.shape == (40_000,)
    assert t.min() > 0.0 and t.max() < 1.0
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    assert t.mean().item() == pytest.approx(mean, abs=0.01)
    assert t.var().item() == pytest.approx(var, rel=0.05)


def test_flow_time_is_seeded():
    a = sample_flow_time(16, 2.0, 3.0, generator=torch.Generator().manual_seed(3))
    b = sample_flow_time(16, 2.0, 3.0, generator=torch.Generator().manual_seed(3))
    c = sample_flow_time(16, 2.0, 3.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flow_time_rejects_bad_parameters():
    with pytest.raises(ValueError, match="alpha=0"):
        sample_flow_time(4, alpha=0.0)


def test_interpolation_endpoints_and_target():
    noise, target = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    assert torch.allclose(interpolate(noise, target, torch.zeros(3)), noise)
    assert torch.allclose(interpolate(noise, target, torch.ones(3)), target)
    mid = interpolate(noise, target, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(mid[1], 0.5 * noise[1] + 0.5 * target[1])
    assert torch.allclose(target_velocity(noise, target), target - noise)


def test_masked_mse_counts_only_real_steps_and_dims():
    pred = torch.zeros(2, 3, 2)
    target = torch.full((2, 3, 2), 100.0)  # huge everywhere it is masked out
    target[0, :2, 0] = 1.0
    target[1, 0, :] = 2.0
    step_mask = torch.tensor([[True, True, False], [True, False, False]])
    dim_mask = torch.tensor([[True, False], [True, True]])
    # real elements: sample 0 -> 2 steps x 1 dim of value 1; sample 1 -> 1 step x 2 dims of value 2
    expected = (2 * 1.0 + 2 * 4.0) / 4
    assert masked_mse(pred, target, step_mask, dim_mask).item() == pytest.approx(expected)


def test_masked_mse_names_bad_shapes():
    with pytest.raises(ValueError, match="step_mask"):
        masked_mse(
            torch.zeros(2, 3, 2),
            torch.zeros(2, 3, 2),
            torch.ones(2, 4, dtype=torch.bool),
            torch.ones(2, 2, dtype=torch.bool),
        )


def test_euler_integrates_exactly_for_constant_and_linear_velocity():
    noise, target = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    x1 = euler_sample(lambda x, t, i: target_velocity(noise, target), noise, steps=7)
    assert torch.allclose(x1, target, atol=1e-5)
    # dx/dt = t: Euler with N steps gives sum_i (i/N)(1/N) = (N - 1) / (2N)
    out = euler_sample(lambda x, t, i: t[:, None, None].expand_as(x), torch.zeros(2, 1, 1), steps=10)
    assert torch.allclose(out, torch.full_like(out, 9 / 20))
    with pytest.raises(ValueError, match="at least one step"):
        euler_sample(lambda x, t, i: x, noise, steps=0)
