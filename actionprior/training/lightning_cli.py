"""The LightningCLI behind ``actionprior fit|validate|test|predict``.

* The model is chosen by ``model.class_path`` (Stage 1 ``actionprior.training.ActionPriorModule`` or the
  Stage 2 VLA module); the DataModule is always :class:`~actionprior.data.datamodule.ActionPriorDataModule`.
* The DataModule's embodiment specs and normalisation statistics are linked into the model's
  ``embodiments``/``normalization`` init args when the classes are instantiated, and ``data.chunk_len`` into
  ``model.init_args.chunk_len`` at parse time, so each lives in exactly one place in the YAML.
* Checkpoints go to ``<trainer.default_root_dir>/checkpoints`` with ``save_last=True``: a fixed directory is
  what lets ``--ckpt_path last`` find the run to resume (a logger-versioned directory changes every run).
* ``--stage1_ckpt PATH`` is read once: the Stage 2 module's ``prior`` settings are taken from it when the
  config leaves them unset (so they are written once, in the Stage 1 config), and the same read checkpoint is
  handed to every trainer callback with a ``stage1_ckpt`` attribute (Stage 2's ActionPriorTransfer); it fails
  if there is none. Resuming without it takes the settings from the checkpoint being resumed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` always holds the final step of a run.

    Lightning only refreshes ``last.ckpt`` when a periodic save fires, so a run whose ``max_steps`` is not
    a multiple of ``every_n_train_steps`` would resume from an older step and silently redo work.

    Kill-safe too (see :mod:`actionprior.training.checkpoint_files`): saves are written atomically next to
    their target, the ``.partial`` files of a save that was interrupted are removed when a run starts, and
    on resuming from ``last.ckpt`` the periodic checkpoints of steps after it (written just before the kill,
    before ``last.ckpt`` was updated; tracked by no one, they would never be cleaned up and would push the
    rerun's saves to ``-v1`` names) are removed.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        from actionprior.training.checkpoint_files import AtomicCheckpointIO, remove_partial_files

        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a plugin of the user's is kept
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero and stage == "fit" and self.dirpath:
            remove_partial_files(self.dirpath)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from actionprior.training.checkpoint_files import newer_checkpoints

        super().on_train_start(trainer, pl_module)
        resumed = trainer.ckpt_path
        if not (resumed and trainer.is_global_zero and self.dirpath):
            return
        newer = newer_checkpoints(self.dirpath, trainer.global_step, keep=[resumed])
        if Path(resumed).name.startswith(self.CHECKPOINT_NAME_LAST):
            for path, step in newer:  # written after last.ckpt's step by the run that was killed
                path.unlink()
                log.warning(
                    "removed %s (step %d): newer than the checkpoint resumed from (step %d)",
                    path,
                    step,
                    trainer.global_step,
                )
        elif newer:
            log.warning(
                "resuming from %s (step %d) although %s hold later steps; they are kept",
                resumed,
                trainer.global_step,
                [str(p) for p, _ in newer],
            )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


log = logging.getLogger(__name__)


def checkpoint_dir(default_root_dir: str | None) -> str:
    return str(Path(default_root_dir or ".") / "checkpoints")


class ActionPriorCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--stage1_ckpt",
            type=str | None,
            default=None,
            help="Stage 1 checkpoint for the trainer callbacks that accept one (Stage 2's ActionPriorTransfer)",
        )
        parser.add_argument(
            "--init_from",
            type=str | None,
            default=None,
            help="Stage 1: start from this trained prior; robots new to it get fresh projections, the ones it "
            "knows keep its weights and normalisation statistics",
        )
        parser.add_argument(
            "--init_policy",
            type=str | None,
            default=None,
            help="Stage 2: start from this policy (an exported folder or a Stage 2 checkpoint): its weights, "
            "robots and their statistics; robots new to it get fresh projections and the data's statistics",
        )
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "step{step:07d}"})
        parser.set_defaults({"checkpoint.auto_insert_metric_name": False})
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.link_arguments("data.chunk_len", "model.init_args.chunk_len")
        parser.link_arguments("data.embodiments", "model.init_args.embodiments", apply_on="instantiate")
        parser.link_arguments("data.normalization", "model.init_args.normalization", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would overwrite the configured model with the hyperparameters stored in the checkpoint,
        # silently (a Stage 2 config resumed from a Stage 1 checkpoint trained a Stage 1 model). Here the config
        # stays what the user wrote and the module's on_load_checkpoint refuses any difference, naming it.
        return

    def before_instantiate_classes(self) -> None:
        # A CUDA-only strategy on CPU gets one clear message here instead of jsonargparse's union diagnostics.
        from actionprior.training.strategies import check_strategy_request

        config = self.config[self.subcommand] if self.subcommand else self.config
        check_strategy_request(config.trainer.get("strategy"), config.trainer.get("accelerator"))
        # A bad --ckpt_path gets one line naming it, instead of torch's multi-line unpickling report.
        from actionprior.training.checkpoint_files import check_resume_checkpoint

        check_resume_checkpoint(
            config.get("ckpt_path"), checkpoint_dir(config.trainer.get("default_root_dir"))
        )
        self._stage1 = None
        self._policy = init_policy_settings(config)
        if _is_stage2(config.model.class_path):
            resume = config.get("ckpt_path")
            if resume == "last":
                resume = str(Path(checkpoint_dir(config.trainer.get("default_root_dir"))) / "last.ckpt")
            self._stage1 = fill_prior_settings(config.model.init_args, config.get("stage1_ckpt"), resume)
        self._init_from = init_from_settings(config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # A Rich progress bar by default, unless the config turns progress bars off (Lightning refuses a
        # progress-bar callback together with enable_progress_bar=false) or brings its own.
        trainer_config = self._get(self.config_init, "trainer", default={})
        own = any(isinstance(cb, ProgressBar) for cb in trainer_config.get("callbacks") or [])
        wanted = trainer_config.get("enable_progress_bar") is not False and not own
        self.trainer_defaults["callbacks"] = [RichProgressBar()] if wanted else []
        # Every run keeps its RNG states in its checkpoints: resuming continues the random sequence exactly.
        from actionprior.training.rng_state import RNGStateCheckpoint

        if not any(isinstance(cb, RNGStateCheckpoint) for cb in trainer_config.get("callbacks") or []):
            self.trainer_defaults["callbacks"].append(RNGStateCheckpoint())
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config[self.subcommand] if self.subcommand else self.config
        path = config.get("stage1_ckpt")
        if path:
            self._hand_over_stage1_checkpoint(path)
        if getattr(self, "_init_from", None):
            self.model.adapt_from(self._init_from)
        if getattr(self, "_policy", None) is not None:
            self.model.init_from_policy(self._policy)
            self._policy = None  # its weights are in the module now

    def _hand_over_stage1_checkpoint(self, path: str) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--stage1_ckpt: no checkpoint file at '{path}'")
        takers = [cb for cb in self.trainer.callbacks if hasattr(cb, "stage1_ckpt")]
        if not takers:
            names = [type(cb).__name__ for cb in self.trainer.callbacks]
            raise ValueError(
                f"--stage1_ckpt was given but no trainer callback takes it (callbacks: {names}); add the "
                "Stage 2 transfer callback to trainer.callbacks in the config"
            )
        for callback in takers:
            callback.stage1_ckpt = path
            callback.stage1 = getattr(self, "_stage1", None)


def _is_stage2(class_path: str) -> bool:
    from actionprior.training.vla_module import VLAModule

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, VLAModule)


def init_from_settings(config: Any) -> str | None:
    """``--init_from PATH`` (Stage 1 only): the DataModule keeps the checkpoint's statistics for the robots it
    knows (``data.stats_from``); returns the path whose weights the module starts from. A resumed adapted run
    without ``--init_from`` takes the statistics from the checkpoint being resumed (they are what it used)."""
    path = config.get("init_from")
    if _is_stage2(config.model.class_path):
        if path:
            raise ValueError(
                "--init_from is for Stage 1 (adapting a prior to new robots); Stage 2 takes the prior with "
                "--stage1_ckpt, which may know fewer robots than the Stage 2 data"
            )
        return None
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--init_from: no checkpoint file at '{path}'")
        config.data.stats_from = path
        return path
    resume = config.get("ckpt_path")
    if resume == "last":
        resume = str(Path(checkpoint_dir(config.trainer.get("default_root_dir"))) / "last.ckpt")
    if resume and not config.data.get("stats_from") and Path(resume).is_file():
        from actionprior.checkpoint_file import load_checkpoint_file, read_payload

        if read_payload(load_checkpoint_file(resume), resume).get("prior_source"):
            config.data.stats_from = resume
    return None


def init_policy_settings(config: Any) -> Any:
    """``--init_policy PATH`` (Stage 2 only): read the policy once, let the DataModule keep its statistics for the
    robots it knows (``data.stats_from``) and take the action prior's settings from it when the config leaves
    them unset. Returns the :class:`~actionprior.checkpoint.StoredCheckpoint` (None without the flag). A resumed
    run without the flag takes the statistics from the checkpoint being resumed (they are what it used)."""
    from actionprior.checkpoint import CheckpointError, read_policy
    from actionprior.checkpoint_file import read_any_payload
    from actionprior.training.configs import settings_dict

    path = config.get("init_policy")
    if not _is_stage2(config.model.class_path):
        if path:
            raise ValueError(
                "--init_policy is for Stage 2 (a VLA policy); Stage 1 starts from a prior with --init_from"
            )
        return None
    if not path:
        resume = config.get("ckpt_path")
        if resume == "last":
            resume = str(Path(checkpoint_dir(config.trainer.get("default_root_dir"))) / "last.ckpt")
        if (
            resume
            and not config.data.get("stats_from")
            and Path(resume).is_file()
            and read_any_payload(resume).get("vla", {}).get("init_policy")
        ):
            config.data.stats_from = resume
        return None
    if config.get("stage1_ckpt"):
        raise ValueError(
            "--init_policy and --stage1_ckpt were both given: the policy already holds its action prior; "
            "drop --stage1_ckpt"
        )
    try:
        stored = read_policy(path)
    except (CheckpointError, FileNotFoundError) as exc:
        raise CheckpointError(f"--init_policy: {exc}") from None
    config.data.stats_from = path
    init_args = config.model.init_args
    vla = init_args.get("vla")
    head = vla.get("head") if hasattr(vla, "get") else getattr(vla, "head", None)
    if init_args.get("prior") is None and (head or "action_prior") == "action_prior":
        init_args["prior"] = settings_dict(stored.prior_config)
        log.info("Stage 2: action prior settings from the policy %s", path)
    return stored


def fill_prior_settings(init_args: Any, stage1_ckpt: str | None, resume_ckpt: str | None = None) -> Any:
    """Give the Stage 2 module the action prior's settings when its config leaves ``prior`` unset: from the
    Stage 1 checkpoint, or when resuming without one, from the Stage 2 checkpoint being resumed. Returns the
    Stage 1 :class:`~actionprior.checkpoint.StoredCheckpoint` read (None without ``stage1_ckpt``)."""
    from actionprior.checkpoint_file import load_checkpoint_file
    from actionprior.training.checkpoint_files import read_stage1_checkpoint
    from actionprior.training.configs import settings_dict

    stage1 = None
    if stage1_ckpt:
        if not Path(stage1_ckpt).is_file():
            raise FileNotFoundError(f"--stage1_ckpt: no checkpoint file at '{stage1_ckpt}'")
        stage1 = read_stage1_checkpoint(stage1_ckpt)
    vla = init_args.get("vla")
    head = vla.get("head") if hasattr(vla, "get") else getattr(vla, "head", None)
    if init_args.get("prior") is not None or (head or "action_prior") != "action_prior":
        # Set in the config (the transfer callback checks it against the checkpoint), or another action head.
        return stage1
    if stage1 is not None:
        source, stored = stage1_ckpt, settings_dict(stage1.prior_config)
    elif resume_ckpt and Path(resume_ckpt).is_file():
        source, stored = (
            resume_ckpt,
            load_checkpoint_file(resume_ckpt, mmap=True).get("hyper_parameters", {}).get("prior"),
        )
        if stored is None:
            raise ValueError(f"Stage 2: {resume_ckpt} does not record the action prior's settings")
    else:
        return None  # VLAModule refuses unset settings and says how to provide them
    init_args["prior"] = dict(stored)
    log.info("Stage 2: action prior %s from %s", ", ".join(f"{k}={v}" for k, v in stored.items()), source)
    return stage1


def show_info_logs() -> None:
    """Print the ``actionprior`` loggers' INFO lines (what was loaded from where, which robots start fresh),
    like Lightning's own; without a handler Python would show warnings only."""
    logger = logging.getLogger("actionprior")
    if not any(getattr(h, "_actionprior_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._actionprior_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


class _ConfigReader(ActionPriorCLI):
    """The CLI up to parsing: the same parser, defaults, links and checks, but nothing is seeded, read or built."""

    def _set_seed(self) -> None:  # parsing a config must not reseed the caller's global RNGs
        return

    def before_instantiate_classes(self) -> None:
        return

    def instantiate_classes(self) -> None:
        return


def read_stage_config(*configs: str | Path, args: Sequence[str] = ()) -> dict[str, Any]:
    """A stage's settings as ``actionprior fit -c CONFIG ... ARGS`` would parse them (the CLI's own parser: its
    defaults, ``data.chunk_len`` linked into the model, unknown keys refused), as plain dicts, with nothing
    instantiated: no dataset is read, no model built. For code that needs a stage config (benchmarks, the study).
    ``configs`` may be paths or ``actionprior:<name>`` (a shipped config)."""
    from actionprior.data.datamodule import ActionPriorDataModule
    from actionprior.resources import resolve_config_arg

    argv = [f"--config={resolve_config_arg(str(c))}" for c in configs] + list(args)
    reader = _ConfigReader(
        model_class=LightningModule,
        subclass_mode_model=True,
        datamodule_class=ActionPriorDataModule,
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},
        args=argv,
        run=False,
    )
    return reader.config.as_dict()


def run(argv: list[str] | None = None) -> None:
    """Run a LightningCLI subcommand, e.g. ``run(["fit", "-c", "configs/stage1.yaml"])``."""
    show_info_logs()
    # Imported here so that `actionprior --help` and the tool subcommands stay fast.
    from actionprior.data.datamodule import ActionPriorDataModule

    trainer_defaults: dict[str, Any] = {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "tensorboard"},
        },
    }
    ActionPriorCLI(
        model_class=LightningModule,
        subclass_mode_model=True,
        datamodule_class=ActionPriorDataModule,
        trainer_defaults=trainer_defaults,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        # LightningCLI warns when given args equal to the process's own command line; pass None then.
        args=None if argv == sys.argv[1:] else argv,
    )
