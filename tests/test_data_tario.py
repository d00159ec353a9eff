"""The fast tar reader agrees with tarfile and fails clearly on broken shards."""

from __future__ import annotations

import tarfile

import pytest

from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.schema import DataError
from actionprior.data.tario import iter_tar_members, iter_tar_samples, split_name


def test_reads_exactly_what_tarfile_reads(synthetic_dataset) -> None:
    path = synthetic_dataset.path / "obs-00000.tar"
    with tarfile.open(path) as tar:
        expected = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    got = {name: bytes(body) for name, body in iter_tar_members(path.read_bytes(), str(path))}
    assert got == expected
    samples = list(iter_tar_samples(path.read_bytes(), str(path)))
    assert [s["__key__"] for s in samples] == [ep.key for ep in synthetic_dataset.episodes[:5]]
    assert {"state.npy", "action.npy", "meta.json", "scene.00000.png", "wrist.00000.png"} <= set(samples[0])


def test_truncated_and_corrupt_tars_are_refused(synthetic_dataset) -> None:
    data = (synthetic_dataset.path / "traj-00000.tar").read_bytes()
    with pytest.raises(DataError, match="truncated tar"):
        list(iter_tar_members(data[:3000], "x.tar"))
    corrupt = bytearray(data)
    corrupt[10] ^= 0xFF  # inside the first header's name
    with pytest.raises(DataError, match="checksum mismatch"):
        list(iter_tar_members(bytes(corrupt), "x.tar"))


def test_streaming_a_truncated_shard_names_it(make_synthetic_dataset) -> None:
    data = make_synthetic_dataset().path
    shard = data / "traj-00001.tar"
    shard.write_bytes(shard.read_bytes()[:2000])
    dm = ActionPriorDataModule([str(data)], batch_size=4, num_workers=0, val_fraction=0.0, cache_mb=0)
    with pytest.raises(DataError, match=r"traj-00001\.tar.*truncated"):
        for _ in range(3):
            list(dm.train_dataloader())


def test_key_rule_matches_webdataset() -> None:
    from webdataset.tariterators import base_plus_ext

    for name in ["ep1.scene.00001.png", "dir/ep.state.npy", "a.b/c.d", "noext", ".hidden"]:
        assert split_name(name) == base_plus_ext(name)
