"""A fixed number of batches per epoch from a :class:`~actionprior.data.stream.WindowStream`, on every rank."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from actionprior.data.batch import to_torch
from actionprior.data.stream import WindowStream


def _keep_numpy(batch: dict[str, Any]) -> dict[str, Any]:
    # Workers hand numpy batches back through the pipe (pickled: ~0.1 ms). Letting the DataLoader turn
    # them into tensors first costs one shared-memory file descriptor per tensor: measured 16 ms a batch.
    return batch


def _distributed_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StreamLoader:
    """Exactly ``num_batches`` batches per epoch from a :class:`WindowStream`, on every rank.

    A fixed count per rank (rather than "until the shards run out") is what makes DDP safe with any
    number of shards. By default the endless stream (its workers, pools and caches) persists across
    epochs and an epoch is simply the next ``num_batches`` batches. With ``fixed_epoch`` (validation)
    every ``iter()`` restarts the stream from the same seeds, so every validation run sees the same
    batches and losses are comparable across epochs.

    The training loader is resumable: :meth:`state_dict` (saved by Lightning in every checkpoint) records the
    epoch the stream was seeded with and how many batches were taken from it; :meth:`load_state_dict`
    rebuilds the stream from the same seeds positioned right after those batches (``WindowStream.start_batch``:
    the skipped batches are drawn but not collated), so a resumed run receives exactly the batches an
    uninterrupted run would have.
    """

    def __init__(
        self,
        dataset: WindowStream,
        num_batches: int,
        num_workers: int = 0,
        fixed_epoch: bool = False,
        prefetch_factor: int = 4,
        pin_memory: bool = False,
    ):
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.dataset = dataset
        self.num_batches = num_batches
        self.num_workers = num_workers
        self.fixed_epoch = fixed_epoch
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self._epoch = 0
        self._stream: Iterator[dict[str, Any]] | None = None
        self._stream_epoch = 0  # the epoch the running stream was seeded with
        self._consumed = 0  # batches taken from that stream (by this rank, over all its workers)
        self._resume: tuple[int, int] | None = None  # (stream_epoch, consumed) set by load_state_dict

    def __len__(self) -> int:
        return self.num_batches

    def _start(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        # Set in this process before the DataLoader copies the dataset into its workers.
        self.dataset.rank, self.dataset.world_size = _distributed_rank()
        self.dataset.epoch, self.dataset.start_batch = epoch, start_batch
        self._stream_epoch, self._consumed = epoch, start_batch
        loader = DataLoader(
            self.dataset,
            batch_size=None,  # the stream collates itself
            collate_fn=_keep_numpy,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            pin_memory=self.pin_memory,
            # A DataLoader iterator draws its workers' base seed from torch's global RNG (the stream's own
            # seeds do not depend on it). A validation run, which happens right after a checkpoint is saved,
            # must not shift the numbers training draws next: a resumed run skips that validation.
            generator=torch.Generator().manual_seed(self.dataset.seed) if self.fixed_epoch else None,
        )
        return iter(loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.fixed_epoch:
            self._stream = self._start(0, 0)
        elif self._stream is None:
            # A fresh stream is seeded with the epoch count; after load_state_dict, the stream of the
            # checkpoint, positioned after the batches it had delivered.
            resume = self._resume
            self._stream = self._start(*resume) if resume else self._start(self._epoch, 0)
            self._resume = None
        self._epoch += 1
        stream = self._stream
        for _ in range(self.num_batches):
            batch = next(stream)
            self._consumed += 1
            yield to_torch(batch)
        if self.fixed_epoch:
            self._stream = None  # shuts the workers down until the next validation run

    def state_dict(self) -> dict[str, int]:
        """Where the training stream stands; Lightning stores it in every checkpoint (``loops.fit_loop.
        state_dict.combined_loader``) and hands it to :meth:`load_state_dict` on resume."""
        return {"epoch": self._epoch, "stream_epoch": self._stream_epoch, "consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"epoch", "stream_epoch", "consumed"} - set(state)
        if missing:
            raise ValueError(f"StreamLoader state lacks {sorted(missing)} (has {sorted(state)})")
        self.close()
        # ``epoch`` counts __iter__ calls; it only seeds a stream started afresh (after close()).
        self._epoch = int(state["epoch"])
        self._resume = (int(state["stream_epoch"]), int(state["consumed"]))
        self._stream_epoch, self._consumed = self._resume

    def close(self) -> None:
        """Stop the workers now (they also stop when the loader is garbage collected)."""
        self._stream = None
