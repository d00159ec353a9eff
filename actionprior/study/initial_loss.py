"""Stage 2's ``L_pred`` at step 0 under several initialisations, on the same batches and the same noise.

The paper reports an ~8x lower initial prediction loss with the prior; here the sign is the opposite. This
measures why, with the baseline built both ways:

* ``no prior, adaLN-zero decoder``: our scratch baseline; its zero-initialised modulations make the untrained
  decoder's velocity close to zero, so ``L_pred ~ E||a - eps||^2``.
* ``no prior, decoder without zero init``: the same decoder with its zero-initialised layers given PyTorch's
  default Linear initialisation (a baseline head "whose initial predictions are far from zero").
* ``prior, fresh z' head``: the Stage 1 decoder conditioned on the z' of an untrained head.
* ``prior, z' head at mean latent``: the same with ``latent_head_init=stage1_mean``.
* ``prior, z' = z (oracle)``: the decoder conditioned on the encoder's latent of the true window, the floor
  ``L_align`` pulls towards.

The batches are Stage 2's own: the same datasets with the same mixture weights (transitions, ``plan.mixture``),
batch size and stream settings as the study's Stage 2 runs, one stream per training seed (``--seeds``; each seed
also draws the fresh parts of the model), so the table estimates what the early-training probe records at step 0.
The mean latent of ``stage1_mean`` is estimated on the first ``--batches`` batches of a seed's stream (as a
Stage 2 run does) and every variant is scored on the next ``--batches``, never on the batches it was fitted on.

    python -m actionprior.study.initial_loss --stage1-ckpt S1.ckpt --data DIR [DIR ...] --seeds 0 1 --out out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actionprior.checkpoint import StoredCheckpoint
from actionprior.data.datamodule import ActionPriorDataModule, DatasetSource
from actionprior.models.vla import VLAConfig
from actionprior.resources import default_config_arg
from actionprior.study.plan import INITIAL_LOSS_VARIANTS as VARIANTS
from actionprior.study.plan import mixture
from actionprior.training.configs import settings_dict
from actionprior.training.lightning_cli import read_stage_config
from actionprior.training.transfer import ActionPriorTransfer, mean_stage1_latent
from actionprior.training.vla_module import VLAModule


def _stage2_settings() -> tuple[dict[str, Any], dict[str, Any]]:
    """stage2.yaml's VLA and data settings, as the CLI parses them."""
    config = read_stage_config(default_config_arg("stage2.yaml"))
    return config["model"]["init_args"]["vla"], config["data"]


def _batches(dm: ActionPriorDataModule, skip: int, count: int) -> list[dict[str, Any]]:
    """Batches ``skip .. skip + count - 1`` of the training stream, as tensors."""
    out = []
    for i, batch in enumerate(dm.make_stream("train")):
        if i >= skip + count:
            break
        if i >= skip:
            out.append({k: torch.as_tensor(v) if not isinstance(v, list) else v for k, v in batch.items()})
    return out


def _module(
    dm: ActionPriorDataModule, vla: dict[str, Any], prior: dict[str, Any], scratch: bool, seed: int
) -> VLAModule:
    # Every variant's fresh parts (backbone, queries, head) start from the seed's draw.
    torch.manual_seed(seed)
    config = VLAConfig(**{**vla, "action_prior": "scratch" if scratch else "stage1"})
    return VLAModule(vla=config, prior=prior, chunk_len=dm.chunk_len, embodiments=dm.embodiments,
                     normalization=dm.normalization)  # fmt: skip


@torch.no_grad()
def _pred_loss(module: VLAModule, batches: list[dict[str, Any]], oracle: bool = False) -> float:
    module.eval()
    losses = []
    for i, batch in enumerate(batches):
        torch.manual_seed(1000 + i)  # the same flow times and noise for every variant
        vla = module.model
        z = vla.target_latent(batch) if oracle else vla.predict_latent(batch)
        mask, dims = batch["step_mask"].bool(), batch["action_dim_mask"].bool()
        losses.append(float(vla.head.loss(z, batch["action"], mask, dims, batch["embodiment_id"])))
    return statistics.fmean(losses)


