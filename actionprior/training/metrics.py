"""Per-embodiment action error in un-normalised units, against a mean-action baseline (torchmetrics).

Units differ between robots (metres, radians, gripper commands), so errors are kept per embodiment and
only compared to a trivial baseline of the same embodiment: predicting its mean action (from the dataset
statistics) at every step. ``ratio < 1`` means the model beats that baseline.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError


class EmbodimentActionError(nn.Module):
    """Accumulates masked absolute errors of a model and of the mean-action baseline per embodiment."""

    def __init__(self, embodiment_names: Sequence[str]):
        super().__init__()
        self.names = list(embodiment_names)
        self.model_mae = nn.ModuleList(MeanAbsoluteError() for _ in self.names)
        self.baseline_mae = nn.ModuleList(MeanAbsoluteError() for _ in self.names)

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        baseline: Tensor,
        embodiment_id: Tensor,
        step_mask: Tensor,
        dim_mask: Tensor,
    ) -> None:
        """``pred``/``target``/``baseline`` ``[B, H, A]`` raw units; only real steps and dims count."""
        mask = step_mask.bool()[:, :, None] & dim_mask.bool()[:, None, :]
        for e in torch.unique(embodiment_id).tolist():
            sel = (embodiment_id == e)[:, None, None] & mask
            if sel.any():
                self.model_mae[e].update(pred[sel], target[sel])
                self.baseline_mae[e].update(baseline[sel], target[sel])

    def compute(self) -> dict[str, float]:
        """``mae/<name>``, ``baseline_mae/<name>``, ``mae_ratio/<name>`` and the mean ratio ``mae_ratio``.

        Embodiments without any validation sample in this epoch (on any rank) are left out rather than
        reported as 0. Every metric is computed on every rank, because under DDP ``compute`` synchronises.
        """
        out: dict[str, float] = {}
        ratios = []
        for name, model, base in zip(self.names, self.model_mae, self.baseline_mae, strict=True):
            with warnings.catch_warnings():  # "compute before update" on a rank that saw no such sample
                warnings.simplefilter("ignore", UserWarning)
                m, b = float(model.compute()), float(base.compute())
            if math.isnan(m):  # 0 / 0: no sample of this embodiment anywhere
                continue
            ratio = m / max(b, 1e-12)
            out[f"mae/{name}"], out[f"baseline_mae/{name}"], out[f"mae_ratio/{name}"] = m, b, ratio
            ratios.append(ratio)
        if ratios:
            out["mae_ratio"] = sum(ratios) / len(ratios)
        return out

    def reset(self) -> None:
        for metric in (*self.model_mae, *self.baseline_mae):
            metric.reset()
