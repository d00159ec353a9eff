"""Checkpoints: what they carry besides weights, how they are read and checked, and models built from them.

Torch only (no Lightning), so that inference never imports the training stack. ``checkpoint["actionprior"]``
(the *payload*) holds the embodiment specs, the normalisation statistics with their fingerprint and the action
prior's configuration; a Stage 2 checkpoint adds a ``vla`` entry (the :class:`~actionprior.models.vla.VLAConfig`,
camera order, image size, history length, where the prior came from, and the backbone *spec*: the text of the
files ``save_pretrained`` writes, so the backbone rebuilds with no hub). A mismatch (other robots, dims,
statistics or architecture) fails loudly, naming it.

A checkpoint file is read once (:func:`read_checkpoint`) into a :class:`StoredCheckpoint`, from which the
settings, the compatibility checks and the models are all taken.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actionprior.data.normalization import Normalizer
from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.adaptation import adaptation_problems

CHECKPOINT_KEY = "actionprior"
FORMAT_VERSION = 2
# Where the LightningModules keep their nn.Module: the state_dict prefix of the model's weights.
MODEL_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used: not a checkpoint, another stage, or incompatible."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the embodiments, normalisation or model configuration it is loaded into."""


def checkpoint_payload(
    config: ActionPriorConfig,
    registry: EmbodimentRegistry,
    normalizer: Normalizer,
    vla: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "embodiments": registry.to_dicts(),
        "embodiment_fingerprint": registry.fingerprint(),
        "normalization": normalizer.to_dict(),
        "normalization_fingerprint": normalizer.fingerprint,
    }
    if vla is not None:
        payload["vla"] = dict(vla)
    return payload


def compatibility_problems(
    stored: Mapping[str, Any],
    registry: EmbodimentRegistry | None = None,
    normalizer: Normalizer | None = None,
    config: ActionPriorConfig | Mapping[str, Any] | None = None,
    config_keys: tuple[str, ...] | None = None,
) -> list[str]:
    """Differences between a stored payload and what the caller has; empty when compatible.

    ``config_keys`` restricts the model-config comparison (e.g. Stage 2 only cares about
    :meth:`ActionPriorConfig.architecture_keys`); by default every key is compared.
    """
    problems: list[str] = []
    stored_registry = EmbodimentRegistry.from_dicts(stored["embodiments"])
    if registry is not None:
        problems += [f"embodiments: {p}" for p in stored_registry.diff(registry)]
        for label, mine, theirs in (
            ("max_state_dim", stored_registry.max_state_dim, registry.max_state_dim),
            ("max_action_dim", stored_registry.max_action_dim, registry.max_action_dim),
        ):
            if mine != theirs:
                problems.append(f"dims: {label} is {mine} in the checkpoint but {theirs} here")
    if normalizer is not None:
        theirs_fp = normalizer.fingerprint
        mine_fp = stored["normalization_fingerprint"]
        if mine_fp != theirs_fp:
            detail = _stats_difference(stored["normalization"], normalizer.to_dict())
            problems.append(
                f"normalisation fingerprint is {mine_fp} in the checkpoint but {theirs_fp} here ({detail}); "
                "the model was trained on differently normalised data"
            )
    if config is not None:
        mine_cfg = dict(stored["model_config"])
        theirs_cfg = config.to_dict() if isinstance(config, ActionPriorConfig) else dict(config)
        for key in config_keys or sorted(set(mine_cfg) | set(theirs_cfg)):
            if mine_cfg.get(key) != theirs_cfg.get(key):
                problems.append(
                    f"model config: {key} is {mine_cfg.get(key)!r} in the checkpoint but {theirs_cfg.get(key)!r} here"
                )
    return problems


def _stats_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    if a.get("mode") != b.get("mode"):
        return f"mode {a.get('mode')} vs {b.get('mode')}"
    sa, sb = a.get("stats", {}), b.get("stats", {})
    if set(sa) != set(sb):
        return f"embodiments {sorted(sa)} vs {sorted(sb)}"
    changed = [name for name in sorted(sa) if sa[name] != sb[name]]
    return f"statistics differ for {changed}"


def check_compatible(stored: Mapping[str, Any], source: str, **kwargs: Any) -> None:
    """Raise :class:`CheckpointMismatchError` listing every difference (see :func:`compatibility_problems`)."""
    problems = compatibility_problems(stored, **kwargs)
    if problems:
        listing = "; ".join(problems)
        raise CheckpointMismatchError(f"{source} is incompatible with this configuration: {listing}")


