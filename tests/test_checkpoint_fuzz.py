"""Damaged and hostile checkpoint files: every reader refuses them in one line naming the file, and nothing in
them is ever executed (a pickle payload that would create a marker file when unpickled never does)."""

from __future__ import annotations

import os
import pickle
import random
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from actionprior.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    StoredCheckpoint,
    load_action_prior,
    load_checkpoint_file,
)
from actionprior.data.synthetic import write_synthetic_dataset
from actionprior.training.lightning_cli import run

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = ["--data.chunk_len", "4", "--data.history_len", "2", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.batches_per_epoch", "2", "--data.val_fraction", "0", "--data.shuffle_buffer", "16",
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "1"]  # fmt: skip
PRIOR = ["--model.init_args.prior.width", "32", "--model.init_args.prior.depth", "1",
         "--model.init_args.prior.heads", "2", "--model.init_args.prior.latent_dim", "8"]  # fmt: skip


class _WritesMarker:
    """Unpickling this runs ``os.system('touch MARKER')``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic dataset with frames and a real 1-step Stage 1 checkpoint."""
    root = tmp_path_factory.mktemp("fuzz")
    data = root / "synth"
    write_synthetic_dataset(data, episodes_per_embodiment=3, image_size=32)
    run(["fit", "-c", str(CONFIGS / "stage1.yaml"), "--data.datasets", f"[{{path: {data}}}]", *TINY, *PRIOR,
         "--trainer.default_root_dir", str(root / "s1"), "--trainer.logger.init_args.save_dir", str(root / "s1")])  # fmt: skip
    return data, root / "s1" / "checkpoints" / "last.ckpt"


def _damaged(good: bytes, marker: Path) -> dict[str, bytes]:
    rng = random.Random(0)
    corrupted = bytearray(good)
    for i in rng.sample(range(len(good)), 64):  # random bytes written over a real checkpoint
        corrupted[i] = rng.randrange(256)
    evil_zip = Path(str(marker) + ".zip")
    torch.save({"state_dict": {}, "actionprior": _WritesMarker(marker)}, evil_zip)
    return {
        "empty": b"",
        "random bytes": rng.randbytes(4096),
        "random bytes (short)": rng.randbytes(7),
        "truncated to 10%": good[: len(good) // 10],
        "truncated to 50%": good[: len(good) // 2],
        "truncated by 1 byte": good[:-1],
        "overwritten bytes": bytes(corrupted),
        "pickle payload": pickle.dumps({"state_dict": _WritesMarker(marker)}),
        "pickle payload in torch zip": evil_zip.read_bytes(),
        "a tensor, not a dict": _saved(torch.zeros(3), marker.parent),
        "not an actionprior checkpoint": _saved({"state_dict": {}, "global_step": 3}, marker.parent),
    }


def _saved(obj: object, where: Path) -> bytes:
    path = where / "obj.pt"
    torch.save(obj, path)
    return path.read_bytes()


def _one_line_naming(exc: BaseException, path: Path) -> str:
    message = str(exc)
    assert "\n" not in message, f"multi-line error: {message!r}"
    assert str(path) in message, f"the error does not name {path}: {message!r}"
    assert len(message) < 400, message
    return message


def test_readers_refuse_damaged_files_in_one_line(stage1, tmp_path):
    _, good = stage1
    marker = tmp_path / "MARKER"
    for name, blob in _damaged(good.read_bytes(), marker).items():
        path = tmp_path / f"{name.replace(' ', '_')}.ckpt"
        path.write_bytes(blob)
        for reader in (load_checkpoint_file, StoredCheckpoint.read, load_action_prior):
            if reader is load_checkpoint_file and name in (
                "not an actionprior checkpoint",
                "overwritten bytes",
            ):
                continue  # a readable dict: only the payload check (the other readers) refuses it
            try:
                reader(path)
            except CheckpointError as exc:
                _one_line_naming(exc, path)
            else:
                pytest.fail(f"{reader.__name__} accepted a checkpoint file that is {name}")
    assert not marker.exists(), "a pickle payload was executed"


def test_hostile_pickle_is_refused_as_such(tmp_path):
    marker = tmp_path / "MARKER"
    # In torch's zip format (protocol 2) the blocked global is named; a plain protocol-5 pickle fails earlier
    # (its FRAME opcode), as unreadable. Neither is ever unpickled beyond the weights-only allow list.
    zipped = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "actionprior": _WritesMarker(marker)}, zipped)
    with pytest.raises(
        CheckpointError, match=r"evil.ckpt: refused: it would unpickle posix.system.*could run code"
    ):
        load_checkpoint_file(zipped)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps({"state_dict": _WritesMarker(marker)}))
    with pytest.raises(
        CheckpointError, match=r"evil.pkl: not a readable checkpoint \(not a weights-only torch"
    ):
        load_checkpoint_file(plain)
    assert not marker.exists()


