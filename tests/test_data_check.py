"""`data check` finds every problem and names file and key; `data stats` prints the per-embodiment table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds

from actionprior.data import check, summary
from actionprior.data.check import check_dataset
from actionprior.data.schema import encode_npy
from actionprior.data.tario import iter_tar_samples


def _rewrite(path: Path, key: str, field: str, value: bytes) -> None:
    """Rewrite a shard with one field of one sample replaced."""
    samples = [dict(s) for s in iter_tar_samples(path.read_bytes(), str(path))]
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            s.pop("__url__")
            if s["__key__"] == key:
                s[field] = value
            sink.write({k: bytes(v) if isinstance(v, memoryview) else v for k, v in s.items()})


def _first_key(data_dir: Path, shard: str) -> str:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    return next(s for s in manifest["shards"] if s["traj"] == shard)["episodes"][0]["key"]


def test_clean_dataset_passes(synthetic_dataset, capsys) -> None:
    assert check_dataset(synthetic_dataset.path) == []
    assert check.cli_main([str(synthetic_dataset.path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_every_problem_is_reported_with_file_and_key(make_synthetic_dataset, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    data = make_synthetic_dataset().path
    # 1. a truncated tar
    truncated = data / "traj-00002.tar"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    # 2. a NaN in an action
    nan_key = _first_key(data, "traj-00000.tar")
    ep = next(e for e in make_synthetic_dataset("originals").episodes if e.key == nan_key)
    bad = ep.action.copy()
    bad[3, 1] = np.nan
    _rewrite(data / "traj-00000.tar", nan_key, "action.npy", encode_npy(bad))
    # 3. a wrong action dimension
    dim_key = _first_key(data, "traj-00001.tar")
    ep = next(e for e in make_synthetic_dataset("originals2").episodes if e.key == dim_key)
    _rewrite(data / "traj-00001.tar", dim_key, "action.npy", encode_npy(ep.action[:, :-1].copy()))
    # 4. an episode missing from the manifest
    manifest = json.loads((data / "manifest.json").read_text())
    dropped = manifest["shards"][3]["episodes"].pop(0)
    (data / "manifest.json").write_text(json.dumps(manifest))

    problems = check_dataset(data)
    by_file = {(Path(p.file).name, p.key): p.message for p in problems}
    assert any(f == "traj-00002.tar" and "truncated" in m for (f, _), m in by_file.items())
    assert (
        "NaN/Inf" in by_file[("traj-00000.tar", nan_key)]
        and "t=3, dim=1" in by_file[("traj-00000.tar", nan_key)]
    )
    assert "action dim" in by_file[("traj-00001.tar", dim_key)]
    assert "not listed in manifest.json" in by_file[("traj-00003.tar", dropped["key"])]
    assert "not listed in manifest.json" in by_file[("obs-00003.tar", dropped["key"])]
    # episodes of the truncated shard that are lost are reported as absent, by key
    assert any(f == "traj-00002.tar" and "absent from the shard" in m for (f, _), m in by_file.items())
    # the manifest's counts no longer add up either
    assert any("num_episodes" in p.message for p in problems)

    assert check.cli_main([str(data)]) == 1
    out = capsys.readouterr().out
    assert "traj-00002.tar" in out and nan_key in out and "problem" in out


def test_missing_and_mismatching_files(make_synthetic_dataset) -> None:
    data = make_synthetic_dataset().path
    (data / "obs-00001.tar").unlink()
    (data / "stats.json").unlink()
    (data / "traj-stray.tar").write_bytes(b"")
    messages = {(Path(p.file).name, p.message.split(";")[0]) for p in check_dataset(data)}
    assert any(f == "obs-00001.tar" and "missing" in m for f, m in messages)
    assert ("stats.json", "missing stats.json") in messages
    assert ("traj-stray.tar", "shard file not listed in manifest.json") in messages


def test_missing_manifest_and_bad_schema(tmp_path, make_synthetic_dataset) -> None:
    (p,) = check_dataset(tmp_path)
    assert p.file.endswith("manifest.json") and "missing manifest.json" in p.message
    data = make_synthetic_dataset().path
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (data / "manifest.json").write_text(json.dumps(manifest))
    (p,) = check_dataset(data)
    assert "schema_version 99" in p.message


def test_undecodable_frame_is_named(make_synthetic_dataset) -> None:
    data = make_synthetic_dataset().path
    key = _first_key(data, "traj-00004.tar")
    _rewrite(data / "obs-00004.tar", key, "wrist.00002.png", b"not a png")
    problems = check_dataset(data, verify=False)  # (verified, the rewritten file's checksum differs too)
    assert [(Path(p.file).name, p.key) for p in problems] == [("obs-00004.tar", key)]
    assert "wrist.00002.png: undecodable PNG" in problems[0].message


def test_stats_table_and_recompute(make_synthetic_dataset, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # Rich wraps cells to the (captured) terminal width
    data = make_synthetic_dataset().path
    (data / "stats.json").unlink()
    assert summary.cli_main([str(data)]) == 0
    out = capsys.readouterr().out
    assert "synth_arm7" in out and "warning" in out
    assert summary.cli_main([str(data), "--recompute"]) == 0
    assert (data / "stats.json").exists() and check_dataset(data) == []
    table = summary.embodiment_summary(json.loads((data / "manifest.json").read_text()))
    assert table["synth_arm7"]["state_dim"] == 9 and table["synth_arm7"]["episodes"] == 6
    assert table["synth_arm7"]["tasks"] == {"reach": 3, "push": 3}
