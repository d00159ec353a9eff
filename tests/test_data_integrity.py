"""Issue 26: shard checksums, one verdict for `data check` and the stream, errors that name their file.

A single flipped bit in a ``.npy`` payload or a PNG frame is refused by both readers; members a sample should
not have are reported; a dataset written before checksums is read with a notice and rehashed; the three
misleading messages say what is wrong. (The seeded set of corruptions is tests/test_fuzz_data.py.)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from actionprior.data import check, shards
from actionprior.data.check import check_dataset
from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.schema import DataError
from actionprior.data.shards import iter_episodes
from actionprior.data.writer import load_manifest, write_stats

T0, O0 = "traj-00000.tar", "obs-00000.tar"


def _member(path: Path, suffix: str, which: int = 0) -> tarfile.TarInfo:
    with tarfile.open(path) as tar:
        return [m for m in tar.getmembers() if m.isreg() and m.name.endswith(suffix)][which]


def _flip(path: Path, pos: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 1 << bit
    path.write_bytes(bytes(data))


def _flip_npy_value(path: Path, field: str = "action.npy") -> str:
    """Flip one low mantissa bit of a float in a ``.npy`` member: a finite, plausible value. Returns the key."""
    member = _member(path, field)
    with open(path, "rb") as f:
        f.seek(member.offset_data + 8)
        header_len = int.from_bytes(f.read(2), "little")
    _flip(path, member.offset_data + 10 + header_len + 4 * 3)
    return member.name.split(".", 1)[0]


def _read_stream(path: Path | str, view: str) -> None:
    """Every shard of one view read as the stream reads it (the full split), then one batch."""
    dm = ActionPriorDataModule(
        [str(path)], view=view, batch_size=4, num_workers=0, val_fraction=0.0, cache_mb=0
    )
    stream = dm.make_stream("train")
    rng = np.random.default_rng(0)
    for source in stream.sources:
        for index in range(len(source.files)):
            stream.read_shard(source, index, rng)
    next(iter(dm.train_dataloader()))


def _problems(path: Path, **kwargs) -> list[tuple[str, str, str]]:
    return [(Path(p.file).name, p.key, p.message) for p in check_dataset(path, **kwargs)]


def _strip_checksums(path: Path) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard.pop("checksums")
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_every_shard_file_records_its_size_and_sha256(synthetic_dataset) -> None:
    manifest = load_manifest(synthetic_dataset.path)
    for shard in manifest["shards"]:
        for field in ("traj", "obs"):
            data = (synthetic_dataset.path / shard[field]).read_bytes()
            assert shard["checksums"][field] == {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }


def test_a_flipped_bit_in_an_npy_payload_is_refused_by_check_and_stream(make_synthetic_dataset) -> None:
    data = make_synthetic_dataset().path
    _flip_npy_value(data / T0)
    problems = _problems(data)
    assert [(f, k) for f, k, _ in problems] == [(T0, "")]  # the values still decode: only the sum tells
    assert problems[0][2].startswith("checksum mismatch: sha256 ")
    with pytest.raises(DataError, match=rf"{T0}: checksum mismatch: sha256 .*restore it from its source"):
        _read_stream(data, "trajectory")
    with pytest.raises(DataError, match=rf"{T0}: checksum mismatch"):
        list(iter_episodes(data, ActionPriorDataModule([str(data)], num_workers=0).registry))
    with pytest.raises(
        DataError, match=rf"^pipe:cat .*/{T0}: checksum mismatch"
    ):  # streamed, not a local file
        _read_stream(f"pipe:cat {data}/{{name}}", "trajectory")
    with pytest.raises(DataError, match=rf"{T0}: checksum mismatch"):  # no statistics of damaged values
        write_stats(data)
    # Opting out reads it (the stream) and skips the comparison (data check).
    assert _problems(data, verify=False) == []
    ActionPriorDataModule([str(data)], num_workers=0, val_fraction=0.0, verify_checksums=False)
    stream = ActionPriorDataModule(
        [str(data)], num_workers=0, val_fraction=0.0, verify_checksums=False
    ).make_stream("train")
    assert stream.read_shard(stream.sources[0], 0, np.random.default_rng(0))


def test_a_flipped_bit_in_a_png_frame_is_refused_by_check_and_stream(make_synthetic_dataset) -> None:
    data = make_synthetic_dataset().path
    member = _member(data / O0, ".png", which=3)
    with open(data / O0, "rb") as f:
        f.seek(member.offset_data)
        png = f.read(member.size)
    _flip(data / O0, member.offset_data + png.index(b"IDAT") + 6, bit=1)  # inside the compressed pixels
    assert (O0, "", "checksum mismatch") in {(f, k, m.split(":")[0]) for f, k, m in _problems(data)}
    with pytest.raises(DataError, match=rf"{O0}: checksum mismatch"):
        _read_stream(data, "observation")
    _read_stream(data, "trajectory")  # the trajectory view never opens an obs- shard


def test_a_pickle_member_is_reported_by_check_and_skipped_with_a_warning_by_the_stream(
    make_synthetic_dataset, caplog
) -> None:
    data = make_synthetic_dataset().path
    with tarfile.open(data / T0) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isreg()]
    key = members[0][0].name.split(".", 1)[0]
    with tarfile.open(data / T0, "w") as tar:
        for info, body in members:
            tar.addfile(info, io.BytesIO(body))
            if info.name == f"{key}.state.npy":
                extra = tarfile.TarInfo(f"{key}.extra.pyd")
                extra.size = 6
                tar.addfile(extra, io.BytesIO(b"\x80\x04K\x01.\n"))
    problems = _problems(data)
    assert (
        T0,
        key,
        f"unexpected member '{key}.extra.pyd' (a pickle; never loaded, but it does not belong in a shard)",
    ) in problems
    assert any(f == T0 and m.startswith("checksum mismatch") for f, _, m in problems)
    with pytest.raises(DataError, match=rf"{T0}: checksum mismatch"):
        _read_stream(data, "trajectory")

    # Without checksums (a dataset from before them) the stream still says what it skipped, once.
    _strip_checksums(data)
    assert [(f, k) for f, k, _ in _problems(data)] == [(T0, key)]
    shards._MENTIONED.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="actionprior"):
        _read_stream(data, "trajectory")
        _read_stream(data, "trajectory")
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1  # once per dataset (and process)
    assert f"{T0}:{key}: skipped unexpected member '{key}.extra.pyd' (a pickle" in skipped[0]


def test_a_dataset_without_checksums_is_read_with_a_notice_and_rehashed(
    make_synthetic_dataset, caplog, capsys
):
    data = make_synthetic_dataset().path
    _strip_checksums(data)
    shards._MENTIONED.clear()
    with caplog.at_level(logging.WARNING, logger="actionprior"):
        ActionPriorDataModule([str(data)], num_workers=0, val_fraction=0.1)
    notices = [r.getMessage() for r in caplog.records if "no checksum" in r.getMessage()]
    assert len(notices) == 1 and f"data check {data} --rehash" in notices[0]
    assert check.cli_main([str(data)]) == 0
    assert "note: " in capsys.readouterr().out

    # Without checksums the stream checks the tar headers: a flipped header bit is refused, as data check does.
    member = _member(data / T0, "meta.json")
    _flip(data / T0, member.offset_data - 512 + 136)  # the mtime field, which no reader uses
    assert any("checksum mismatch" in m and "header" in m for _, _, m in _problems(data))
    with pytest.raises(DataError, match=rf"{T0}: corrupt tar header at byte .* \(checksum mismatch\)"):
        _read_stream(data, "trajectory")
    assert check.cli_main([str(data), "--rehash"]) == 1  # a damaged dataset gets no checksums
    assert "no checksum added; fix the problems first" in capsys.readouterr().out
    _flip(data / T0, member.offset_data - 512 + 136)

    assert check.cli_main([str(data), "--rehash"]) == 0
    assert "recorded the checksums of 10 shard files" in capsys.readouterr().out
    manifest = load_manifest(data)
    for shard in manifest["shards"]:
        digest = hashlib.sha256((data / shard["obs"]).read_bytes()).hexdigest()
        assert shard["checksums"]["obs"]["sha256"] == digest
    _flip_npy_value(data / T0)
    assert any(m.startswith("checksum mismatch") for _, _, m in _problems(data))


def test_the_stream_refuses_what_check_refuses(make_synthetic_dataset) -> None:
    data = make_synthetic_dataset().path
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][0]["num_transitions"] += 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert any("num_transitions" in m for _, _, m in _problems(data))
    with pytest.raises(
        DataError, match=r"manifest\.json: shard '00000': num_transitions \d+ but episodes sum"
    ):
        _read_stream(data, "trajectory")

    data = make_synthetic_dataset("appended").path
    with open(data / T0, "ab") as f:
        f.write(b"garbage after the end")
    _strip_checksums(data)  # the sum would catch it: show the tar reader does too
    assert any(
        m.startswith("unreadable or truncated tar: data after the end-of-archive")
        for _, _, m in _problems(data)
    )
    with pytest.raises(DataError, match=rf"{T0}: data after the end-of-archive marker"):
        _read_stream(data, "trajectory")


def test_statistics_errors_name_stats_json(make_synthetic_dataset) -> None:
    data = make_synthetic_dataset().path
    payload = json.loads((data / "stats.json").read_text())
    name = next(iter(payload["embodiments"]))
    part = payload["embodiments"][name]["state"]
    for key in part:
        part[key] = part[key][:-1]
    del payload["fingerprint"]  # as if written by hand: no fingerprint to check, the spec's dims still are
    (data / "stats.json").write_text(json.dumps(payload))
    with pytest.raises(DataError, match=rf"stats\.json: '{name}' state statistics have \d dims, spec has \d"):
        ActionPriorDataModule([str(data)], num_workers=0)
    assert any(f == "stats.json" and "statistics have" in m for f, _, m in _problems(data))

    # A constant dim is valid statistics, but not the ones the file recorded: its fingerprint tells.
    data = make_synthetic_dataset("constant").path
    payload = json.loads((data / "stats.json").read_text())
    action = payload["embodiments"][name]["action"]
    for key in ("mean", "q01", "q99", "min", "max"):
        action[key][1] = action["mean"][1]
    action["std"][1] = 0.0
    (data / "stats.json").write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"stats\.json: its fingerprint '\w+' is not that of the statistics"):
        ActionPriorDataModule([str(data)], num_workers=0)
    assert any(f == "stats.json" and "fingerprint" in m for f, _, m in _problems(data))


def test_an_empty_dataset_path_names_the_current_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^\./manifest\.json: no manifest; is '' a dataset"):
        ActionPriorDataModule([{"path": ""}], num_workers=0)


def test_data_check_sizes_every_frame_with_or_without_decoding(make_synthetic_dataset) -> None:
    import webdataset as wds

    from actionprior.data.schema import encode_png
    from actionprior.data.tario import iter_tar_samples

    data = make_synthetic_dataset().path
    samples = [dict(s) for s in iter_tar_samples((data / O0).read_bytes(), O0)]
    key = samples[0]["__key__"]
    samples[0]["wrist.00003.png"] = encode_png(np.zeros((8, 8, 3), np.uint8))  # the others are 16x16
    with wds.TarWriter(str(data / O0)) as sink:
        for sample in samples:
            sample.pop("__url__")
            sink.write(sample)
    for decode in (True, False):
        problems = _problems(data, decode_frames=decode, verify=False)
        assert [(f, k) for f, k, _ in problems] == [(O0, key)]
        assert "wrist.00003.png: frame size 8x8 differs from 16x16 of camera 'wrist'" in problems[0][2]
