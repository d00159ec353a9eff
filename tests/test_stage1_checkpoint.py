"""Stage 1 checkpoints: what they carry, loading without data, and mismatch errors that name the difference."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from actionprior.checkpoint import (
    CHECKPOINT_KEY,
    CheckpointError,
    CheckpointMismatchError,
    check_compatible,
    load_action_prior,
    load_checkpoint_file,
)
from actionprior.data.normalization import Normalizer
from actionprior.data.stats import compute_stats
from actionprior.data.synthetic import make_episode, synthetic_registry
from actionprior.embodiments import EmbodimentError, EmbodimentRegistry, EmbodimentSpec
from actionprior.models.action_prior import ActionPriorConfig
from actionprior.training import ActionPriorModule

TINY = dict(prior=ActionPriorConfig(width=32, depth=1, heads=2, latent_dim=8, sample_steps=3), chunk_len=4)


@pytest.fixture(scope="module")
def data() -> tuple[EmbodimentRegistry, dict]:
    registry = synthetic_registry()
    rng = np.random.default_rng(0)
    episodes = [make_episode(spec, f"e{i}_{spec.name}", 25, rng) for i in range(3) for spec in registry]
    return registry, compute_stats((ep.embodiment, ep.state, ep.action) for ep in episodes)


def _module(registry: EmbodimentRegistry, stats: dict, mode: str = "quantile", **prior) -> ActionPriorModule:
    """A tiny Stage 1 module; ``prior`` overrides settings of the tiny prior."""
    normalizer = Normalizer(stats, registry, mode)
    config = replace(TINY["prior"], **prior)
    return ActionPriorModule(
        prior=config,
        chunk_len=TINY["chunk_len"],
        embodiments=registry.to_dicts(),
        normalization=normalizer.to_dict(),
    )


def _save(module: ActionPriorModule, path) -> dict:
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return checkpoint


def test_checkpoint_rebuilds_the_prior_without_data(data, tmp_path):
    registry, stats = data
    torch.manual_seed(0)
    module = _module(registry, stats)
    checkpoint = _save(module, tmp_path / "s1.ckpt")
    payload = checkpoint[CHECKPOINT_KEY]
    assert payload["normalization_fingerprint"] == module.normalizer.fingerprint
    assert payload["embodiment_fingerprint"] == registry.fingerprint()
    assert payload["model_config"]["action_dims"] == [4, 7, 8]

    prior, loaded_registry, normalizer, config = load_action_prior(tmp_path / "s1.ckpt")
    assert loaded_registry.names == registry.names and not loaded_registry.diff(registry)
    assert normalizer.fingerprint == module.normalizer.fingerprint
    assert config == module.config and not prior.training
    b = 3
    eid = torch.tensor([0, 2, 1])
    state, action = torch.randn(b, 4, 11), torch.randn(b, 4, 8)
    mask = torch.ones(b, 4, dtype=torch.bool)
    module.model.eval()
    with torch.no_grad():
        z = module.model.encode(state, action, mask, eid)
        assert torch.equal(prior.encode(state, action, mask, eid), z)
        g1, g2 = (torch.Generator().manual_seed(0) for _ in range(2))
        assert torch.equal(prior.sample(z, eid, generator=g1), module.model.sample(z, eid, generator=g2))


def test_mismatches_are_named(data, tmp_path):
    registry, stats = data
    payload = _save(_module(registry, stats), tmp_path / "s1.ckpt")[CHECKPOINT_KEY]

    fewer = EmbodimentRegistry([registry["synth_arm4"], registry["synth_arm7"]])
    with pytest.raises(
        CheckpointMismatchError, match=r"embodiments only in the first: \['synth_arm8'\]"
    ) as err:
        check_compatible(payload, "s1.ckpt", registry=fewer)
    assert "max_action_dim is 8 in the checkpoint but 7 here" in str(err.value)

    renamed = EmbodimentRegistry(
        [
            replace(registry["synth_arm4"], action_names=("dx", "dy", "dz", "gripper")),
            registry["synth_arm7"],
            registry["synth_arm8"],
        ]
    )
    with pytest.raises(CheckpointMismatchError, match="embodiment 'synth_arm4': action_names differs"):
        check_compatible(payload, "s1.ckpt", registry=renamed)

    other_stats = Normalizer(stats, registry, "meanstd")
    with pytest.raises(
        CheckpointMismatchError, match=r"normalisation fingerprint .* \(mode quantile vs meanstd\)"
    ):
        check_compatible(payload, "s1.ckpt", normalizer=other_stats)

    wider = _module(registry, stats, width=64).config
    with pytest.raises(
        CheckpointMismatchError, match="model config: width is 32 in the checkpoint but 64 here"
    ):
        check_compatible(payload, "s1.ckpt", config=wider)
    check_compatible(
        payload,
        "s1.ckpt",
        registry=registry,
        normalizer=Normalizer(stats, registry),
        config=_module(registry, stats).config,
    )


def test_resuming_into_a_different_module_fails_before_loading_weights(data, tmp_path):
    registry, stats = data
    checkpoint = _save(_module(registry, stats), tmp_path / "s1.ckpt")
    other = _module(registry, stats, depth=2)
    with pytest.raises(
        CheckpointMismatchError, match="model config: depth is 1 in the checkpoint but 2 here"
    ):
        other.on_load_checkpoint(checkpoint)
    # Resuming is exact: a setting given differently from the checkpoint's is refused, not ignored.
    with pytest.raises(CheckpointMismatchError, match="sample_steps is 3 in the checkpoint but 20 here"):
        _module(registry, stats, sample_steps=20).on_load_checkpoint(checkpoint)
    _module(registry, stats).on_load_checkpoint(checkpoint)


def test_foreign_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(
        CheckpointError, match="foreign.ckpt has no 'actionprior' entry: it is not an actionprior checkpoint"
    ):
        load_action_prior(tmp_path / "foreign.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_action_prior(tmp_path / "missing.ckpt")


def test_module_requires_data_description():
    with pytest.raises(ValueError, match="needs `embodiments` and `normalization`"):
        ActionPriorModule(**TINY)


def test_unreadable_files_are_refused_in_one_line_naming_the_path(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    (tmp_path / "truncated.ckpt").write_bytes(good.read_bytes()[:-700])
    for name in ("empty", "random", "truncated"):
        with pytest.raises(CheckpointError, match=rf"{name}.ckpt: not a readable checkpoint") as info:
            load_action_prior(tmp_path / f"{name}.ckpt")
        assert "\n" not in str(info.value)


def test_random_bytes_are_not_taken_for_an_old_torch_file(tmp_path):
    """Resuming from random bytes once reported torch's advice to re-save the file for mmap (issue 26)."""
    import pickle

    from actionprior.training.checkpoint_files import check_resume_checkpoint

    path = tmp_path / "random.ckpt"
    path.write_bytes(b"\x17" + np.random.default_rng(1).bytes(4095))
    for mmap in (True, False):
        with pytest.raises(
            CheckpointError,
            match=r"random.ckpt: not a readable checkpoint \(neither the zip archive torch.save writes nor a "
            r"pickle: random bytes or another kind of file\)",
        ):
            load_checkpoint_file(path, mmap=mmap)
    with pytest.raises(CheckpointError, match=r"^--ckpt_path: .*random.ckpt: .*neither the zip") as info:
        check_resume_checkpoint(str(path), tmp_path)
    assert "mmap" not in str(info.value) and "torch.save your checkpoint" not in str(info.value)
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(CheckpointError, match=r"legacy.ckpt: not a readable checkpoint \(a bare pickle"):
        check_resume_checkpoint(str(legacy), tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("q99", float("nan"), r"'arm' action q99\[1\] = nan: not finite"),
        ("q01", 50.0, r"'arm' action: q99\[1\] = .* < q01\[1\] = 50.0"),
        ("std", -1.0, r"'arm' action: std\[1\] is negative"),
    ],
)
def test_normalizer_refuses_unusable_statistics_from_any_source(key: str, value: float, message: str) -> None:
    registry = EmbodimentRegistry([EmbodimentSpec("arm", ("a", "b"), ("x", "y"), "joint", 10.0)])
    part = {"mean": [0.0, 0.0], "std": [1.0, 1.0], "min": [-2.0, -2.0], "max": [2.0, 2.0],
            "q01": [-1.0, -1.0], "q99": [1.0, 1.0]}  # fmt: skip
    Normalizer({"arm": {"state": part, "action": part}}, registry)  # sound statistics load
    bad = {k: np.asarray(v, np.float32) for k, v in part.items()}  # arrays, as from a checkpoint
    bad[key][1] = value
    with pytest.raises(EmbodimentError, match=f"unusable normalisation statistics: {message}"):
        Normalizer({"arm": {"state": part, "action": bad}}, registry)
