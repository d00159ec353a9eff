"""Moving a trained prior onto a registry with a robot it has never seen (actionprior.models.adaptation)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from actionprior.data.synthetic import synthetic_registry
from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.adaptation import adaptation_problems, transfer_prior_weights

TINY = dict(width=32, depth=1, heads=2, latent_dim=8, sample_steps=3)
H = 4
ARM4, ARM7, ARM8 = list(synthetic_registry())
# The registry orders robots by name: a new robot named to sort first shifts every known robot's id.
NEW = dataclasses.replace(ARM8, name="a_new_arm8")


def _prior(reg: EmbodimentRegistry, seed: int, **settings) -> ActionPrior:
    torch.manual_seed(seed)
    return ActionPrior(ActionPriorConfig(**{**TINY, **settings}).bind(reg, H)).eval()


def _batch(reg: EmbodimentRegistry, name: str, b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for robot ``name`` padded to ``reg``'s max dims (zeros beyond its real dims)."""
    g = torch.Generator().manual_seed(seed)
    spec = reg[name]
    state = torch.zeros(b, H, reg.max_state_dim)
    action = torch.zeros(b, H, reg.max_action_dim)
    state[..., : spec.state_dim] = torch.randn(b, H, spec.state_dim, generator=g)
    action[..., : spec.action_dim] = torch.randn(b, H, spec.action_dim, generator=g)
    x_t = torch.zeros(b, H, reg.max_action_dim)
    x_t[..., : spec.action_dim] = torch.randn(b, H, spec.action_dim, generator=g)
    return dict(
        state=state,
        action=action,
        x_t=x_t,
        t=torch.rand(b, generator=g),
        step_mask=torch.ones(b, H),
        embodiment_id=torch.full((b,), reg.id_of(name), dtype=torch.long),
    )


