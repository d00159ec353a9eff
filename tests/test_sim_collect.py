"""Demonstration collection: shards, manifest/stats consistency, resume, reproducibility, CLI."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from rich.console import Console

from actionprior.data.schema import decode_trajectory
from actionprior.data.writer import iter_trajectories, load_manifest
from actionprior.embodiments import EmbodimentRegistry
from actionprior.sim import load_suite
from actionprior.sim.collect import cli_main, collect, episode_seed, plan_units

pytestmark = pytest.mark.sim

# The two experts not covered by test_sim_envs, run through the parallel (spawn) path.
ONLY = ["metaworld_sawyer/pick-place", "robosuite_panda_osc/stack"]
IMAGE = 32


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "ds"
    suite = load_suite().select(ONLY)
    report = collect(suite, 1, out, workers=2, seed=3, image_size=IMAGE, console=_quiet())
    return out, report


def _read_tar(path):
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, field = member.name.partition(".")
            samples.setdefault(key, {})[field] = tar.extractfile(member).read()
    return samples


def test_plan_units_and_seeds_are_deterministic():
    suite = load_suite().select(["robosuite_panda_osc"])
    units = plan_units(suite, 25, 10)
    assert [(u.task, u.index, u.target) for u in units] == [
        ("lift", 0, 10), ("lift", 1, 10), ("lift", 2, 5), ("stack", 0, 10), ("stack", 1, 10), ("stack", 2, 5)
    ]  # fmt: skip
    assert units[0].name == "robosuite_panda_osc_lift_0000"
    s = episode_seed(0, "robosuite_panda_osc", "lift", 0, 0)
    assert s == episode_seed(0, "robosuite_panda_osc", "lift", 0, 0)
    others = {episode_seed(b, "robosuite_panda_osc", t, u, a) for b in (0, 1) for t in ("lift", "stack")
              for u in (0, 1) for a in (0, 1)}  # fmt: skip
    assert len(others) == 16 and s in others


def test_collection_writes_consistent_manifest_and_stats(dataset):
    out, report = dataset
    registry = EmbodimentRegistry.from_dir()
    manifest = load_manifest(out)
    assert report.total_episodes == 2 and report.units_run == 2
    assert sorted(s["name"] for s in manifest["shards"]) == [
        "metaworld_sawyer_pick-place_0000",
        "robosuite_panda_osc_stack_0000",
    ]
    assert manifest["num_episodes"] == 2
    assert manifest["num_transitions"] == sum(s["num_transitions"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        record = manifest["collection"][shard["name"]]
        assert record["successes"] == shard["num_episodes"] == 1
        assert record["attempts"] == record["successes"] + record["failures"]
        traj = _read_tar(out / shard["traj"])
        obs = _read_tar(out / shard["obs"])
        assert sorted(traj) == sorted(e["key"] for e in shard["episodes"])
        for key, sample in traj.items():
            state, action, meta = decode_trajectory(sample, key)
            spec = registry[meta["embodiment"]]
            assert state.shape == (meta["length"], spec.state_dim)
            assert action.shape == (meta["length"], spec.action_dim)
            assert meta["success"] is True and meta["cameras"] == ["scene", "wrist"]
            assert meta["control_rate_hz"] == spec.control_rate_hz
            assert meta["instruction"] in load_suite().entry(meta["embodiment"], meta["task"]).instructions
            assert meta["seed"] == episode_seed(3, meta["embodiment"], meta["task"], 0, meta["attempt"])
            assert not any(f.endswith(".png") for f in sample)  # no pixels in trajectory shards
            frames = [f for f in obs[key] if f.endswith(".png")]
            assert len(frames) == 2 * meta["length"]
    stats = json.loads((out / "stats.json").read_text())["embodiments"]
    assert sorted(stats) == ["metaworld_sawyer", "robosuite_panda_osc"]
    for name, emb_stats in stats.items():
        arrays = [(s, a) for e, s, a in iter_trajectories(out, manifest) if e == name]
        actions = np.concatenate([a for _, a in arrays])
        assert emb_stats["num_transitions"] == len(actions)
        np.testing.assert_allclose(emb_stats["action"]["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)
        assert len(emb_stats["state"]["q99"]) == registry[name].state_dim


def test_rerun_resumes_without_rewriting_shards(dataset):
    out, _ = dataset
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    report = collect(load_suite().select(ONLY), 1, out, workers=2, seed=3, image_size=IMAGE, console=_quiet())
    assert report.units_run == 0 and report.units_skipped == 2
    assert report.total_episodes == 2  # counted from the manifest's collection records
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before


def test_same_seed_gives_identical_arrays_in_process(dataset, tmp_path):
    out, _ = dataset
    # Re-collect one entry in this process (not in a spawned worker): the arrays must match bit for bit.
    again = tmp_path / "again"
    collect(load_suite().select(ONLY[:1]), 1, again, workers=1, seed=3, image_size=IMAGE, console=_quiet())
    first = _read_tar(out / "obs-metaworld_sawyer_pick-place_0000.tar")
    second = _read_tar(again / "obs-metaworld_sawyer_pick-place_0000.tar")
    assert sorted(first) == sorted(second)
    for key in first:
        assert sorted(first[key]) == sorted(second[key])
        for field in ("state.npy", "action.npy", "scene.00000.png", "wrist.00010.png"):
            assert first[key][field] == second[key][field], field


def test_cli_reports_bad_arguments(tmp_path, capsys):
    assert cli_main(["--episodes-per-task", "1", "--out", str(tmp_path / "x"), "--only", "nobody"]) == 2
    assert "unknown entries ['nobody']" in capsys.readouterr().out
    assert cli_main(["--suite", "missing", "--episodes-per-task", "1", "--out", str(tmp_path / "x")]) == 2
    assert cli_main(["--episodes-per-task", "0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x" / "manifest.json").exists()
