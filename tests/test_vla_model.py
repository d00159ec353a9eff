"""The VLA's objective: auxiliary branch on/off, the history objective, sampling, checkpoint rebuild."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from vla_builders import CHUNK, make_batch, module_kwargs, tiny_vla

from actionprior.checkpoint import StoredCheckpoint
from actionprior.training.vla_module import VLAModule


def _count_encoder_calls(vla) -> list[int]:
    calls = [0]
    vla.head.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_auxiliary_terms_and_compute_vanish_when_lambda_is_zero():
    vla = tiny_vla(use_history=False)
    batch = make_batch(4)
    calls = _count_encoder_calls(vla)
    torch.manual_seed(0)
    out = vla.loss(batch, aux_weight=0.5)
    assert calls[0] == 1  # z = enc(ground-truth window)
    assert out.align is not None and out.recon is not None
    torch.testing.assert_close(out.loss, out.pred + 0.5 * (out.align + out.recon))

    calls[0] = 0
    torch.manual_seed(0)
    out0 = vla.loss(batch, aux_weight=0.0)
    assert calls[0] == 0  # the encoder never runs
    assert out0.align is None and out0.recon is None
    torch.testing.assert_close(out0.loss, out0.pred)


def test_with_history_only_the_history_encoding_remains_after_decay():
    vla = tiny_vla(use_history=True)
    batch = make_batch(4)
    calls = _count_encoder_calls(vla)
    vla.loss(batch, aux_weight=1.0)
    assert calls[0] == 2  # history window + ground-truth window
    calls[0] = 0
    vla.loss(batch, aux_weight=0.0)
    assert calls[0] == 1  # history window only


def test_align_is_mse_to_the_stopped_encoder_latent():
    vla = tiny_vla()
    batch = make_batch(4)
    out = vla.loss(batch, aux_weight=1.0)
    z = vla.target_latent(batch)
    torch.testing.assert_close(out.align, F.mse_loss(out.z_pred, z))
    vla.zero_grad()
    out.align.backward()  # stop-gradient: L_align must not move the encoder
    assert all(p.grad is None or not p.grad.any() for p in vla.head.encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in vla.latent_head.parameters())


def test_history_objective_is_the_mean_of_the_two_passes():
    vla = tiny_vla(use_history=True)
    batch = make_batch(5)  # sample 0 has no history at all (history_mask all False)
    aux_weight = 0.3
    torch.manual_seed(123)
    out = vla.loss(batch, aux_weight=aux_weight, history_mode="exact")

    # The same computation by hand, in the same order of random draws: recon, pass with, pass without.
    a, m, d, e = batch["action"], batch["step_mask"], batch["action_dim_mask"], batch["embodiment_id"]
    torch.manual_seed(123)
    z = vla.target_latent(batch)
    recon = vla.head.loss(z, a, m, d, e)
    z_hist, has_hist = vla.history_latent(batch)
    assert has_hist.tolist() == [False, True, True, True, True]
    zp_hist = vla.predict_latent(batch, z_hist, has_hist)
    zp_none = vla.predict_latent(batch, z_hist, torch.zeros_like(has_hist))
    loss_hist = vla.head.loss(zp_hist, a, m, d, e) + aux_weight * (F.mse_loss(zp_hist, z) + recon)
    loss_none = vla.head.loss(zp_none, a, m, d, e) + aux_weight * (F.mse_loss(zp_none, z) + recon)
    torch.testing.assert_close(out.loss, (loss_hist + loss_none) / 2, rtol=1e-5, atol=1e-5)
    # The history token does change the prediction (else the two passes would be the same thing).
    assert not torch.allclose(zp_hist[1:], zp_none[1:])
    torch.testing.assert_close(zp_hist[0], zp_none[0], rtol=1e-4, atol=1e-4)  # no history -> token hidden


def test_stochastic_history_mode_is_one_pass():
    vla = tiny_vla(use_history=True)
    calls = [0]
    vla.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    out = vla.loss(make_batch(4), aux_weight=0.0, history_mode="stochastic")
    assert calls[0] == 1 and out.pred_no_history is None and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="history_mode"):
        vla.loss(make_batch(2), aux_weight=0.0, history_mode="sometimes")


def test_sample_actions_shape_and_padding():
    vla = tiny_vla(use_history=True).eval()
    batch = make_batch(3)
    chunk = vla.sample_actions(batch, steps=2)
    assert chunk.shape == (3, CHUNK, batch["action"].shape[-1])
    assert torch.all(chunk[~batch["action_dim_mask"][:, None, :].expand_as(chunk)] == 0)


def test_missing_history_keys_are_named():
    vla = tiny_vla(use_history=True)
    batch = make_batch(2)
    del batch["history_action"]
    with pytest.raises(KeyError, match="history_action"):
        vla.loss(batch, aux_weight=0.0)


def test_checkpoint_rebuilds_vla_offline(tmp_path):
    module = VLAModule(**module_kwargs(use_history=True))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "s2.ckpt")
    loaded = torch.load(tmp_path / "s2.ckpt", weights_only=True)  # plain containers only
    stored = StoredCheckpoint.from_dict(loaded, "s2.ckpt")
    vla, settings = stored.build_vla(), stored.vla_settings
    assert settings["camera_names"] == ["scene", "wrist"] and settings["config"]["use_history"]
    assert stored.normalizer.fingerprint == module.normalizer.fingerprint
    assert stored.registry.names == module.registry.names
    batch = make_batch(2)
    module.model.eval()
    torch.testing.assert_close(
        vla.predict_latent(batch, *vla.history_latent(batch)),
        module.model.predict_latent(batch, *module.model.history_latent(batch)),
    )


def test_state_token_makes_z_prime_depend_on_the_current_state_only_when_on():
    batch = make_batch(4)
    moved = {**batch, "current_state": batch["current_state"] + 1.0}
    with_state = tiny_vla(use_state=True).eval()
    with torch.no_grad():
        assert not torch.allclose(with_state.predict_latent(batch), with_state.predict_latent(moved))
    without = tiny_vla(use_state=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(without.predict_latent(batch), without.predict_latent(moved))
    assert without.state_token is None
    missing = {k: v for k, v in batch.items() if k != "current_state"}
    with pytest.raises(KeyError, match="current_state"):
        with_state.predict_latent(missing)


def test_state_token_ignores_padded_state_dims():
    vla = tiny_vla(use_state=True).eval()
    batch = make_batch(4)
    noisy = batch["current_state"].clone()
    noisy[~batch["state_dim_mask"]] = 123.0  # only the dims a robot lacks
    with torch.no_grad():
        torch.testing.assert_close(
            vla.predict_latent(batch), vla.predict_latent({**batch, "current_state": noisy})
        )


def test_configs_written_before_the_state_token_read_as_without_it():
    from actionprior.models.vla import VLAConfig

    assert (
        VLAConfig().use_state is False
    )  # off by default: no closed-loop gain measured (docs/policy_quality.md)
    old = VLAConfig().to_dict()
    del old["use_state"]
    assert VLAConfig.from_dict(old).use_state is False
    assert VLAConfig.from_dict({**old, "use_state": True}).use_state is True