def _outputs(prior: ActionPrior, reg: EmbodimentRegistry, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` and the decoder's velocity (real action dims only) for a fixed input of robot ``name``."""
    batch = _batch(reg, name)
    with torch.no_grad():
        z = prior.encode(batch["state"], batch["action"], batch["step_mask"], batch["embodiment_id"])
        v = prior.velocity(batch["x_t"], batch["t"], z, batch["embodiment_id"], batch["step_mask"])
    return z, v[..., : reg[name].action_dim]


@pytest.mark.parametrize("io_mode", ["projection", "padded"])
def test_known_robots_compute_what_they_did_and_the_new_robot_keeps_its_fresh_init(io_mode):
    # The prior knows arm4 and arm7 (max dims 9/7); the new registry adds an 11/8 robot with id 0.
    old = EmbodimentRegistry([ARM4, ARM7])
    new = EmbodimentRegistry([NEW, ARM7, ARM4])
    source = _prior(old, seed=1, io_mode=io_mode)
    target = _prior(new, seed=2, io_mode=io_mode)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_prior_weights(source, old, target, new)

    assert report.kept == ["synth_arm4", "synth_arm7"] and report.added == ["a_new_arm8"]
    assert new.id_of("synth_arm4") == 1 and old.id_of("synth_arm4") == 0
    assert report.dropped == []
    for name in ("synth_arm4", "synth_arm7"):  # functionally the same prior for the robots it knew
        for a, b in zip(_outputs(source, old, name), _outputs(target, new, name), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    arm8 = new.id_of("a_new_arm8")
    state = target.state_dict()
    # The new robot's embedding row is the target's own init (what a from-scratch model has).
    torch.testing.assert_close(
        state["encoder.io.embedding.weight"][arm8], fresh["encoder.io.embedding.weight"][arm8]
    )
    if io_mode == "projection":
        assert report.resized == []
        for key in (
            "encoder.io.state_in.weight",
            "decoder.io.action_out.weight",
            "decoder.io.action_in.bias",
        ):
            torch.testing.assert_close(state[key][arm8], fresh[key][arm8], rtol=0, atol=0)
        # Padded rows of a copied robot stay exactly zero (the masks rely on it).
        assert not state["encoder.io.state_in.weight"][new.id_of("synth_arm4"), ARM4.state_dim :].any()
    else:
        # One shared layer over positional slots: it grew from 9/7 to 11/8 slots, old slots copied,
        # new slots are the target's init.
        assert sorted(report.resized) == [
            "decoder.io.action_in",
            "decoder.io.action_out",
            "encoder.io.action_in",
            "encoder.io.state_in",
        ]
        w, w0 = state["encoder.io.state_in.weight"], fresh["encoder.io.state_in.weight"]
        torch.testing.assert_close(
            w[0, :9], source.state_dict()["encoder.io.state_in.weight"][0], rtol=0, atol=0
        )
        torch.testing.assert_close(w[0, 9:], w0[0, 9:], rtol=0, atol=0)
        out = state["decoder.io.action_out.weight"]
        torch.testing.assert_close(
            out[0, :, 7:], fresh["decoder.io.action_out.weight"][0, :, 7:], rtol=0, atol=0
        )
    # The shared trunk is the source's, exactly.
    for key, value in source.state_dict().items():
        if ".io." not in key:
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_transfer_copies_in_place_and_drops_robots_the_target_lacks():
    old = EmbodimentRegistry([ARM4, ARM7, ARM8])
    new = EmbodimentRegistry([ARM7])
    source, target = _prior(old, seed=1), _prior(new, seed=2)
    params = {k: p for k, p in target.named_parameters()}
    report = transfer_prior_weights(source, old, target, new)
    assert report.dropped == ["synth_arm4", "synth_arm8"] and report.kept == ["synth_arm7"]
    assert all(p is params[k] for k, p in target.named_parameters())  # optimizer-held tensors survive
    for a, b in zip(_outputs(source, old, "synth_arm7"), _outputs(target, new, "synth_arm7"), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_problems_name_architecture_robot_and_statistics_differences():
    old = EmbodimentRegistry([ARM4, ARM7])
    renamed = dataclasses.replace(ARM8, name="synth_arm7")  # same name, 11/8 dims
    other = EmbodimentRegistry([ARM4, renamed])
    cfg = ActionPriorConfig(**TINY)
    assert adaptation_problems(old, EmbodimentRegistry([ARM4, ARM7, ARM8]), cfg, cfg) == []
    problems = adaptation_problems(old, other, cfg, ActionPriorConfig(**{**TINY, "latent_dim": 16}))
    text = "; ".join(problems)
    assert "latent_dim is 8 in the checkpoint but 16 here" in text
    assert "embodiment 'synth_arm7': action_names" in text and "same name, different robot" in text

    def norm(shift: float, mode: str = "quantile") -> dict:
        stats = {
            s.name: {
                kind: {k: [shift] * d for k in ("mean", "std", "q01", "q99", "min", "max")}
                for kind, d in (("state", s.state_dim), ("action", s.action_dim))
            }
            for s in old
        }
        return {"mode": mode, "stats": stats}

    assert adaptation_problems(old, old, cfg, cfg, norm(0.0), norm(0.0)) == []
    moved = norm(0.0)
    moved["stats"]["synth_arm4"]["action"]["q99"] = [9.0] * 4
    (problem,) = adaptation_problems(old, old, cfg, cfg, norm(0.0), moved)
    assert problem.startswith("embodiment 'synth_arm4': action statistics ['q99'] differ")
    (problem,) = adaptation_problems(old, old, cfg, cfg, norm(0.0), norm(0.0, "meanstd"))
    assert "mode is 'quantile' in the checkpoint but 'meanstd' here" in problem
    (problem,) = adaptation_problems(old, EmbodimentRegistry([ARM4]), cfg, cfg, allow_dropped=False)
    assert "['synth_arm7'] are in the checkpoint but not in this run's data" in problem