def _undo_zero_init(module: nn.Module) -> int:
    """Give every all-zero Linear (the adaLN-zero modulations) PyTorch's default initialisation."""
    count = 0
    for m in module.modules():
        if isinstance(m, nn.Linear) and not m.weight.any():
            m.reset_parameters()
            count += 1
    return count


def stage2_datamodule(data: list[str], seed: int) -> ActionPriorDataModule:
    """The DataModule of a study's Stage 2 run with training seed ``seed``: its datasets with the study's mixture
    weights and stage2.yaml's data settings (the loader's workers aside)."""
    _, data_cfg = _stage2_settings()
    sources = [DatasetSource(str(path), float(weight)) for path, weight in mixture([Path(d) for d in data])]
    return ActionPriorDataModule(
        sources, view="observation", chunk_len=data_cfg["chunk_len"], history_len=data_cfg["history_len"],
        batch_size=data_cfg["batch_size"], num_workers=0, val_fraction=data_cfg["val_fraction"],
        normalization=data_cfg["normalization"], windows_per_episode=data_cfg["windows_per_episode"],
        shuffle_buffer=data_cfg["shuffle_buffer"], image_size=data_cfg["image_size"], seed=seed,
    )  # fmt: skip


def _one_seed(stage1_ckpt: str, data: list[str], seed: int, batches: int) -> dict[str, float]:
    vla, _ = _stage2_settings()
    dm = stage2_datamodule(data, seed)
    stored = StoredCheckpoint.read(stage1_ckpt)
    prior = settings_dict(stored.prior_config)
    scored = _batches(dm, batches, batches)  # the mean latent below reads batches 0 .. batches-1
    out: dict[str, float] = {}

    scratch = _module(dm, vla, prior, scratch=True, seed=seed)
    out["no prior, adaLN-zero decoder"] = _pred_loss(scratch, scored)
    _undo_zero_init(scratch.model.head.decoder)
    out["no prior, decoder without zero init"] = _pred_loss(scratch, scored)

    with_prior = _module(dm, vla, prior, scratch=False, seed=seed)
    ActionPriorTransfer.load_into(with_prior, stored)
    out["prior, fresh z' head"] = _pred_loss(with_prior, scored)
    out["prior, z' = z (oracle)"] = _pred_loss(with_prior, scored, oracle=True)
    with_prior.model.start_latent_head_at(mean_stage1_latent(with_prior, dm, batches))
    out["prior, z' head at mean latent"] = _pred_loss(with_prior, scored)
    return out


def measure(stage1_ckpt: str, data: list[str], seeds: list[int], batches: int = 8) -> dict[str, Any]:
    """Every variant's step-0 L_pred, the mean over ``seeds`` (and each seed's under ``per_seed``)."""
    per_seed = [_one_seed(stage1_ckpt, data, seed, batches) for seed in seeds]
    _, data_cfg = _stage2_settings()
    out: dict[str, Any] = {
        "batches": batches,
        "batch_size": data_cfg["batch_size"],
        "seeds": list(seeds),
        "mixture": {str(p): w for p, w in mixture([Path(d) for d in data])},
        "stage1_ckpt": stage1_ckpt,
    }
    for name in VARIANTS:
        out[name] = statistics.fmean(r[name] for r in per_seed)
    out["per_seed"] = {name: [r[name] for r in per_seed] for name in VARIANTS}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m actionprior.study.initial_loss", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--stage1-ckpt", required=True)
    p.add_argument("--data", nargs="+", required=True, help="the Stage 2 datasets")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="Stage 2 training seeds (streams and inits)"
    )
    p.add_argument("--batches", type=int, default=8, help="batches for the mean latent, and as many scored")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = measure(args.stage1_ckpt, args.data, args.seeds, args.batches)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for k, v in result.items():
        print(f"{k:40s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
