"""Train LeRobot's ACT or Diffusion Policy as LeRobot 0.4.4 ships them, on a dataset written by
``actionprior data export lerobot``. Runs in the peer environment (benchmarks/peers/setup_lerobot.sh):

    benchmarks/peers/.venv-lerobot/bin/python benchmarks/peers/train_lerobot.py \\
        --policy act --dataset /tmp/panda-lerobot --output-dir runs/peers/act-panda --steps 100000

The training is LeRobot's own: ``lerobot.scripts.lerobot_train.train`` (what ``lerobot-train`` runs) with
a ``TrainPipelineConfig`` built here from LeRobot's default configs. Only what this data and this machine
force is changed, and every changed field (compared with a default-constructed config) is printed and
recorded with its reason:

* the dataset is a local folder (``dataset.root``; ``repo_id`` is only a name; nothing is downloaded:
  ``HF_HUB_OFFLINE=1``), and with video cameras, where torchcodec (LeRobot's default decoder) cannot load
  for want of system FFmpeg libraries, as here, ``dataset.video_backend=pyav``;
* ``policy.push_to_hub=false`` (no hub);
* ACT: ``policy.pretrained_backbone_weights=None`` -- its default ImageNet ResNet-18 weights are a torchvision
  download, impossible here, so the backbone starts from scratch (Diffusion Policy's default is already None);
* what the command line asks: steps, batch size, seed, device, save/log frequency, dataloader workers,
  chunk size / action steps (``--chunk-size``, ``--n-action-steps``) and any ``--set FIELD=JSON``.

State/action sizes, camera names and image sizes come from the dataset (LeRobot reads them from
``meta/info.json``); LeRobot 0.4.4's Diffusion Policy does not crop by default (``crop_shape=None``), so
64x64 frames need no change.

Next to LeRobot's checkpoints (``OUTPUT_DIR/checkpoints/<step>/pretrained_model``) this writes
``OUTPUT_DIR/peer_run.json``: the changes, parameter count, versions, the loss and wall-clock seconds of
every step (data loading + LeRobot's ``update_policy``), and the total.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# Before LeRobot is imported: it must never reach for the hub (datasets, weights) or wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

POLICIES = ("act", "diffusion")
RUN_FILE = "peer_run.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", choices=POLICIES, required=True, help="LeRobot policy type")
    p.add_argument("--dataset", type=Path, required=True, help="LeRobot dataset folder (meta/info.json)")
    p.add_argument("--output-dir", type=Path, required=True, help="new folder for checkpoints and logs")
    p.add_argument("--steps", type=int, default=None, help="training steps (LeRobot default: 100000)")
    p.add_argument("--batch-size", type=int, default=None, help="LeRobot default: 8")
    p.add_argument("--seed", type=int, default=None, help="LeRobot default: 1000")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (LeRobot default: the best available)")
    p.add_argument("--num-workers", type=int, default=None, help="dataloader workers (LeRobot default: 4)")
    p.add_argument("--save-freq", type=int, default=None, help="checkpoint every N steps and at the end")
    p.add_argument("--log-freq", type=int, default=None, help="LeRobot default: 200")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="actions predicted per chunk: ACT chunk_size (default 100), Diffusion Policy horizon (default 16)",
    )
    p.add_argument(
        "--n-action-steps",
        type=int,
        default=None,
        help="actions executed per chunk (LeRobot default: ACT 100, Diffusion Policy 8)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="any other policy config field, e.g. --set dim_model=256 (recorded as a change)",
    )
    return p


def _policy_config_class(kind: str) -> type:
    if kind == "act":
        from lerobot.policies.act.configuration_act import ACTConfig

        return ACTConfig
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    return DiffusionConfig


def _has_videos(dataset: Path) -> bool:
    info = json.loads((dataset / "meta" / "info.json").read_text())
    return any(ft.get("dtype") == "video" for ft in info["features"].values())


def _torchcodec_works() -> bool:
    """LeRobot's default video decoder loads (it needs FFmpeg's shared libraries on the system)."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # RuntimeError "Could not load libtorchcodec", ImportError, OSError
        return False
    return True


