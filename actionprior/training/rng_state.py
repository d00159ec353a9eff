"""Random-number-generator states in checkpoints, so that a resumed run draws the numbers an uninterrupted one
would have (flow-matching noise and times, dropout masks).

Lightning saves model, optimiser, scheduler, loop progress and (for loaders with ``state_dict``) the data
stream's position, but not the global RNGs: after ``seed_everything`` a resumed run would draw from the seed's
beginning again. :class:`RNGStateCheckpoint` records torch CPU (and CUDA, when initialised), numpy's legacy
global and Python ``random`` states in every checkpoint, as tensors and plain ints (``torch.load(...,
weights_only=True)`` reads them), and puts them back right before the first training batch after a resume.

Why that late: Lightning restores callbacks before it sets the strategy up, builds optimisers, creates the
dataloader iterators and calls ``on_fit_start``/``on_train_start``, any of which may draw random numbers
that the uninterrupted run did not draw at that point. The states are captured while the checkpoint is written
(``on_train_batch_end`` of step N) and the uninterrupted run's next draw is in step N + 1's ``training_step``
(validation in between draws from its own seeded generators), so restoring them at the first
``on_train_batch_start`` after the resume reproduces the sequence exactly.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


def capture_rng_states() -> dict[str, Any]:
    """The global RNG states as tensors, ints and tuples of ints (safe for ``weights_only`` loading)."""
    np_state = np.random.get_state(legacy=False)
    version, mt_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back states from :func:`capture_rng_states`; CUDA states only when CUDA is in use here too."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
            "has_gauss": int(n["has_gauss"]),
            "gauss": float(n["gauss"]),
        }
    )
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another machine: the run goes on, but is no longer an exact continuation
            log.warning(
                "the checkpoint holds CUDA RNG states of %d devices but %d are visible: CUDA RNGs not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


class RNGStateCheckpoint(Callback):
    """Stores the global RNG states in checkpoints and restores them at the first batch after a resume; on CPU
    it also turns on PyTorch's deterministic algorithms for the run (``deterministic_cpu``).

    Why the latter: two identical CPU runs (same seed, bit-identical batches) drifted apart (relative L2 of the
    parameters 2e-6 after 40 steps of the default Stage 1 model, growing with training) because the backward
    of advanced indexing (``weight[embodiment_id]`` in ``EmbodimentLinear.gather``: ``index_put_`` with
    ``accumulate=True``) adds into the gradient from several threads in whatever order they finish. In
    deterministic mode PyTorch sorts the indices first; with one thread, or ``index_select`` (whose backward
    is ``index_add_``), the result is the same and stable. On GPUs nothing is changed (deterministic CUDA
    kernels cost speed and need ``CUBLAS_WORKSPACE_CONFIG``): set ``trainer.deterministic`` for that.
    """

    def __init__(self, deterministic_cpu: bool = True) -> None:
        self.deterministic_cpu = deterministic_cpu
        self._pending: dict[str, Any] | None = None
        self._restore_deterministic: bool | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if (
            self.deterministic_cpu
            and trainer.strategy.root_device.type == "cpu"
            and not torch.are_deterministic_algorithms_enabled()
        ):
            # warn_only: an op without a deterministic kernel warns instead of stopping the run.
            torch.use_deterministic_algorithms(True, warn_only=True)
            self._restore_deterministic = False
            log.info("CPU run: deterministic algorithms on (identical runs give identical parameters)")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._restore_deterministic is not None:  # a process running several fits gets its setting back
            torch.use_deterministic_algorithms(self._restore_deterministic)
            self._restore_deterministic = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # A fit that fails (a refused checkpoint, say) skips teardown: give the process its setting back here.
        self.teardown(trainer, pl_module, "fit")

    @property
    def state_key(self) -> str:
        return "RNGStateCheckpoint"

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = {"torch", "numpy", "python"} - set(state_dict)
        if missing:
            raise ValueError(f"RNGStateCheckpoint: the checkpoint's RNG state lacks {sorted(missing)}")
        self._pending = state_dict

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None
