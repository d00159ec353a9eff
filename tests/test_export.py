"""`actionprior export`: a Stage 2 checkpoint as a folder of safetensors + JSON that loads offline, no pickle."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from policy_builders import raw_observation, write_tiny_checkpoint

from actionprior.checkpoint import CheckpointError
from actionprior.cli import main
from actionprior.inference.export import read_exported
from actionprior.inference.policy import Policy


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = write_tiny_checkpoint(root / "tiny.ckpt")
    assert main(["export", "--ckpt", str(ckpt), "--out", str(root / "policy")]) == 0
    return ckpt, root / "policy"


def test_exported_folder_acts_exactly_like_its_checkpoint(exported, monkeypatch) -> None:
    ckpt, folder = exported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kwargs = dict(image_size=32, history_len=3, seed=5)
    a, b = Policy.from_checkpoint(ckpt, **kwargs), Policy.load(folder, **kwargs)
    for policy in (a, b):
        policy.reset()
    for step in range(6):
        obs = raw_observation("synth_arm8", seed=step)
        np.testing.assert_array_equal(a.act(obs), b.act(obs))
    assert b.describe()["normalization_fingerprint"] == a.describe()["normalization_fingerprint"]


def test_exported_folder_holds_no_pickle(exported) -> None:
    _, folder = exported
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "model.safetensors" in names and "actionprior.json" in names and "backbone/config.json" in names
    for path in folder.rglob("*"):
        if path.is_file():
            assert not zipfile.is_zipfile(path), path  # torch.save's pickle container
            head = path.read_bytes()[:2]
            assert head not in (b"\x80\x02", b"\x80\x04", b"\x80\x05"), path  # a pickle protocol header
    meta = json.loads((folder / "actionprior.json").read_text())
    assert meta["payload"]["normalization_fingerprint"] and meta["payload"]["vla"]["camera_names"] == [
        "scene",
        "wrist",
    ]


def test_a_broken_export_is_refused_in_one_line(exported, tmp_path) -> None:
    _, folder = exported
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(CheckpointError, match="no actionprior.json"):
        read_exported(broken)
    (broken / "actionprior.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not an actionprior policy description"):
        read_exported(broken)
    with pytest.raises(FileNotFoundError, match="not an exported policy folder"):
        Policy.load(tmp_path / "nothing-here")


def test_compiled_decoder_flag_gives_the_eager_actions(exported) -> None:
    ckpt, _ = exported
    kwargs = dict(image_size=32, history_len=3, seed=2)
    eager = Policy.from_checkpoint(ckpt, **kwargs)
    compiled = Policy.from_checkpoint(ckpt, **kwargs, compile_decoder=True)
    assert compiled.model.head._compiled_loop is not None and eager.model.head._compiled_loop is None
    compiled.model.head.compile_sampler(backend="eager")  # trace only: keeps the test fast on CPU
    for policy in (eager, compiled):
        policy.reset()
    obs = raw_observation("synth_arm4", seed=3)
    np.testing.assert_allclose(compiled.act(obs), eager.act(obs), rtol=1e-5, atol=1e-6)
