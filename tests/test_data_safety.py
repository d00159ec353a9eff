"""Regression tests of issue 12's data findings: each reproduces one finding and shows the bound that holds now.

(The seeded fuzzing of the same readers is tests/test_fuzz_data.py.)
"""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from actionprior import cli
from actionprior.data import limits
from actionprior.data.datamodule import ActionPriorDataModule
from actionprior.data.location import file_url, is_remote
from actionprior.data.safe_json import loads_bounded
from actionprior.data.schema import DataError, decode_npy, decode_png, encode_npy
from actionprior.data.shards import iter_shard, shard_source
from actionprior.data.stats import stats_problems
from actionprior.data.stream import WindowStream
from actionprior.data.tario import iter_tar_members
from actionprior.data.writer import load_manifest, load_stats, write_stats


def _deadline(fn, seconds: float = 20.0):
    """Run ``fn`` in a thread; fail (rather than hang the suite) if it does not return in time."""
    result: list = []

    def target() -> None:
        try:
            result.append(("ok", fn()))
        except BaseException as exc:
            result.append(("error", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


def _set_shard_name(data: Path, value: object, field: str = "traj") -> None:
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][0][field] = value
    (data / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "name",
    [
        "pipe:echo x >> {marker}; cat traj-00000.tar",
        "/etc/passwd",
        "../traj-00000.tar",
        "https://h/x.tar",
        "a b.tar",
    ],
)
def test_manifest_shard_names_cannot_run_commands_or_leave_the_folder(
    make_synthetic_dataset, monkeypatch, tmp_path, name: str
) -> None:
    data = make_synthetic_dataset().path
    marker = tmp_path / "marker"
    _set_shard_name(data, name.format(marker=marker))
    monkeypatch.chdir(data)  # Path('.') / 'pipe:...' stays 'pipe:...': the dataset path of the exploit
    for path in (".", ""):
        with pytest.raises(
            DataError, match=r"manifest\.json: shard '00000' traj .* is not a plain file name"
        ):
            load_manifest(path)
    manifest = json.loads((data / "manifest.json").read_text())
    with pytest.raises(DataError, match="not a plain file name"):
        shard_source(".", "trajectory", "all", 0.0, manifest=manifest)  # even given an unvalidated manifest
    assert not marker.exists()


def test_symlink_out_of_the_dataset_is_refused(make_synthetic_dataset, tmp_path) -> None:
    data = make_synthetic_dataset().path
    outside = tmp_path / "elsewhere.tar"
    (data / "traj-00000.tar").rename(outside)
    (data / "traj-00000.tar").symlink_to(outside)
    with pytest.raises(DataError, match="outside the dataset folder"):
        shard_source(data, "trajectory", "all", 0.0)


def test_user_written_pipe_template_streams_a_dataset(synthetic_dataset) -> None:
    """Remote and pipe: sources stay possible where the user writes them: ``{name}`` is the validated name."""
    template = f"pipe:cat {synthetic_dataset.path}/{{name}}"
    assert is_remote(template) and file_url(template, "stats.json").endswith("/stats.json")
    assert load_manifest(template) == load_manifest(synthetic_dataset.path)
    assert load_stats(template) == load_stats(synthetic_dataset.path)
    source = shard_source(template, "trajectory", "all", 0.0)
    assert source.urls[0] == f"pipe:cat {synthetic_dataset.path}/traj-00000.tar"
    assert [s["__key__"] for s in iter_shard(source.urls[0])] == [
        e.key for e in synthetic_dataset.episodes[:5]
    ]
    dm = ActionPriorDataModule([template], batch_size=4, num_workers=0, val_fraction=0.0, cache_mb=0)
    assert next(iter(dm.train_dataloader()))["state"].shape[0] == 4
    with pytest.raises(DataError, match=r"must say where the file name goes with \{name\}"):
        file_url("pipe:aws s3 cp s3://b/ds -", "manifest.json")
    assert file_url("https://host/ds/", "traj-0.tar") == "https://host/ds/traj-0.tar"


def _tar_with_pax(records: bytes) -> bytes:
    def header(name: bytes, size: int, kind: bytes) -> bytes:
        h = bytearray(512)
        h[0 : len(name)] = name
        h[100:108], h[108:116], h[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
        h[124:136], h[136:148] = b"%011o\0" % size, b"00000000000\0"
        h[156:157], h[257:265], h[148:156] = kind, b"ustar\x0000", b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
        return bytes(h)

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 512)

    return (
        header(b"././@PaxHeader", len(records), b"x")
        + pad(records)
        + header(b"ep.meta.json", 2, b"0")
        + pad(b"{}")
        + bytes(1024)
    )


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (b"14 size=-1536\n", "size is not a number"),  # looped forever: the reader moved backwards
        (b"12 size=abc\n", "size is not a number"),
        (b"0 size=1\n", "record length out of range"),
        (b"11 path=\xff\xfe\n", "not valid UTF-8"),
        (b"20 size=99999999999\n", "over the .* cap per member"),
    ],
)
def test_tar_reader_refuses_hostile_pax_headers_without_looping(records: bytes, message: str) -> None:
    data = _tar_with_pax(records)
    for verify in (True, False):
        with pytest.raises(DataError, match=message):
            _deadline(lambda v=verify: list(iter_tar_members(data, "x.tar", verify=v)))


