"""Joint statistics: two datasets of the same embodiments become mixable, with one normalisation."""

from __future__ import annotations

import json

import pytest

from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.study.joint_stats import main


def test_joint_stats_make_overlapping_datasets_mixable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic_dataset(a, episodes_per_embodiment=3, with_frames=False, seed=0)
    write_synthetic_dataset(b, episodes_per_embodiment=5, with_frames=False, seed=1)
    with pytest.raises(ValueError, match="different statistics"):
        ActionPriorDataModule([str(a), str(b)], val_fraction=0.0)
    assert main([str(a), str(b), "--marker", str(tmp_path / "m.json")]) == 0
    dm = ActionPriorDataModule([str(a), str(b)], val_fraction=0.0)
    alone = ActionPriorDataModule([str(a)], val_fraction=0.0)
    assert dm.normalization == alone.normalization  # every mixture of them normalises alike
    counts = json.loads((tmp_path / "m.json").read_text())
    per_dataset = [json.loads((d / "manifest.json").read_text())["num_transitions"] for d in (a, b)]
    assert sum(counts.values()) == sum(per_dataset)
