"""A StreamLoader restored from its state_dict continues the stream batch for batch (trajectory and observation
views, 0 and 2 workers), and a WindowStream started at batch n skips without collating."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.loader import StreamLoader
from actionprior.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume_stream")
    write_synthetic_dataset(root / "traj", episodes_per_embodiment=6, with_frames=False)
    write_synthetic_dataset(root / "obs", episodes_per_embodiment=3, with_frames=True)
    return {"trajectory": root / "traj", "observation": root / "obs"}


def _loader(path: Path, view: str, workers: int, num_batches: int = 4) -> StreamLoader:
    dm = ActionPriorDataModule(
        [{"path": str(path)}], view=view, chunk_len=4, history_len=2, batch_size=6, num_workers=0,
        val_fraction=0.0, windows_per_episode=2, shuffle_buffer=8, seed=3,
    )  # fmt: skip
    return StreamLoader(dm.make_stream("train"), num_batches, num_workers=workers, prefetch_factor=2)


def _draw(loader: StreamLoader, n: int) -> list[dict]:
    """``n`` batches over as many epochs (``iter()`` calls) as it takes, like the fit loop."""
    out: list[dict] = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


@pytest.mark.parametrize(
    ("view", "workers", "cut"),
    [
        ("trajectory", 0, 6),
        ("trajectory", 0, 8),
        ("trajectory", 2, 5),
        ("observation", 0, 3),
        ("observation", 2, 7),
    ],
)
def test_restored_loader_continues_the_stream(datasets, view, workers, cut):
    total = 11
    whole = _draw(_loader(datasets[view], view, workers), total)

    first = _loader(datasets[view], view, workers)
    head = _draw(first, cut)  # mid-epoch for cut % 4 != 0
    state = first.state_dict()
    first.close()
    assert state == {"epoch": -(-cut // 4), "stream_epoch": 0, "consumed": cut}

    resumed = _loader(datasets[view], view, workers)
    resumed.load_state_dict(dict(state))
    tail = _draw(resumed, total - cut)
    resumed.close()
    mismatches = [i for i, (a, b) in enumerate(zip(whole, head + tail, strict=True)) if not _same(a, b)]
    assert mismatches == []
    assert resumed.state_dict()["consumed"] == total


def test_state_needs_its_keys(datasets):
    loader = _loader(datasets["trajectory"], "trajectory", 0)
    with pytest.raises(ValueError, match=r"StreamLoader state lacks \['consumed'\]"):
        loader.load_state_dict({"epoch": 1, "stream_epoch": 0})


def test_skipping_is_cheaper_than_collating(datasets):
    """Starting at batch n draws the same random numbers as n delivered batches but collates none."""
    stream = _loader(datasets["trajectory"], "trajectory", 0).dataset
    n = 300
    it = iter(stream)
    expected = [next(it) for _ in range(n + 1)][-1]
    t0 = time.perf_counter()
    stream.start_batch = n
    got = next(iter(stream))
    skip_s = time.perf_counter() - t0
    stream.start_batch = 0
    assert np.array_equal(got["action"], expected["action"]) and got["episode_key"] == expected["episode_key"]
    assert skip_s < 5.0, f"skipping {n} batches took {skip_s:.2f} s"