def test_tar_reader_streams_and_refuses_a_huge_member_before_reading_it(tmp_path) -> None:
    """A valid tar with a 2.5 GiB member (sparse on disk) is refused from its header, in constant memory."""
    path = tmp_path / "traj-big.tar"
    size = 5 * 2**29
    h = bytearray(512)
    h[0:12], h[124:136], h[156:157], h[257:265] = b"ep.state.npy", b"%011o\0" % size, b"0", b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    with open(path, "wb") as f:
        f.write(bytes(h))
        f.seek(512 + size)
        f.write(bytes(1024))
    with open(path, "rb") as f, pytest.raises(DataError, match="over the .* cap per member"):
        list(iter_tar_members(f, str(path)))


def test_bounded_json_reader() -> None:
    assert loads_bounded(b'{"a": [1, 2.5]}', "f.json", 100) == {"a": [1, 2.5]}
    cases = {
        b"[" * 100_000 + b"]" * 100_000: "nested deeper than 32",
        b'{"a": NaN}': "NaN is not allowed",
        b'{"a": 1e999}': "overflows to infinity",
        b'{"a": "\xff"}': r"not valid UTF-8 \(byte 7\)",
        b'{"a": ' + b"9" * 5000 + b"}": "invalid JSON",
    }
    for data, message in cases.items():
        with pytest.raises(DataError, match=f"f.json: .*{message}"):
            loads_bounded(data, "f.json", 10**6)
    # An unterminated string of escaped quotes once made the depth scan quadratic (16 KB: 1.4 s).
    hostile = b'["' + b'\\"' * 500_000 + b"\\"
    with pytest.raises(DataError, match="invalid JSON"):
        _deadline(lambda: loads_bounded(hostile, "f.json", 10**7), seconds=10)
    with pytest.raises(DataError, match="f.json: 203 bytes, over the 100-byte cap"):
        loads_bounded(b"[" + b"1," * 100 + b"1]", "f.json", 100)


def test_forged_npy_header_and_png_bomb_are_refused_before_allocating() -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 4)})
    with pytest.raises(DataError, match=r"declares float32 \[1000000000, 4\]"):
        decode_npy(buf.getvalue() + bytes(64), "x state.npy")
    np.testing.assert_array_equal(decode_npy(encode_npy(np.eye(3, dtype=np.float32)), "x"), np.eye(3))
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(DataError, match=r"12000x12000 pixels, over the cap of 16777216"):
        decode_png(bomb.getvalue(), "x scene.00000.png")