def check_adaptable(
    stored: StoredCheckpoint,
    source: str,
    registry: EmbodimentRegistry,
    config: ActionPriorConfig,
    normalizer: Normalizer | None = None,
    allow_dropped: bool = True,
) -> None:
    """Raise :class:`CheckpointMismatchError` unless the checkpoint's prior can move onto ``registry``.

    Unlike :func:`check_compatible`, other embodiments are allowed (matched by name, see
    :mod:`actionprior.models.adaptation`); same-name embodiments must be the same robot with the same
    statistics, and the architecture must match. ``allow_dropped=False`` also refuses checkpoint
    embodiments that ``registry`` lacks.
    """
    problems = adaptation_problems(
        stored.registry,
        registry,
        stored.prior_config,
        config,
        stored.normalizer.to_dict() if normalizer is not None else None,
        normalizer.to_dict() if normalizer is not None else None,
        allow_dropped=allow_dropped,
    )
    if problems:
        raise CheckpointMismatchError(
            f"{source} is incompatible with this configuration: {'; '.join(problems)}"
        )


def read_payload(checkpoint: Mapping[str, Any], source: str) -> dict[str, Any]:
    payload = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"{source} has no '{CHECKPOINT_KEY}' entry: it is not an actionprior checkpoint "
            f"(top-level keys: {sorted(map(str, checkpoint))[:10]})"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version}, this code reads {FORMAT_VERSION}"
        )
    return dict(payload)


