"""Checkpoint files that survive a kill: atomic writes next to the target, and cleanup when a run starts.

Lightning's default writer (``TorchCheckpointIO`` -> ``_atomic_save`` -> fsspec ``LocalFileOpener``) writes
to ``tempfile.mkstemp()`` in ``$TMPDIR`` and then ``shutil.move``\\ s it to the checkpoint path. A SIGKILL
during the write leaves a ``$TMPDIR/tmpXXXXXXXX`` file the size of a checkpoint, that nothing ever removes,
and where ``$TMPDIR`` is another filesystem the "move" is a copy, so a kill during it leaves a truncated
checkpoint under the final name. :class:`AtomicCheckpointIO` instead writes ``.<name>.partial-<pid>`` in
the checkpoint's own directory, fsyncs it and renames it over the target (``os.replace``: atomic on one
filesystem). A kill leaves at most that ``.partial`` file, which :func:`remove_partial_files` deletes at the
next start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

if TYPE_CHECKING:
    from actionprior.checkpoint import StoredCheckpoint

log = logging.getLogger(__name__)

PARTIAL_MARKER = ".partial-"


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_MARKER}{os.getpid()}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and leave no file outside the checkpoint directory."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(target)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def remove_partial_files(dirpath: str | Path) -> list[tuple[Path, int]]:
    """Delete the ``.partial`` files an interrupted :class:`AtomicCheckpointIO` save left in ``dirpath``;
    returns (path, size in bytes) of each, and logs them."""
    directory = Path(dirpath)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.glob(f".*{PARTIAL_MARKER}*")):
        if path.is_file():
            size = path.stat().st_size
            path.unlink()
            removed.append((path, size))
            log.warning(
                "removed %s (%.1f MB): left by a checkpoint save that was interrupted", path, size / 1e6
            )
    return removed


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` a checkpoint file records, or None when it cannot be read (memory-mapped:
    the weights are not read)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file is simply "no step"
        return None
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return step if isinstance(step, int) else None


def newer_checkpoints(dirpath: str | Path, step: int, keep: Iterable[str | Path]) -> list[tuple[Path, int]]:
    """Checkpoints in ``dirpath`` (other than ``keep``) recording a step after ``step``, with their steps."""
    keep_resolved = {Path(p).resolve() for p in keep}
    found = []
    for path in sorted(Path(dirpath).glob("*.ckpt")):
        if path.resolve() in keep_resolved or not path.is_file():
            continue
        saved = checkpoint_step(path)
        if saved is not None and saved > step:
            found.append((path, saved))
    return found


# ``--ckpt_path`` values Lightning resolves itself (``last`` is resolved here: the CLI's checkpoint directory).
_SPECIAL_CKPT_PATHS = ("best", "hpc", "registry")


def check_resume_checkpoint(ckpt_path: str | None, dirpath: str | Path) -> None:
    """Refuse, in one line naming the file, a ``--ckpt_path`` that is missing, unreadable, holds anything but
    tensors and plain containers, or is not an actionprior checkpoint; ``last`` without a ``last.ckpt`` is
    left to Lightning (it starts afresh, warning)."""
    from actionprior.checkpoint import CheckpointError, load_checkpoint_file, read_payload

    if not ckpt_path or ckpt_path in _SPECIAL_CKPT_PATHS or ckpt_path.startswith("registry:"):
        return
    if ckpt_path == "last":
        path = Path(dirpath) / "last.ckpt"
        if not path.is_file():
            return
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path: no checkpoint file at '{path}'")
    try:
        read_payload(load_checkpoint_file(path, mmap=True), str(path))
    except CheckpointError as exc:
        raise CheckpointError(f"--ckpt_path: {exc}") from None


def read_stage1_checkpoint(path: str | Path) -> StoredCheckpoint:
    """``--stage1_ckpt``: the Stage 1 checkpoint at ``path``, or one line, starting with the flag, saying why not."""
    from actionprior.checkpoint import CheckpointError, StoredCheckpoint

    try:
        stored = StoredCheckpoint.read(path)
    except CheckpointError as exc:
        raise CheckpointError(f"--stage1_ckpt: {exc}") from None
    return stored.expect_stage(1, "--stage1_ckpt")
