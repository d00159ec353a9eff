"""A small LRU of tensors that depend only on a batch's token layout."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch


class LayoutCache:
    """A small LRU of tensors that depend only on a batch's layout (token ids, padding, image grids).

    Such tensors are the same at every step of an episode, and for every batch with the same
    instructions and cameras in training, so they are computed once. They are computed outside inference
    mode: a tensor remembered during a policy's inference-mode call must stay usable in a later training
    step (inference tensors cannot be saved for backward).
    """

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    @staticmethod
    def key(*tensors: torch.Tensor) -> tuple:
        return tuple((tuple(t.shape), t.cpu().numpy().tobytes()) for t in tensors)

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        with torch.inference_mode(False):
            value = compute()
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