def load_checkpoint_file(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """The checkpoint dict of a file, or one line saying why it is not one (no unpickling of code).

    A file that is read (not mapped) has every member's CRC-32 checked first: torch's reader does not, so a
    flipped bit in a weight would otherwise load silently and change every action.
    ``mmap=True`` maps the tensors instead of reading them: for checks that need only the metadata of a
    checkpoint that Lightning itself reads afterwards (a resumed run), so a 2B-parameter file is not read twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a readable checkpoint (the file is empty)")
    if zipfile.is_zipfile(path):
        if not mmap:
            verify_zip_checksums(path)
    else:
        _refuse_non_zip(path, mmap)
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: {_weights_only_refusal(str(exc))}") from None
    except EOFError:
        raise CheckpointError(f"{path}: not a readable checkpoint (the file ends early: truncated)") from None
    except (RuntimeError, OSError, zipfile.BadZipFile, ValueError) as exc:
        # The first sentence: torch's zip errors go on for lines about how the file might have got corrupted.
        reason = (
            str(exc).strip().splitlines()[0].split(". ")[0][:200] if str(exc).strip() else type(exc).__name__
        )
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def _refuse_non_zip(path: Path, mmap: bool) -> None:
    """Say what a file that is not a zip archive (what ``torch.save`` writes) is, rather than torch's advice
    about mmap and re-saving: random bytes are not a checkpoint to re-save. A bare pickle (a legacy torch
    file) goes on to the weights-only reader unless it was to be mapped."""
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:  # pickles (protocol 2+) start with PROTO n
        raise CheckpointError(
            f"{path}: not a readable checkpoint (neither the zip archive torch.save writes nor a pickle: "
            "random bytes or another kind of file)"
        )
    if mmap:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (a bare pickle, not the zip archive torch.save writes: a "
            "legacy torch file or not a checkpoint at all)"
        )


MAX_ZIP_MEMBERS = 1_000_000  # a torch file holds one member per tensor storage, plus a few
_CRC_CHUNK = 16 << 20


def verify_zip_checksums(path: Path) -> None:
    """Read every member of a torch zip file once, checking its CRC-32 (one line naming the damaged member)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise CheckpointError(f"{path}: not a checkpoint ({len(members)} zip members)")
            for info in members:
                with archive.open(info) as stream:  # raises BadZipFile at the end of a member with a bad CRC
                    while stream.read(_CRC_CHUNK):
                        pass
    except zipfile.BadZipFile as exc:
        raise CheckpointError(
            f"{path}: damaged checkpoint ({str(exc)[:200]}); the file was changed after it was written"
        ) from None
    except (OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def _weights_only_refusal(message: str) -> str:
    """What torch's weights-only unpickler refused, in one line. Torch's own message is many lines and advises
    ``weights_only=False``, which is exactly what must not be done with a file of unknown origin."""
    blocked = re.search(r"GLOBAL ([\w.]+)", message)
    if blocked:
        return (
            f"refused: it would unpickle {blocked.group(1)}, not a tensor or plain container "
            "(loading it could run code; only weights-only checkpoints are read)"
        )
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    detail = found.group(1).strip() if found else "not a pickle torch reads"
    return f"not a readable checkpoint (not a weights-only torch file: {detail[:200]})"


@dataclass
class StoredCheckpoint:
    """One checkpoint read from disk: its payload decoded, its weights, and the models it describes."""

    source: str
    checkpoint: dict[str, Any]
    payload: dict[str, Any]
    registry: EmbodimentRegistry
    normalizer: Normalizer
    prior_config: ActionPriorConfig

    @property
    def stage(self) -> int:
        return 2 if "vla" in self.payload else 1

    @property
    def vla_settings(self) -> dict[str, Any]:
        if self.stage != 2:
            raise CheckpointError(
                f"{self.source} is a Stage 1 (action prior) checkpoint, not a Stage 2 VLA checkpoint"
            )
        return dict(self.payload["vla"])

    @classmethod
    def from_dict(cls, checkpoint: dict[str, Any], source: str) -> StoredCheckpoint:
        payload = read_payload(checkpoint, source)
        try:
            registry = EmbodimentRegistry.from_dicts(payload["embodiments"])
            normalizer = Normalizer.from_dict(payload["normalization"], registry)
            config = ActionPriorConfig.from_dict(payload["model_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: its actionprior entry is malformed ({exc})") from None
        return cls(source, checkpoint, payload, registry, normalizer, config)

    @classmethod
    def read(cls, path: str | Path, map_location: str | torch.device = "cpu") -> StoredCheckpoint:
        return cls.from_dict(load_checkpoint_file(path, map_location), str(path))

    def expect_stage(self, stage: int, what: str) -> StoredCheckpoint:
        if self.stage != stage:
            kinds = {1: "a Stage 1 (action prior)", 2: "a Stage 2 (VLA)"}
            raise CheckpointError(
                f"{what}: {self.source} is {kinds[self.stage]} checkpoint, not {kinds[stage]} one"
            )
        return self

    def model_state(self, prefix: str = MODEL_PREFIX) -> dict[str, torch.Tensor]:
        state = self.checkpoint.get("state_dict") or {}
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            raise CheckpointError(f"{self.source}: no weights under the prefix '{prefix}' in its state_dict")
        return weights

    def build_prior(self) -> ActionPrior:
        """The trained :class:`ActionPrior` (eval mode): of a Stage 1 checkpoint, or the prior inside a VLA."""
        model = ActionPrior(self.prior_config)
        weights = self.model_state()
        if self.stage == 2:
            weights = {k[len("prior.") :]: v for k, v in weights.items() if k.startswith("prior.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"{self.source}: weights do not match the stored model config "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.eval()

    def build_vla(self, attn_implementation: str = "auto") -> Any:
        """The trained VLA (eval mode); needs no data and no network."""
        from actionprior.models.backbones import VLMBackbone
        from actionprior.models.vla import VLA, VLAConfig

        settings = self.vla_settings
        config = VLAConfig.from_dict(settings["config"])
        backbone = VLMBackbone.from_spec(settings["backbone_spec"], attn_implementation)
        vla = VLA.from_config(backbone, ActionPrior(self.prior_config), config)
        try:
            vla.load_state_dict(self.model_state())
        except RuntimeError as exc:
            raise CheckpointMismatchError(
                f"{self.source}: weights do not match the stored VLA config ({str(exc).splitlines()[0]})"
            ) from None
        return vla.eval()


def load_action_prior(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[ActionPrior, EmbodimentRegistry, Normalizer, ActionPriorConfig]:
    """Rebuild the trained :class:`ActionPrior` (eval mode), its registry, normaliser and config from a file."""
    stored = StoredCheckpoint.read(path, map_location)
    return stored.build_prior(), stored.registry, stored.normalizer, stored.prior_config


def data_contract(
    embodiments: list[dict] | None, normalization: dict | None, owner: str
) -> tuple[EmbodimentRegistry, Normalizer]:
    """Registry and normaliser from a LightningModule's ``embodiments``/``normalization`` init args."""
    if embodiments is None or normalization is None:
        raise ValueError(
            f"{owner} needs `embodiments` and `normalization` (the CLI links them from the DataModule; "
            "in Python pass registry.to_dicts() and normalizer.to_dict())"
        )
    registry = EmbodimentRegistry.from_dicts(embodiments)
    return registry, Normalizer.from_dict(normalization, registry)
