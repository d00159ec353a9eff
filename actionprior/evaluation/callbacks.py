"""Training-time open-loop evaluation: action error per embodiment on held-out episodes, in raw units.

The VLAModule's validation step scores windows of the validation *stream*. This callback instead replays
whole held-out episodes through the inference path itself (:class:`~actionprior.inference.policy.Policy`:
raw observation → batch → chunk → un-normalised actions), every ``stride`` steps with the ground-truth
history, and compares each predicted chunk with the recorded actions. A bug in inference-only code (batch
building, history alignment, un-normalisation) shows up here during training instead of on the robot.

Logged (on global rank 0): ``<prefix>/mae/<embodiment>`` in the embodiment's action units, the same for
the mean-action baseline (``baseline_mae``), their ratio ``mae_ratio/<embodiment>`` (< 1 beats the
baseline) and the mean ratio ``<prefix>/mae_ratio``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import lightning as L
import numpy as np
import torch
from torchmetrics import MeanAbsoluteError

from actionprior.data.schema import Episode
from actionprior.inference.base import History
from actionprior.inference.policy import Policy


class OpenLoopActionError(L.Callback):
    """Args:
    max_episodes: held-out episodes replayed per validation run (from ``datamodule.val_episodes``).
    stride: steps between predicted chunks (default: the chunk length, i.e. non-overlapping chunks).
    every_n_validations: run on every n-th validation run (it costs one VLM forward per chunk).
    sample_steps: Euler steps of the decoder (default: the model's).
    seed: sampling-noise seed, so that numbers are comparable between runs.
    prefix: metric name prefix.
    """

    def __init__(
        self,
        max_episodes: int = 8,
        stride: int | None = None,
        every_n_validations: int = 1,
        sample_steps: int | None = None,
        seed: int = 0,
        prefix: str = "val_openloop",
    ):
        if max_episodes < 1 or every_n_validations < 1 or (stride is not None and stride < 1):
            raise ValueError("max_episodes, every_n_validations and stride must be >= 1")
        self.max_episodes = max_episodes
        self.stride = stride
        self.every_n_validations = every_n_validations
        self.sample_steps = sample_steps
        self.seed = seed
        self.prefix = prefix
        self._runs = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._runs += 1
        if (self._runs - 1) % self.every_n_validations or trainer.global_rank != 0:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "val_episodes"):
            raise RuntimeError(
                "OpenLoopActionError needs a datamodule with val_episodes() (ActionPriorDataModule)"
            )
        episodes = dm.val_episodes(with_frames=True, max_episodes=self.max_episodes)
        metrics = self.evaluate(
            pl_module, episodes, getattr(dm, "history_len", 0), getattr(dm, "image_size", None)
        )
        for key, value in metrics.items():
            pl_module.log(f"{self.prefix}/{key}", value, rank_zero_only=True)

    @torch.no_grad()
    def evaluate(
        self,
        pl_module: L.LightningModule,
        episodes: Iterable[Episode],
        history_len: int,
        image_size: int | None = None,
    ) -> dict[str, float]:
        """Replay ``episodes`` through a Policy around ``pl_module.model``; return the metrics."""
        normalizer = pl_module.normalizer
        registry = normalizer.registry
        chunk_len = pl_module.model.chunk_len
        stride = self.stride or chunk_len
        # Created per run and never synchronised: only rank 0 replays episodes.
        model_mae = {n: MeanAbsoluteError(sync_on_compute=False) for n in registry.names}
        base_mae = {n: MeanAbsoluteError(sync_on_compute=False) for n in registry.names}
        policy: Policy | None = None
        fit = getattr(
            pl_module, "image_fit", None
        )  # the DataModule's image contract (None: pad, area filter)
        for ep in episodes:
            size = image_size or _frame_size(ep)
            if policy is None or policy.obs_spec.image_size != size:
                policy = Policy(
                    pl_module.model,
                    normalizer,
                    pl_module.camera_names or [],
                    size,
                    chunk_len=chunk_len,
                    history_len=history_len,
                    sample_steps=self.sample_steps,
                    device=pl_module.device,
                    seed=self.seed,
                    image_fit=fit if fit is not None and fit.size == size else None,
                )
            policy.reset()  # re-seeds the sampling noise: each episode is scored with the same draws
            mean = np.asarray(normalizer.stats[ep.embodiment]["action"]["mean"], np.float32)
            for t in range(0, len(ep), stride):
                history = History(history_len)
                for k in range(max(0, t - history_len), t):
                    history.append(ep.state[k], ep.action[k])
                obs = {
                    "embodiment": ep.embodiment,
                    "state": ep.state[t],
                    # Stored frames as they are: the policy's batch contract fits them, as the stream does.
                    "images": {c: f[t] for c, f in ep.frames.items() if c in policy.obs_spec.camera_names},
                    "instruction": ep.instruction,
                }
                # predict_chunk, not act: a held-out episode may lack a camera its spec lists, which the
                # batch masks exactly as training does, while act() would refuse the observation.
                pred = policy.predict_chunk(obs, history)
                target = ep.action[t : t + chunk_len]
                pred = torch.from_numpy(pred[: len(target)])
                target = torch.from_numpy(target)
                model_mae[ep.embodiment].update(pred, target)
                base_mae[ep.embodiment].update(
                    torch.from_numpy(np.broadcast_to(mean, target.shape).copy()), target
                )
        out: dict[str, float] = {}
        ratios = []
        for name in registry.names:
            if model_mae[name].update_count == 0:
                continue
            m, b = float(model_mae[name].compute()), float(base_mae[name].compute())
            out[f"mae/{name}"], out[f"baseline_mae/{name}"] = m, b
            out[f"mae_ratio/{name}"] = m / max(b, 1e-12)
            ratios.append(out[f"mae_ratio/{name}"])
        if ratios:
            out["mae_ratio"] = float(np.mean(ratios))
        return {k: v for k, v in out.items() if not math.isnan(v)}


def _frame_size(ep: Episode) -> int:
    if not ep.frames:
        raise ValueError(f"episode {ep.key} has no frames: open-loop evaluation needs the observation shards")
    return int(next(iter(ep.frames.values())).shape[1])
