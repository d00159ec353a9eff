"""Embodiment I/O: a mixed batch is routed through each sample's own projections, padded dims never leak."""

import pytest
import torch

from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.embodiment_io import EmbodimentIO, EmbodimentLinear

IN_DIMS, OUT_DIMS = [3, 5, 2], [4, 2, 6]


def _masked_input(eid: torch.Tensor, dims: list[int], width: int, steps: int = 4) -> torch.Tensor:
    x = torch.randn(len(eid), steps, width)
    return x * (torch.arange(width)[None] < torch.tensor(dims)[eid][:, None])[:, None, :]


def test_projection_routes_each_sample_through_its_own_weights():
    torch.manual_seed(0)
    layer = EmbodimentLinear(3, 5, 6, in_dims=IN_DIMS, out_dims=OUT_DIMS)
    eid = torch.tensor([2, 0, 1, 0, 2, 1])
    x = _masked_input(eid, IN_DIMS, 5)
    y = layer(x, eid)
    assert y.shape == (6, 4, 6)
    for i, e in enumerate(eid.tolist()):
        d_in, d_out = IN_DIMS[e], OUT_DIMS[e]
        expected = x[i, :, :d_in] @ layer.weight[e, :d_in, :d_out] + layer.bias[e, :d_out]
        assert torch.allclose(y[i, :, :d_out], expected, atol=1e-6)
        assert torch.all(y[i, :, d_out:] == 0), "padded output dims must be exactly zero"


@pytest.mark.parametrize("shared", [False, True])
def test_padded_input_dims_do_not_leak(shared):
    torch.manual_seed(0)
    layer = EmbodimentLinear(3, 5, 6, in_dims=IN_DIMS, shared=shared)
    eid = torch.tensor([0, 1, 2])
    x = _masked_input(eid, IN_DIMS, 5)
    garbage = (
        x + torch.randn_like(x) * (torch.arange(5)[None] >= torch.tensor(IN_DIMS)[eid][:, None])[:, None, :]
    )
    assert not torch.equal(garbage, x)
    assert torch.allclose(layer(x, eid), layer(garbage, eid))


@pytest.mark.parametrize("shared", [False, True])
def test_gathered_weights_equal_the_layer(shared):
    """What the sampler applies at every flow step (weights gathered once) is the layer itself."""
    torch.manual_seed(0)
    layer = EmbodimentLinear(3, 5, 6, in_dims=IN_DIMS, out_dims=OUT_DIMS, shared=shared)
    with torch.no_grad():  # non-zero bias everywhere, so bias masking is exercised too
        layer.bias.uniform_(0.5, 1.0)
    eid = torch.tensor([2, 0, 1, 0])
    x = _masked_input(eid, IN_DIMS, 5)
    gathered = layer.gather(eid)
    assert gathered.weight.shape == (4, 5, 6) and gathered.bias.shape == (4, 1, 6)
    y = gathered(x)
    assert torch.allclose(y, layer(x, eid), atol=1e-6)
    for i, e in enumerate(eid.tolist()):
        assert torch.all(y[i, :, OUT_DIMS[e] :] == 0), "padded output dims must be exactly zero"


def test_padded_mode_shares_one_projection():
    io = EmbodimentIO([3, 5], [2, 4], 5, 4, width=8, io_mode="padded", action_out=True)
    assert io.state_in.weight.shape == (1, 5, 8)
    eid = torch.tensor([0, 1])
    x = torch.randn(2, 1, 5)
    x[0, :, 3:] = 0
    y = io.embed_state(x, eid)
    assert torch.allclose(y, x @ io.state_in.weight[0] + io.state_in.bias[0], atol=1e-6)
    out = io.project_action(torch.randn(2, 3, 8), eid)
    assert torch.all(out[0, :, 2:] == 0) and torch.all(out[1] != 0)


def test_embodiment_ids_are_checked():
    io = EmbodimentIO([3, 5], [2, 4], 5, 4, width=8)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        io.check_ids(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="integer tensor"):
        io.check_ids(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="io_mode"):
        EmbodimentIO([3], [2], 3, 2, width=8, io_mode="slots")


@pytest.mark.parametrize("io_mode", ["projection", "padded"])
def test_mixed_batch_equals_per_sample_computation(io_mode):
    torch.manual_seed(0)
    config = ActionPriorConfig.from_dict(
        dict(
            width=32,
            depth=1,
            heads=2,
            latent_dim=8,
            chunk_len=4,
            max_state_dim=6,
            max_action_dim=5,
            state_dims=[6, 3, 4],
            action_dims=[2, 5, 3],
            io_mode=io_mode,
        )
    )
    model = ActionPrior(config).eval()
    eid = torch.tensor([1, 0, 2, 1, 0])
    state = _masked_input(eid, config.state_dims, 6)
    action = _masked_input(eid, config.action_dims, 5)
    step_mask = torch.ones(5, 4, dtype=torch.bool)
    step_mask[2, 3:] = False
    with torch.no_grad():
        z = model.encode(state, action, step_mask, eid)
        t = torch.rand(5)
        v = model.velocity(action, t, z, eid, step_mask)
        for i in range(5):
            s = slice(i, i + 1)
            z_i = model.encode(state[s], action[s], step_mask[s], eid[s])
            assert torch.allclose(z[s], z_i, atol=1e-5)
            assert torch.allclose(v[s], model.velocity(action[s], t[s], z_i, eid[s], step_mask[s]), atol=1e-5)
