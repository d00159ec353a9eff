"""Trajectory-only collection (``data collect --no-images``): Stage 1 mixes it in, Stage 2 refuses it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from actionprior.data.check import check_dataset
from actionprior.data.datamodule import ActionPriorDataModule, DatasetSource
from actionprior.data.schema import DataError
from actionprior.data.writer import DatasetWriter, load_manifest
from actionprior.embodiments import EmbodimentRegistry
from actionprior.sim import load_suite
from actionprior.sim.collect import cli_main, collect

pytestmark = pytest.mark.sim


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("noimg")
    full, traj = root / "full", root / "traj"
    collect(load_suite().select(["metaworld_sawyer/drawer-open"]), 1, full, workers=1, image_size=32,
            console=_quiet())  # fmt: skip
    code = cli_main(["--only", "robosuite_ur5e_joint/lift", "--episodes-per-task", "2", "--out", str(traj),
                     "--workers", "1", "--seed", "5", "--no-images"])  # fmt: skip
    assert code == 0
    return full, traj


def test_no_images_writes_trajectory_shards_only(datasets):
    _, traj = datasets
    manifest = load_manifest(traj)
    assert manifest["views"] == ["trajectory"]
    assert sorted(p.name for p in traj.glob("*.tar")) == ["traj-robosuite_ur5e_joint_lift_0000.tar"]
    assert [s["obs"] for s in manifest["shards"]] == [None]
    assert manifest["num_episodes"] == 2 and manifest["num_transitions"] > 20
    assert json.loads((traj / "stats.json").read_text())["embodiments"]["robosuite_ur5e_joint"]
    assert check_dataset(traj) == []  # `data check` accepts a trajectory-only dataset


def test_resume_with_other_views_is_refused(datasets):
    full, traj = datasets
    registry = EmbodimentRegistry.from_dir()
    with pytest.raises(DataError, match="views \\['trajectory'\\] but this run writes"):
        DatasetWriter(traj, registry, views=("trajectory", "observation"))
    with pytest.raises(DataError, match="same --no-images setting"):
        DatasetWriter(full, registry, views=("trajectory",))


def test_stage1_mixes_trajectory_only_dataset(datasets):
    full, traj = datasets
    dm = ActionPriorDataModule(
        [DatasetSource(str(full), 1.0), DatasetSource(str(traj), 3.0)],
        view="trajectory", chunk_len=4, history_len=2, batch_size=64, num_workers=0, val_fraction=0.0,
        shuffle_buffer=16, windows_per_episode=2,
    )  # fmt: skip
    assert sorted(dm.registry.names) == ["metaworld_sawyer", "robosuite_ur5e_joint"]
    assert [s.urls[0].endswith(".tar") and "/traj-" in s.urls[0] for s in dm.train_sources] == [True, True]
    batch = next(iter(dm.make_stream("train")))
    ids = np.asarray(batch["embodiment_id"])
    ur5e = dm.registry.names.index("robosuite_ur5e_joint")
    # weight 3 : 1 -> about 3/4 of the windows come from the trajectory-only dataset
    assert 0.5 < float(np.mean(ids == ur5e)) < 0.95


def test_stage2_refuses_trajectory_only_dataset(datasets):
    full, traj = datasets
    with pytest.raises(DataError) as err:
        ActionPriorDataModule([str(full), str(traj)], view="observation", val_fraction=0.0)
    message = str(err.value)
    assert str(traj) in message and "trajectory-only" in message and "\n" not in message
    ActionPriorDataModule([str(full)], view="observation", val_fraction=0.0)  # the full one is accepted