def test_stats_validation_and_writer_refuse_non_finite_or_absurd_values(make_synthetic_dataset) -> None:
    data = make_synthetic_dataset().path
    good = load_stats(data)
    assert stats_problems(good) == []
    name = next(iter(good))
    for kind, key, value, message in [
        ("action", "q99", -1e5, r"q99\[0\] = -100000.0 < q01\[0\]"),
        ("state", "max", 1e308, r"max\[0\] = 1e\+308: not finite or beyond"),
        ("state", "std", float("nan"), r"std\[0\] = nan: not finite"),
    ]:
        bad = json.loads(json.dumps(good))
        bad[name][kind][key][0] = value
        assert any(re.search(message, p) for p in stats_problems(bad)), stats_problems(bad)
    payload = json.loads((data / "stats.json").read_text())
    payload["embodiments"][name]["action"]["q99"][0] = -1e5
    (data / "stats.json").write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"stats\.json: .*q99\[0\] .*--recompute"):
        load_stats(data)


def test_write_stats_refuses_an_episode_with_inf(make_synthetic_dataset) -> None:
    import tarfile

    import webdataset as wds

    data = make_synthetic_dataset().path
    shard = data / "traj-00001.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    samples: dict[str, dict] = {}
    for name, body in members:
        key, field = name.split(".", 1)
        samples.setdefault(key, {"__key__": key})[field] = body
    first = next(iter(samples.values()))
    action = np.load(io.BytesIO(first["action.npy"]))
    action[2, 1] = np.inf
    first["action.npy"] = encode_npy(action)
    with wds.TarWriter(str(shard)) as sink:
        for sample in samples.values():
            sink.write(sample)
    with pytest.raises(
        DataError, match=r"traj-00001\.tar:.*action has 1 NaN/Inf values \(first at t=2, dim=1\)"
    ):
        write_stats(data)


def test_stream_refuses_an_episode_that_normalises_to_nan(synthetic_dataset) -> None:
    dm = ActionPriorDataModule([str(synthetic_dataset.path)], batch_size=4, num_workers=0, val_fraction=0.0)
    stream: WindowStream = dm.make_stream("train")

    class Broken:
        def normalize(self, embodiment, kind, x):
            return np.full_like(x, np.nan) if kind == "action" else x

    stream.batches.normalizer = Broken()  # the batch contract normalises (data/batch.py)
    sample = next(iter_shard(str(synthetic_dataset.path / "traj-00000.tar")))
    with pytest.raises(DataError, match=rf"traj-00000\.tar:{sample['__key__']}: action has NaN/Inf"):
        stream._decode(sample, np.random.default_rng(0))


def test_cli_refusals_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch) -> None:
    import sys
    import types

    def refuse(argv: list[str]) -> int:
        load_manifest(tmp_path)  # a refusal from deep inside a subcommand
        return 0

    (tmp_path / "manifest.json").write_text('{"schema_version": 1, "shards": "nope"}')
    module = types.ModuleType("fake_tool")
    module.cli_main = refuse
    monkeypatch.setitem(sys.modules, "fake_tool", module)
    monkeypatch.setitem(cli.TOOLS, ("fake",), ("fake_tool", "cli_main", "raises a DataError"))
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("actionprior: ") and "manifest.json" in err and err.count("\n") == 1
    assert "Traceback" not in err
    with pytest.raises(DataError):
        cli.main(["--debug", "fake"])
    monkeypatch.setenv("ACTIONPRIOR_DEBUG", "1")
    with pytest.raises(DataError):
        cli.main(["fake"])
    monkeypatch.delenv("ACTIONPRIOR_DEBUG")
    module.cli_main = lambda argv: 1 / 0  # a bug is not a refusal: its traceback stays
    with pytest.raises(ZeroDivisionError):
        cli.main(["fake"])


def test_limits_are_documented_numbers() -> None:
    assert limits.MAX_MEMBER_BYTES <= limits.MAX_SAMPLE_BYTES <= 1024 * limits.MiB
    assert limits.MAX_ABS_VALUE == 1e6 and limits.MAX_JSON_DEPTH == 32
