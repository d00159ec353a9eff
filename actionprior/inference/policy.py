"""A trained VLA as a robot controller: raw observations in, unnormalised actions out.

:class:`Policy` wraps the VLA with the same :class:`~actionprior.data.normalization.Normalizer` that
training used (it travels inside the checkpoint), builds the model's batch (docs/contracts.md) from one
raw observation plus the history ring buffer, samples an action chunk, un-normalises it and executes it as
its execution mode says (:class:`~actionprior.inference.base.BasePolicy`); in ``rtc`` mode the chunk is
inpainted to continue the previous one (the action head's ``sample_rtc``). The action head is reached only
through the VLA and the protocol of :mod:`actionprior.models.action_head`.

Camera frames come at their native size: the batch contract fits them with the image contract the checkpoint
records (size, pad or crop, interpolation; :mod:`actionprior.data.images`); a frame of another aspect ratio
than training's is fitted too, with one warning line per camera and frame size.

Sampling noise comes from a generator re-seeded on every ``reset()``, so an episode is reproducible and
a server connection produces exactly the actions of an in-process policy with the same seed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actionprior.checkpoint import StoredCheckpoint
from actionprior.data.batch import BatchBuilder, to_torch
from actionprior.data.images import ImageFit
from actionprior.data.normalization import Normalizer
from actionprior.data.reader import load_stats
from actionprior.data.schema import STATS_FILE
from actionprior.data.stats import stats_fingerprint
from actionprior.embodiments import EmbodimentError
from actionprior.inference.base import BasePolicy, History
from actionprior.inference.execution import ChunkGuide, ExecutionConfig, check_coverage, default_replan_every
from actionprior.inference.export import read_exported
from actionprior.inference.observation import ObservationSpec
from actionprior.models.rtc import RTCGuide

log = logging.getLogger(__name__)


class PolicyCheckpointError(ValueError):
    """A checkpoint cannot be turned into a policy (wrong kind, foreign statistics, missing fields)."""


class Policy(BasePolicy):
    def __init__(
        self,
        model: torch.nn.Module,
        normalizer: Normalizer,
        camera_names: tuple[str, ...] | list[str],
        image_size: int,
        chunk_len: int,
        history_len: int = 0,
        replan_every: int | None = None,
        sample_steps: int | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        compile_decoder: bool = False,
        execution: ExecutionConfig | None = None,
        image_fit: ImageFit | None = None,
    ):
        """``model`` has ``sample_actions(batch, steps, generator=...)`` -> ``[B, H, A_max]`` (normalised), and
        for ``rtc`` execution ``can_guide`` true and the ``guide=`` keyword (:class:`~actionprior.models.rtc.RTCGuide`).

        ``compile_decoder`` compiles the action head's sampling loop (``torch.compile``; CUDA graphs on a GPU):
        opt-in, since the first chunk then pays the compile time (tens of seconds). ``image_fit``: how frames are
        fitted to ``image_size`` (default: pad, area filter, trained on square frames)."""
        self.supports_guidance = bool(getattr(model, "can_guide", False))
        if (execution or ExecutionConfig()).mode == "rtc" and not self.supports_guidance:
            head = type(getattr(model, "head", model)).__name__
            raise ValueError(
                f"the action head {head} has no guided sampling (sample_rtc), which rtc execution needs; "
                "use --execution replan or ensemble"
            )
        self.model = model.to(device).eval()
        if compile_decoder:
            self.model.compile_sampler()
        self.normalizer = normalizer
        self.registry = normalizer.registry
        self.chunk_len = chunk_len
        self.sample_steps = sample_steps
        self.device = torch.device(device)
        self.seed = seed
        execution = execution or ExecutionConfig()
        replan_every = replan_every or default_replan_every(execution.mode, chunk_len)
        check_coverage(chunk_len, replan_every, execution.delay_steps)
        self.image_fit = image_fit or ImageFit(image_size)
        if self.image_fit.size != image_size:
            raise ValueError(f"image_fit.size {self.image_fit.size} differs from image_size {image_size}")
        self._aspect_noted: set[tuple[str, int, int]] = set()
        spec = ObservationSpec(self.registry, tuple(camera_names), image_size)
        self.batches = BatchBuilder(
            self.registry, normalizer, chunk_len, history_len, camera_names, self.image_fit
        )
        super().__init__(spec, replan_every=replan_every, history_len=history_len, execution=execution)

    @classmethod
    def load(cls, source: str | Path, **kwargs: Any) -> Policy:
        """A policy from a Stage 2 checkpoint file, an exported folder, or a hub id of an exported policy."""
        path = Path(source)
        if path.is_file():
            return cls.from_checkpoint(path, **kwargs)
        return cls.from_pretrained(source, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Any) -> Policy:
        """The policy of a Stage 2 checkpoint file; ``options`` as for :meth:`from_stored`."""
        return cls.from_stored(StoredCheckpoint.read(path).expect_stage(2, "a policy"), **options)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **options: Any) -> Policy:
        """A policy from a folder written by ``actionprior export`` (or a hub repository holding one);
        ``options`` as for :meth:`from_stored`."""
        return cls.from_stored(read_exported(name_or_path), **options)

    @classmethod
    def from_stored(
        cls,
        stored: StoredCheckpoint,
        *,
        device: str | torch.device = "cpu",
        replan_every: int | None = None,
        sample_steps: int | None = None,
        expected_stats: str | Path | None = None,
        image_size: int | None = None,
        history_len: int | None = None,
        seed: int = 0,
        compile_decoder: bool = False,
        execution: ExecutionConfig | None = None,
    ) -> Policy:
        """Rebuild the VLA with its embodiments, normaliser and camera order.

        ``expected_stats`` (a fingerprint or a ``stats.json``) makes the policy refuse a checkpoint trained
        on other statistics. ``image_size``/``history_len`` override or supply what the checkpoint lacks; frames
        are fitted as the checkpoint's image contract says (``vla.image``; pad with the area filter when it
        has none).
        """
        source = stored.source
        try:
            vla = stored.build_vla()
        except (KeyError, ValueError, RuntimeError) as exc:
            raise PolicyCheckpointError(f"{source}: cannot rebuild the VLA: {exc}") from exc
        settings = stored.vla_settings
        check_stats_fingerprint(stored.normalizer, expected_stats, source)
        data_hp = stored.checkpoint.get("datamodule_hyper_parameters") or {}
        image_size = image_size or settings.get("image_size") or data_hp.get("image_size")
        if not image_size:
            raise PolicyCheckpointError(
                f"{source} does not record the training image size; pass image_size= (--image-size)"
            )
        if history_len is None:
            history_len = settings.get("history_len", data_hp.get("history_len"))
        if history_len is None:
            if vla.use_history:
                raise PolicyCheckpointError(
                    f"{source} uses history but does not record history_len; pass history_len="
                )
            history_len = 0
        recorded = settings.get("image")
        try:
            fit = (
                ImageFit.from_dict(recorded, f"{source}: vla.image")
                if recorded
                else ImageFit(int(image_size))
            )
        except ValueError as exc:  # a DataError: the checkpoint is untrusted input
            raise PolicyCheckpointError(str(exc)) from None
        if fit.size != int(image_size):
            fit = ImageFit(int(image_size), fit.resize, fit.interpolation, fit.source_sizes)
        camera_names = settings.get("camera_names")
        if not camera_names:
            raise PolicyCheckpointError(
                f"{source}: the checkpoint records no camera_names (vla.camera_names)"
            )
        return cls(
            vla,
            stored.normalizer,
            camera_names,
            int(image_size),
            chunk_len=vla.chunk_len,
            history_len=int(history_len) if vla.use_history else 0,
            replan_every=replan_every,
            sample_steps=sample_steps,
            device=device,
            seed=seed,
            compile_decoder=compile_decoder,
            execution=execution,
            image_fit=fit,
        )

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        super().reset()
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

    # ------------------------------------------------------------------ model input
    def build_batch(self, observation: dict[str, Any], history: History) -> dict[str, Any]:
        """The model batch (B=1) for a validated raw observation: the training contract's
        (:class:`~actionprior.data.batch.BatchBuilder`), normalised and padded like training."""
        states, actions = history.recent()
        for cam, frame in observation["images"].items():
            h, w = np.shape(frame)[:2]
            if (cam, h, w) not in self._aspect_noted:
                self._aspect_noted.add((cam, h, w))
                note = self.image_fit.aspect_note(cam, h, w)
                if note:
                    log.warning(note)
        batch = self.batches.observation(
            observation["embodiment"],
            observation["state"],
            {cam: np.asarray(frame) for cam, frame in observation["images"].items()},
            observation["instruction"],
            states,
            actions,
        )
        return {
            k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in to_torch(batch).items()
        }

    def predict_chunk(
        self, observation: dict[str, Any], history: History, guide: ChunkGuide | None = None
    ) -> np.ndarray:
        batch = self.build_batch(observation, history)
        emb = observation["embodiment"]
        dim = self.registry[emb].action_dim
        kwargs: dict[str, Any] = {}
        if guide is not None:
            kwargs["guide"] = self._rtc_guide(emb, guide)
        chunk = self.model.sample_actions(batch, steps=self.sample_steps, generator=self._generator, **kwargs)
        normalised = chunk[0, :, :dim].float().cpu().numpy()
        return self.normalizer.unnormalize(emb, "action", normalised)

    def _rtc_guide(self, embodiment: str, guide: ChunkGuide) -> RTCGuide:
        """The decoder's guide (normalised, padded to the registry's widest action) for a raw-unit one."""
        previous = self.normalizer.normalize(embodiment, "action", guide.previous)[: self.chunk_len]
        target = torch.zeros(1, self.chunk_len, self.registry.max_action_dim)
        target[0, : len(previous), : previous.shape[1]] = torch.from_numpy(previous)
        return RTCGuide(
            target=target.to(self.device),
            frozen=torch.tensor([min(guide.frozen, len(previous))], device=self.device),
            overlap=torch.tensor([len(previous)], device=self.device),
            max_guidance=self.execution.rtc_max_guidance,
            mask=self.execution.rtc_mask,  # type: ignore[arg-type]
            vjp=self.execution.rtc_vjp,
        )

    def _action_affine(self, embodiment: str) -> dict[str, list[float]]:
        center, scale = self.normalizer.affine(embodiment, "action")
        return {"center": center.tolist(), "scale": scale.tolist()}

    def normalize_action(self, embodiment: str, actions: np.ndarray) -> np.ndarray:
        return self.normalizer.normalize(embodiment, "action", actions)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "chunk_len": self.chunk_len,
            "sample_steps": self.sample_steps,
            "normalization_fingerprint": self.normalizer.fingerprint,
            # lets a client report smoothness in the policy's normalised units, as an in-process policy does
            "action_normalization": {name: self._action_affine(name) for name in self.registry.names},
            "device": str(self.device),
        }


def check_stats_fingerprint(normalizer: Normalizer, expected: str | Path | None, source: str) -> None:
    """Refuse a checkpoint whose statistics differ from ``expected``.

    ``expected`` is a dataset's ``stats.json``, the dataset folder itself, or a fingerprint: the checkpoint's
    normalisation fingerprint (statistics and mode, ``normalization_fingerprint`` in ``describe()``) or the
    ``fingerprint`` field of the stats.json it was trained on (statistics only; equal when the model was
    trained on that one dataset's statistics). A file is read like training reads it
    (:func:`~actionprior.data.reader.load_stats`: bounded, validated) and normalised with the checkpoint's
    mode and registry, so the exact statistics a model was trained with are accepted.
    """
    if expected is None:
        return
    path = Path(expected)
    if path.is_dir() or path.suffix == ".json":
        folder = path if path.is_dir() else path.parent
        if not path.is_dir() and path.name != STATS_FILE:
            raise PolicyCheckpointError(f"{path}: expected a dataset's {STATS_FILE} (or its folder)")
        try:
            want = Normalizer(load_stats(folder), normalizer.registry, normalizer.mode).fingerprint
        except (EmbodimentError, KeyError, TypeError) as exc:
            raise PolicyCheckpointError(f"{path}: cannot compare with {source}: {exc}") from exc
        if want != normalizer.fingerprint:
            raise PolicyCheckpointError(
                f"{source} was trained with normalisation fingerprint {normalizer.fingerprint}, but the "
                f"statistics in {path} give {want}: its actions would be un-normalised with the wrong statistics"
            )
        return
    want = str(expected)
    statistics = stats_fingerprint(normalizer.stats)  # what stats.json's `fingerprint` field holds
    if want not in (normalizer.fingerprint, statistics):
        raise PolicyCheckpointError(
            f"{source}: the expected fingerprint {want} is neither its normalisation fingerprint "
            f"{normalizer.fingerprint} (statistics and mode) nor the fingerprint {statistics} that the "
            "stats.json of its statistics records; if it came from a dataset's stats.json, the model was "
            "trained on other statistics (several datasets, or another dataset): pass that stats.json path "
            "to compare the statistics themselves"
        )
