"""RNG states travel in checkpoints (and come back exactly), and CPU runs use deterministic kernels."""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import numpy as np
import torch

from actionprior.training.rng_state import RNGStateCheckpoint, restore_rng_states


def _draws() -> tuple:
    return torch.rand(5), np.random.rand(5), np.random.randn(), [random.random() for _ in range(5)]


def _equal(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2] and a[3] == b[3]


def test_states_survive_a_weights_only_checkpoint_and_restore_exactly():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's legacy state
    buffer = io.BytesIO()
    torch.save({"callbacks": {"RNGStateCheckpoint": RNGStateCheckpoint().state_dict()}}, buffer)
    expected = _draws()
    buffer.seek(0)
    states = torch.load(buffer, weights_only=True)["callbacks"]["RNGStateCheckpoint"]
    assert not _equal(_draws(), expected)  # the generators moved on
    restore_rng_states(states)
    assert _equal(_draws(), expected)


def test_callback_restores_at_the_first_training_batch_not_before():
    torch.manual_seed(0)
    callback = RNGStateCheckpoint()
    saved = callback.state_dict()
    expected = torch.rand(3)
    callback.load_state_dict(saved)
    torch.rand(100)  # what setup, optimiser construction or loaders might draw after the restore of callbacks
    callback.on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    assert torch.equal(torch.rand(3), expected)
    torch.rand(1)
    callback.on_train_batch_start(None, None, None, 1)  # type: ignore[arg-type]  # once only
    assert not torch.equal(torch.rand(3), expected)


def _cpu_trainer() -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))


def test_cpu_runs_use_deterministic_kernels_and_get_the_setting_back():
    assert not torch.are_deterministic_algorithms_enabled()
    callback = RNGStateCheckpoint()
    callback.setup(_cpu_trainer(), None, "fit")  # type: ignore[arg-type]
    try:
        assert torch.are_deterministic_algorithms_enabled()
        # The kernel that made identical runs drift: the backward of advanced indexing (index_put_ with
        # accumulate, several threads adding in any order). Deterministic mode: one gradient, always.
        threads = torch.get_num_threads()
        torch.set_num_threads(max(2, threads))
        g = torch.Generator().manual_seed(0)
        w = torch.randn(3, 64, 128, generator=g, requires_grad=True)
        idx = torch.randint(0, 3, (256,), generator=g)
        up = torch.randn(256, 64, 128, generator=g)
        grads = set()
        for _ in range(10):
            w.grad = None
            (w[idx] * up).sum().backward()
            grads.add(w.grad.numpy().tobytes())
        torch.set_num_threads(threads)
        assert len(grads) == 1
    finally:
        callback.teardown(_cpu_trainer(), None, "fit")  # type: ignore[arg-type]
    assert not torch.are_deterministic_algorithms_enabled()
    RNGStateCheckpoint(deterministic_cpu=False).setup(_cpu_trainer(), None, "fit")  # type: ignore[arg-type]
    assert not torch.are_deterministic_algorithms_enabled()