def test_fit_refuses_a_damaged_ckpt_path_in_one_line(stage1, tmp_path):
    data, good = stage1
    marker = tmp_path / "MARKER"
    damaged = _damaged(good.read_bytes(), marker)
    for name in ("empty", "random bytes", "truncated to 50%", "pickle payload", "pickle payload in torch zip",
                 "not an actionprior checkpoint"):  # fmt: skip
        path = tmp_path / f"{name.replace(' ', '_')}.ckpt"
        path.write_bytes(damaged[name])
        argv = ["fit", "-c", str(CONFIGS / "stage1.yaml"), "--data.datasets", f"[{{path: {data}}}]", *TINY, *PRIOR,
                "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger.init_args.save_dir",
                str(tmp_path / "run"), "--ckpt_path", str(path)]  # fmt: skip
        with pytest.raises(CheckpointError) as info:
            run(argv)
        assert _one_line_naming(info.value, path).startswith("--ckpt_path: ")
    with pytest.raises(FileNotFoundError, match="--ckpt_path: no checkpoint file at"):
        run([*argv[:-1], str(tmp_path / "missing.ckpt")])
    assert not marker.exists(), "a pickle payload was executed"


def test_stage2_refuses_damaged_or_stage2_stage1_ckpt(stage1, tmp_path):
    data, good = stage1
    marker = tmp_path / "MARKER"
    damaged = _damaged(good.read_bytes(), marker)
    # A Stage 2 checkpoint: what makes one is the payload's `vla` entry (a real one: tests/test_stage2_cli.py).
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["actionprior"]["vla"] = {"config": {}}
    stage2 = tmp_path / "stage2.ckpt"
    torch.save(checkpoint, stage2)
    cases = {"stage2": stage2}
    for name in (
        "empty",
        "random bytes",
        "truncated to 50%",
        "pickle payload",
        "pickle payload in torch zip",
    ):
        cases[name] = tmp_path / f"{name.replace(' ', '_')}.ckpt"
        cases[name].write_bytes(damaged[name])
    for name, path in cases.items():
        argv = ["fit", "-c", str(CONFIGS / "stage2.yaml"), "--data.datasets", f"[{{path: {data}}}]", *TINY,
                "--data.image_size", "32", "--trainer.default_root_dir", str(tmp_path / "s2"),
                "--trainer.logger.init_args.save_dir", str(tmp_path / "s2"), "--stage1_ckpt", str(path)]  # fmt: skip
        with pytest.raises(CheckpointError) as info:
            run(argv)
        message = _one_line_naming(info.value, path)
        assert message.startswith("--stage1_ckpt: "), message
        if name == "stage2":
            assert "is a Stage 2 (VLA) checkpoint, not a Stage 1 (action prior) one" in message
    assert not marker.exists(), "a pickle payload was executed"


def test_a_flipped_bit_in_a_weight_is_refused_not_loaded(stage1, tmp_path):
    _, good = stage1
    blob = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:  # the largest tensor storage (members <archive>/data/<n>)
        storages = [i for i in archive.infolist() if i.filename.rsplit("/", 2)[-2:-1] == ["data"]]
        info = max(storages, key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    blob[start + info.file_size // 2] ^= 0x04  # one bit in the middle of the tensor's bytes
    damaged = tmp_path / "bitflip.ckpt"
    damaged.write_bytes(bytes(blob))
    for reader in (load_checkpoint_file, StoredCheckpoint.read, load_action_prior):
        with pytest.raises(
            CheckpointError, match=rf"damaged checkpoint \(Bad CRC-32 for file '{info.filename}'\)"
        ):
            reader(damaged)
    # the metadata-only mapped read (resume checks) still opens it: Lightning's own load follows
    assert load_checkpoint_file(damaged, mmap=True)["actionprior"]["format_version"] == FORMAT_VERSION
