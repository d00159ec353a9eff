"""Streaming views, mixtures, splits and normalisation of the DataModule, on the synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import actionprior.data.schema as schema
import actionprior.data.shards as shards
from actionprior.data.datamodule import ActionPriorDataModule, DatasetSource
from actionprior.data.loader import StreamLoader
from actionprior.data.normalization import Normalizer
from actionprior.data.schema import DataError
from actionprior.data.shards import iter_episodes
from actionprior.data.splits import is_val_episode
from actionprior.data.synthetic import SYNTHETIC_CAMERAS, synthetic_frame, write_synthetic_dataset
from actionprior.data.windowing import cut_window
from actionprior.embodiments import EmbodimentError

H, K = 4, 3


def _dm(paths, **kw) -> ActionPriorDataModule:
    args = dict(chunk_len=H, history_len=K, batch_size=16, num_workers=0, batches_per_epoch=4, val_batches=2)
    args.update(kw)
    return ActionPriorDataModule([DatasetSource(str(p)) if isinstance(p, Path) else p for p in paths], **args)


def test_episodes_round_trip_exactly(synthetic_dataset) -> None:
    dm = _dm([synthetic_dataset.path], val_fraction=0.0)
    read = {ep.key: ep for ep in iter_episodes(synthetic_dataset.path, dm.registry, with_frames=True)}
    assert list(read) == [ep.key for ep in synthetic_dataset.episodes]  # manifest order = write order
    for original in synthetic_dataset.episodes:
        ep = read[original.key]
        np.testing.assert_array_equal(ep.state, original.state)
        np.testing.assert_array_equal(ep.action, original.action)
        assert (ep.embodiment, ep.task, ep.instruction, ep.success) == (
            original.embodiment,
            original.task,
            original.instruction,
            original.success,
        )
        assert sorted(ep.frames) == sorted(original.frames)
        for cam in original.frames:
            np.testing.assert_array_equal(ep.frames[cam], original.frames[cam])


def _check_windows_against_originals(batch, dm, originals, normalizer=None) -> None:
    reg = dm.registry
    for i, (key, t) in enumerate(zip(batch["episode_key"], batch["timestep"].tolist(), strict=True)):
        ep = originals[key]
        spec = reg[ep.embodiment]
        state, action = ep.state, ep.action
        if normalizer is not None:
            state = normalizer.normalize(ep.embodiment, "state", state)
            action = normalizer.normalize(ep.embodiment, "action", action)
        want = cut_window(state, action, t, H, K, reg.max_state_dim, reg.max_action_dim)
        for name, value in want.items():
            np.testing.assert_array_equal(batch[name][i].numpy(), value, err_msg=f"{name} of {key}@{t}")
        assert batch["embodiment_id"][i] == reg.id_of(ep.embodiment)
        assert batch["state_dim_mask"][i].sum() == spec.state_dim and batch["state_dim_mask"][i, 0]
        assert batch["action_dim_mask"][i].sum() == spec.action_dim


def test_trajectory_windows_equal_windows_of_the_originals(synthetic_dataset) -> None:
    dm = _dm([synthetic_dataset.path], val_fraction=0.0, shuffle_buffer=8)
    loader = StreamLoader(dm.make_stream("train", normalize=False), num_batches=6)
    batches = list(loader)
    assert len(batches) == 6
    seen_ends = 0
    for batch in batches:
        assert batch["state"].shape == (16, H, dm.registry.max_state_dim)
        assert batch["state"].dtype == torch.float32 and batch["step_mask"].dtype == torch.bool
        _check_windows_against_originals(batch, dm, synthetic_dataset.by_key())
        seen_ends += int((~batch["step_mask"]).any(1).sum())
    assert seen_ends > 0  # windows crossing the episode end do occur (episodes are 12-40 steps)
    ids = torch.cat([b["embodiment_id"] for b in batches])
    assert set(ids.tolist()) == {0, 1, 2}  # batches mix embodiments


def test_normalised_windows_and_padding(synthetic_dataset) -> None:
    dm = _dm([synthetic_dataset.path], val_fraction=0.0, normalization="meanstd")
    batch = next(iter(dm.train_dataloader()))
    _check_windows_against_originals(batch, dm, synthetic_dataset.by_key(), dm.normalizer)
    # padded feature columns stay exactly zero after normalisation
    assert (batch["action"][~batch["action_dim_mask"][:, None, :].expand_as(batch["action"])] == 0).all()


def test_observation_view_decodes_the_frames_of_the_sampled_timestep(synthetic_dataset) -> None:
    dm = _dm([synthetic_dataset.path], view="observation", val_fraction=0.0, batch_size=8)
    assert dm.camera_names == list(SYNTHETIC_CAMERAS)
    index = {ep.key: i for i, ep in enumerate(synthetic_dataset.episodes)}
    originals = synthetic_dataset.by_key()
    for batch in StreamLoader(dm.make_stream("train", normalize=False), num_batches=2):
        assert batch["images"].shape == (8, 2, 3, 16, 16) and batch["images"].dtype == torch.uint8
        assert batch["camera_mask"].all()
        _check_windows_against_originals(batch, dm, originals)
        for i, (key, t) in enumerate(zip(batch["episode_key"], batch["timestep"].tolist(), strict=True)):
            for c in range(2):
                frame = synthetic_frame(0, index[key], c, t, 16).transpose(2, 0, 1)
                np.testing.assert_array_equal(batch["images"][i, c].numpy(), frame)
            assert batch["instruction"][i] == originals[key].instruction
            assert batch["task"][i] == originals[key].task


def test_observation_view_fits_frames_with_the_image_contract(synthetic_dataset) -> None:
    from actionprior.data.images import ImageFit, fit_image

    dm = _dm([synthetic_dataset.path], view="observation", val_fraction=0.0, batch_size=4, image_size=8)
    assert dm.image_fit == ImageFit(8, "pad", "area", {})  # a collected dataset records no import fit
    index = {ep.key: i for i, ep in enumerate(synthetic_dataset.episodes)}
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 2, 3, 8, 8)
    for i, (key, t) in enumerate(zip(batch["episode_key"], batch["timestep"].tolist(), strict=True)):
        for c in range(2):  # the one implementation inference also applies (actionprior.data.images)
            frame = fit_image(synthetic_frame(0, index[key], c, t, 16), 8, "pad", "area")
            np.testing.assert_array_equal(batch["images"][i, c].numpy(), frame.transpose(2, 0, 1))


def test_trajectory_view_never_opens_observation_shards_nor_decodes_png(
    make_synthetic_dataset, monkeypatch
) -> None:
    data = make_synthetic_dataset()
    opened: list[str] = []
    real_open = shards._open_shard
    monkeypatch.setattr(shards, "_open_shard", lambda url: opened.append(url) or real_open(url))

    def no_png(*args, **kwargs):
        raise AssertionError("the trajectory view decoded a PNG")

    monkeypatch.setattr(schema, "decode_png", no_png)
    monkeypatch.setattr(shards, "decode_png", no_png)
    for obs in data.path.glob("obs-*.tar"):
        obs.unlink()  # and it does not even need them to exist
    dm = _dm([data.path], val_fraction=0.3, cache_mb=0)
    for _ in dm.train_dataloader():
        pass
    for _ in dm.val_dataloader():
        pass
    list(dm.val_episodes())
    assert opened and all(Path(u).name.startswith("traj-") for u in opened)


def test_train_and_validation_episodes_are_disjoint(synthetic_dataset) -> None:
    dm = _dm([synthetic_dataset.path], val_fraction=0.3)
    val_keys = {ep.key for ep in dm.val_episodes()}
    all_keys = {ep.key for ep in synthetic_dataset.episodes}
    assert val_keys == {k for k in all_keys if is_val_episode(k, 0.3)} and 0 < len(val_keys) < len(all_keys)
    train_seen = {k for b in dm.train_dataloader() for k in b["episode_key"]}
    val_seen = {k for b in dm.val_dataloader() for k in b["episode_key"]}
    assert train_seen and train_seen.isdisjoint(val_keys)
    assert val_seen and val_seen <= val_keys
    assert len(list(dm.val_episodes(max_episodes=2))) == 2


def test_epochs_differ_and_validation_repeats(synthetic_dataset) -> None:
    dm = _dm([synthetic_dataset.path], val_fraction=0.3)
    train = dm.train_dataloader()
    assert len(train) == 4
    first, second = ([b["timestep"] for b in train] for _ in range(2))
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    val = dm.val_dataloader()
    v1, v2 = ([b["timestep"] for b in val] for _ in range(2))
    assert len(v1) == 2 and all(torch.equal(a, b) for a, b in zip(v1, v2, strict=True))


def test_workers_deliver_the_fixed_number_of_batches(synthetic_dataset) -> None:
    dm = _dm([synthetic_dataset.path], val_fraction=0.0, num_workers=2, batches_per_epoch=5)
    batches = list(dm.train_dataloader())
    assert len(batches) == 5
    # the two workers draw different windows
    assert len({tuple(b["timestep"].tolist()) for b in batches}) == 5


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mix")
    a, b = root / "a", root / "b"
    write_synthetic_dataset(
        a, episodes_per_embodiment=6, with_frames=False, embodiments=["synth_arm4"], seed=1
    )
    write_synthetic_dataset(
        b, episodes_per_embodiment=6, with_frames=False, embodiments=["synth_arm7", "synth_arm8"], seed=2
    )
    return a, b


def test_mixture_weights_are_respected_and_ids_match_the_data(two_datasets) -> None:
    a, b = two_datasets
    dm = _dm([DatasetSource(str(a), 3.0), DatasetSource(str(b), 1.0)], val_fraction=0.0, batch_size=100)
    assert dm.registry.names == ["synth_arm4", "synth_arm7", "synth_arm8"]  # one registry from both manifests
    ids = torch.cat([batch["embodiment_id"] for batch in StreamLoader(dm.make_stream("train"), 40)])
    share_a = (ids == dm.registry.id_of("synth_arm4")).float().mean().item()
    # 4000 windows: binomial std of the share is 0.007; 0.035 is five of them.
    assert abs(share_a - 0.75) < 0.035, share_a
    batch = next(iter(dm.train_dataloader()))
    for i, key in enumerate(batch["episode_key"]):
        assert key.endswith(dm.registry[int(batch["embodiment_id"][i])].name)  # keys name their embodiment


def test_conflicting_embodiment_specs_are_refused(two_datasets, tmp_path) -> None:
    a, _ = two_datasets
    other = tmp_path / "other"
    write_synthetic_dataset(other, episodes_per_embodiment=2, with_frames=False, embodiments=["synth_arm4"])
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["embodiments"]["synth_arm4"]["action_names"].append("extra")
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbodimentError, match=r"synth_arm4.*defined differently.*action_names"):
        _dm([a, other], val_fraction=0.0)


def test_clear_errors_for_bad_configuration(synthetic_dataset, tmp_path) -> None:
    with pytest.raises(DataError, match="no manifest"):
        _dm([tmp_path])
    with pytest.raises(DataError, match="val_fraction=1e-09 selects no episode"):
        _dm([synthetic_dataset.path], val_fraction=1e-9)
    with pytest.raises(DataError, match="mixture weight must be positive"):
        _dm([DatasetSource(str(synthetic_dataset.path), 0.0)], val_fraction=0.0).train_dataloader()


def test_datamodule_exposes_what_models_are_built_from(synthetic_dataset) -> None:
    dm = _dm([synthetic_dataset.path], normalization="quantile")
    assert dm.embodiments == dm.registry.to_dicts()
    norm = dm.normalization
    assert norm["mode"] == "quantile" and set(norm["stats"]) == set(dm.registry.names)
    rebuilt = Normalizer.from_dict(norm, dm.registry)
    assert rebuilt.fingerprint == dm.normalizer.fingerprint
    assert (
        dm.val_dataloader() is not None
        and _dm([synthetic_dataset.path], val_fraction=0.0).val_dataloader() == []
    )


@pytest.mark.parametrize("mode", ["quantile", "meanstd"])
def test_normalisation_round_trip_and_grippers(synthetic_dataset, mode) -> None:
    dm = _dm([synthetic_dataset.path], normalization=mode)
    norm = dm.normalizer
    for ep in synthetic_dataset.episodes[:6]:
        spec = dm.registry[ep.embodiment]
        for kind, x, grippers in (
            ("state", ep.state, spec.gripper_state_dims),
            ("action", ep.action, spec.gripper_action_dims),
        ):
            y = norm.normalize(ep.embodiment, kind, x)
            np.testing.assert_allclose(norm.unnormalize(ep.embodiment, kind, y), x, rtol=1e-5, atol=1e-5)
            # a binary gripper stays binary at exactly -1 / +1, whatever the mode
            g = list(grippers)
            assert set(np.round(y[:, g], 5).ravel().tolist()) <= {-1.0, 1.0}
    if mode == "quantile":
        ep = synthetic_dataset.episodes[0]
        y = norm.normalize(
            ep.embodiment,
            "action",
            np.concatenate([e.action for e in synthetic_dataset.episodes if e.embodiment == ep.embodiment]),
        )
        inside = ((y >= -1) & (y <= 1)).mean(0)
        assert (inside >= 0.97).all()  # the 1st..99th percentile maps to [-1, 1]


def test_datamodule_is_configurable_from_yaml(synthetic_dataset) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ActionPriorDataModule, "data")
    cfg = parser.parse_string(
        f"data:\n  datasets:\n  - path: {synthetic_dataset.path}\n    weight: 2.0\n"
        "  view: observation\n  chunk_len: 2\n  image_size: 8\n  num_workers: 0\n"
    )
    dm = parser.instantiate_classes(cfg).data
    assert dm.sources == [DatasetSource(str(synthetic_dataset.path), 2.0)]
    assert (dm.view, dm.chunk_len, dm.image_size) == ("observation", 2, 8)
    with pytest.raises(Exception, match="view"):
        parser.parse_string("data:\n  datasets: []\n  view: pixels\n")