def _plain(value: Any) -> Any:
    """A config value as JSON can hold it (enums by value, tuples as lists, paths as text)."""
    if hasattr(value, "value") and type(value).__module__.startswith("lerobot"):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _diff(prefix: str, default: Any, ours: Any, skip: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    out = []
    for f in dataclasses.fields(ours):
        if f.name in skip:
            continue
        a, b = _plain(getattr(default, f.name)), _plain(getattr(ours, f.name))
        if a != b:
            out.append((f"{prefix}{f.name}", a, b))
    return out


def build_configs(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    """LeRobot's TrainPipelineConfig with only the forced and asked-for changes, and the list of changes."""
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig

    cls = _policy_config_class(args.policy)
    reasons: dict[str, str] = {
        "policy.push_to_hub": "no hub here: LeRobot's default pushes the trained policy",
        "policy.pretrained_backbone_weights": (
            "ACT's default ImageNet ResNet-18 weights are a torchvision download, impossible here: "
            "the backbone starts from scratch"
        ),
        "dataset.video_backend": (
            "LeRobot's default decoder torchcodec needs system FFmpeg libraries this machine lacks; "
            "PyAV decodes the same files"
        ),
        "device": "--device",
        "steps": "--steps",
        "batch_size": "--batch-size",
        "seed": "--seed",
        "num_workers": "--num-workers",
        "save_freq": "--save-freq",
        "log_freq": "--log-freq",
        "policy.chunk_size": "--chunk-size",
        "policy.horizon": "--chunk-size",
        "policy.n_action_steps": "--n-action-steps",
        "policy.device": "--device",
    }
    policy_kwargs: dict[str, Any] = {"push_to_hub": False}
    if args.policy == "act":
        policy_kwargs["pretrained_backbone_weights"] = None
    if args.device is not None:
        policy_kwargs["device"] = args.device
    if args.chunk_size is not None:
        policy_kwargs["chunk_size" if args.policy == "act" else "horizon"] = args.chunk_size
    if args.n_action_steps is not None:
        policy_kwargs["n_action_steps"] = args.n_action_steps
    field_names = {f.name for f in dataclasses.fields(cls)}
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep or name not in field_names:
            raise SystemExit(
                f"train_lerobot.py: --set {item!r}: expected FIELD=JSON with a field of {cls.__name__}"
            )
        value = json.loads(text)
        policy_kwargs[name] = tuple(value) if isinstance(value, list) else value
        reasons[f"policy.{name}"] = f"--set {item}"
    policy = cls(**policy_kwargs)

    dataset_kwargs: dict[str, Any] = {
        "repo_id": f"local/{args.dataset.resolve().name}",
        "root": str(args.dataset),
    }
    if _has_videos(args.dataset) and not _torchcodec_works():
        dataset_kwargs["video_backend"] = "pyav"
    dataset = DatasetConfig(**dataset_kwargs)

    train_kwargs: dict[str, Any] = {"dataset": dataset, "policy": policy, "output_dir": args.output_dir}
    for name in ("steps", "batch_size", "seed", "num_workers", "save_freq", "log_freq"):
        if getattr(args, name) is not None:
            train_kwargs[name] = getattr(args, name)
    cfg = TrainPipelineConfig(**train_kwargs)

    default_policy = cls()
    default_train = TrainPipelineConfig(dataset=DatasetConfig(repo_id=dataset.repo_id), policy=default_policy)
    diffs = _diff("policy.", default_policy, policy)
    diffs += _diff("dataset.", default_train.dataset, dataset, skip=("repo_id", "root"))
    diffs += _diff("", default_train, cfg, skip=("dataset", "policy", "output_dir"))
    changes = [
        {
            "field": name,
            "lerobot_default": a,
            "used": b,
            "why": reasons.get(name, "asked on the command line"),
        }
        for name, a, b in diffs
    ]
    return cfg, changes


class StepClock:
    """Wraps LeRobot's ``update_policy`` to time every step (from the end of the previous update, so data
    loading and preprocessing count) and keep its loss; LeRobot's training itself is untouched."""

    def __init__(self, update_policy: Any):
        self.update_policy = update_policy
        self.seconds: list[float] = []
        self.losses: list[float] = []
        self.parameters = 0
        self.trainable = 0
        self._last = time.perf_counter()

    def __call__(self, train_metrics: Any, policy: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.parameters:
            self.parameters = sum(p.numel() for p in policy.parameters())
            self.trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        result = self.update_policy(train_metrics, policy, *args, **kwargs)
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now
        self.losses.append(float(result[0].loss.val))
        return result

    def start(self) -> None:
        """The first step is timed from here (the dataloader's first batch included)."""
        self._last = time.perf_counter()


def summary(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    s = np.asarray(seconds)
    if not len(s):
        return {}
    steady = s[1:] if len(s) > 1 else s  # the first step pays the dataloader start
    return {
        "first_step_s": float(s[0]),
        "mean_s_per_step": float(steady.mean()),
        "median_s_per_step": float(np.median(steady)),
        "p90_s_per_step": float(np.quantile(steady, 0.9)),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.dataset / "meta" / "info.json").is_file():
        raise SystemExit(f"train_lerobot.py: {args.dataset}: not a LeRobot dataset (no meta/info.json)")
    import lerobot
    import torch
    from lerobot.scripts import lerobot_train

    cfg, changes = build_configs(args)
    print(f"LeRobot {lerobot.__version__} {args.policy}: changes from LeRobot's defaults:")
    for c in changes:
        print(f"  {c['field']}: {c['lerobot_default']!r} -> {c['used']!r}  ({c['why']})")

    clock = StepClock(lerobot_train.update_policy)
    lerobot_train.update_policy = clock  # train() looks the function up in its module at every step
    # cfg.validate() reads --policy.path from sys.argv; ours are not LeRobot's flags.
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    start = time.perf_counter()
    clock.start()
    try:
        lerobot_train.train(cfg)
    finally:
        sys.argv = saved_argv
        lerobot_train.update_policy = clock.update_policy
    total = time.perf_counter() - start

    record = {
        "policy": args.policy,
        "dataset": str(args.dataset.resolve()),
        "output_dir": str(Path(cfg.output_dir).resolve()),
        "lerobot": lerobot.__version__,
        "torch": torch.__version__,
        "device": cfg.policy.device,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "num_workers": cfg.num_workers,
        "parameters": clock.parameters,
        "trainable_parameters": clock.trainable,
        "changes": changes,
        "policy_config": _plain(cfg.policy),
        "total_wall_s": total,
        "training_wall_s": float(sum(clock.seconds)),
        **summary(clock.seconds),
        "final_loss": clock.losses[-1] if clock.losses else None,
        "step_seconds": [round(s, 5) for s in clock.seconds],
        "step_losses": [round(v, 6) for v in clock.losses],
    }
    path = Path(cfg.output_dir) / RUN_FILE
    path.write_text(json.dumps(record, indent=1))
    print(
        f"{args.policy}: {len(clock.seconds)} steps in {total:.1f} s "
        f"({record.get('mean_s_per_step', float('nan')):.3f} s/step after the first), "
        f"{clock.parameters / 1e6:.1f} M parameters, final loss {record['final_loss']}; {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
