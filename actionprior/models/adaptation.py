"""Moving a trained action prior onto another embodiment registry (a robot it has never seen).

Embodiments are matched by *name* between the source (a checkpoint's prior and registry) and the target
(a model built for this run's data). Per-embodiment parameters, i.e. everything inside an
:class:`~actionprior.models.embodiment_io.EmbodimentIO` (projections in and out, embodiment embedding), are
re-indexed from the source registry's order to the target's; the shared trunk (transformer blocks, time and
step embeddings, heads) loads exactly.

* A target embodiment the source does not know keeps the target module's own initialisation, i.e. exactly
  what a from-scratch model gets: ``nn.Linear``'s default uniform(+-1/sqrt(fan_in)) with fan-in = its real
  input size for its projections, N(0, 0.02) for its embedding row.
* A source embodiment absent from the target is dropped (:func:`adaptation_problems` refuses that when
  ``allow_dropped`` is False, as Stage 2 does).
* ``io_mode: padded`` has one shared projection over the zero-padded vector: dim ``i`` of every robot uses
  slot ``i`` (positional, not by state/action name). When the target's max dims are larger (a new robot with
  more dims), the shared layers grow: the source's rows/columns are copied into the first slots and the new
  slots keep the target's fresh init, so every known robot computes exactly what it did before.

The same-name embodiments must have identical I/O signatures and normalisation statistics, and the prior's
architecture must match (:data:`ADAPTATION_KEYS`); :func:`adaptation_problems` lists every difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.embodiment_io import EmbodimentIO, EmbodimentLinear

# The settings that fix the shared weights' shapes and meaning; the embodiment dims may differ.
ADAPTATION_KEYS = ("width", "depth", "heads", "latent_dim", "io_mode", "use_state")


@dataclass
class AdaptationReport:
    """What :func:`transfer_prior_weights` did, by embodiment name and tensor."""

    kept: list[str] = field(default_factory=list)  # in both: projections and embedding copied
    added: list[str] = field(default_factory=list)  # only in the target: fresh (from-scratch) init
    dropped: list[str] = field(default_factory=list)  # only in the source: not carried over
    resized: list[str] = field(default_factory=list)  # padded-mode tensors whose shared slots grew
    shared_tensors: int = 0  # trunk tensors loaded exactly

    def summary(self) -> str:
        parts = [f"{self.shared_tensors} shared tensors loaded", f"embodiments kept {self.kept}"]
        if self.added:
            parts.append(f"new embodiments {self.added} start from a fresh projection (default init)")
        if self.dropped:
            parts.append(f"embodiments {self.dropped} are not in this run and were dropped")
        if self.resized:
            parts.append(f"padded layers {self.resized} grew; the old slots were kept, new ones fresh")
        return "; ".join(parts)


def _config_value(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def adaptation_problems(
    source_registry: EmbodimentRegistry,
    target_registry: EmbodimentRegistry,
    source_config: Any,
    target_config: Any,
    source_normalization: Mapping[str, Any] | None = None,
    target_normalization: Mapping[str, Any] | None = None,
    allow_dropped: bool = True,
) -> list[str]:
    """Every reason the source prior (a checkpoint's) cannot be moved onto the target; empty when it can.

    ``*_config``: :class:`~actionprior.models.action_prior.ActionPriorConfig` or its dict; ``*_normalization``:
    ``Normalizer.to_dict()`` (``mode`` and per-embodiment ``stats``), compared for same-name embodiments only.
    """
    problems: list[str] = []
    for key in ADAPTATION_KEYS:
        mine, theirs = _config_value(source_config, key), _config_value(target_config, key)
        if mine != theirs:
            problems.append(f"model config: {key} is {mine!r} in the checkpoint but {theirs!r} here")
    dropped = [n for n in source_registry.names if n not in target_registry]
    if dropped and not allow_dropped:
        problems.append(
            f"embodiments: {dropped} are in the checkpoint but not in this run's data "
            f"(which has {target_registry.names}); the checkpoint's embodiments must be a subset of the data's"
        )
    common = [n for n in source_registry.names if n in target_registry]
    for name in common:
        a, b = source_registry[name].io_signature(), target_registry[name].io_signature()
        for key in a:
            if a[key] != b.get(key):
                problems.append(
                    f"embodiment '{name}': {key} is {a[key]} in the checkpoint but {b.get(key)} here "
                    "(same name, different robot: rename one of them)"
                )
    if source_normalization is not None and target_normalization is not None:
        problems += _stats_problems(source_normalization, target_normalization, common)
    return problems


def _stats_problems(source: Mapping[str, Any], target: Mapping[str, Any], names: list[str]) -> list[str]:
    if source.get("mode") != target.get("mode"):
        return [
            f"normalisation: mode is '{source.get('mode')}' in the checkpoint but '{target.get('mode')}' here "
            "(set data.normalization to the checkpoint's)"
        ]
    problems = []
    for name in names:
        a, b = source["stats"][name], target["stats"][name]
        for kind in sorted(set(a) | set(b)):
            sa, sb = a.get(kind, {}), b.get(kind, {})
            if not isinstance(sa, Mapping) or not isinstance(sb, Mapping):
                if sa != sb:
                    problems.append(f"embodiment '{name}': normalisation entry '{kind}' differs")
                continue
            differing = [
                k
                for k in sorted(set(sa) | set(sb))
                if k not in sa or k not in sb or not np.array_equal(np.asarray(sa[k]), np.asarray(sb[k]))
            ]
            if differing:
                problems.append(
                    f"embodiment '{name}': {kind} statistics {differing} differ between the checkpoint and "
                    "this run's data (the prior was trained on differently normalised data; for Stage 1 "
                    "--init_from keeps the checkpoint's statistics)"
                )
    return problems


def transfer_prior_weights(
    source: nn.Module,
    source_registry: EmbodimentRegistry,
    target: nn.Module,
    target_registry: EmbodimentRegistry,
) -> AdaptationReport:
    """Copy ``source``'s weights into ``target`` in place, re-indexing per-embodiment parameters by name.

    ``source`` and ``target`` are modules of the same class and architecture (e.g. two
    :class:`~actionprior.models.action_prior.ActionPrior`), built for ``source_registry`` and
    ``target_registry``. Copies go into the existing tensors (``copy_``), so an optimizer already holding
    the target's parameters keeps working. Check compatibility first with :func:`adaptation_problems`.
    """
    report = AdaptationReport(
        kept=[n for n in target_registry.names if n in source_registry],
        added=[n for n in target_registry.names if n not in source_registry],
        dropped=[n for n in source_registry.names if n not in target_registry],
    )
    pairs = [(source_registry.id_of(n), target_registry.id_of(n)) for n in report.kept]
    source_io = {name: m for name, m in source.named_modules() if isinstance(m, EmbodimentIO)}
    target_io = {name: m for name, m in target.named_modules() if isinstance(m, EmbodimentIO)}
    if set(source_io) != set(target_io):
        raise ValueError(
            f"transfer_prior_weights: the models differ in their embodiment I/O modules "
            f"({sorted(source_io)} vs {sorted(target_io)}); same architecture needed"
        )
    io_prefixes = tuple(f"{name}." if name else "" for name in target_io)
    source_state = source.state_dict()
    target_state = target.state_dict(keep_vars=True)
    shared = [k for k in target_state if not any(k.startswith(p) for p in io_prefixes)]
    missing = [k for k in shared if k not in source_state]
    extra = [
        k for k in source_state if not any(k.startswith(p) for p in io_prefixes) and k not in target_state
    ]
    if missing or extra:
        raise ValueError(
            f"transfer_prior_weights: shared weights differ (only in the target: {missing[:5]}, "
            f"only in the source: {extra[:5]}); same architecture needed"
        )
    with torch.no_grad():
        for key in shared:
            mine, theirs = target_state[key], source_state[key]
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"transfer_prior_weights: '{key}' is {tuple(theirs.shape)} in the source but "
                    f"{tuple(mine.shape)} in the target; same architecture needed"
                )
            mine.copy_(theirs)
        report.shared_tensors = len(shared)
        for name, io in target_io.items():
            src = source_io[name]
            io.embedding.weight[[t for _, t in pairs]] = src.embedding.weight[[s for s, _ in pairs]]
            for layer in ("state_in", "action_in", "action_out"):
                mine_layer, their_layer = getattr(io, layer), getattr(src, layer)
                if (mine_layer is None) != (their_layer is None):
                    raise ValueError(f"transfer_prior_weights: '{name}.{layer}' exists in only one model")
                if mine_layer is not None and _copy_linear(their_layer, mine_layer, pairs):
                    report.resized.append(f"{name}.{layer}" if name else layer)
    return report


def copy_embodiment_linear(
    source: EmbodimentLinear,
    source_registry: EmbodimentRegistry,
    target: EmbodimentLinear,
    target_registry: EmbodimentRegistry,
) -> None:
    """Copy one per-embodiment layer (e.g. the VLA's state token projection) by embodiment name, in place; robots
    new to ``source`` keep ``target``'s init."""
    pairs = [
        (source_registry.id_of(n), target_registry.id_of(n))
        for n in target_registry.names
        if n in source_registry
    ]
    with torch.no_grad():
        _copy_linear(source, target, pairs)


def _copy_linear(source: EmbodimentLinear, target: EmbodimentLinear, pairs: list[tuple[int, int]]) -> bool:
    """Copy one layer; True when a shared (padded) layer was resized."""
    if source.shared != target.shared:
        raise ValueError("transfer_prior_weights: io_mode differs (shared vs per-embodiment projections)")
    if target.shared:
        # One weight for all robots over positional slots: keep the old slots, new slots stay fresh.
        n_in = min(source.in_features, target.in_features)
        n_out = min(source.out_features, target.out_features)
        target.weight[:, :n_in, :n_out] = source.weight[:, :n_in, :n_out]
        target.bias[:, :n_out] = source.bias[:, :n_out]
        return tuple(source.weight.shape) != tuple(target.weight.shape)
    for s, t in pairs:
        n_in, n_out = _real_dims(target, t)
        if (n_in, n_out) != _real_dims(source, s):
            raise ValueError(
                f"transfer_prior_weights: embodiment dims differ ({_real_dims(source, s)} vs {(n_in, n_out)})"
            )
        target.weight[t].zero_()  # padded rows/columns stay exactly zero (the masks rely on it)
        target.weight[t, :n_in, :n_out] = source.weight[s, :n_in, :n_out]
        target.bias[t].zero_()
        target.bias[t, :n_out] = source.bias[s, :n_out]
    return False


def _real_dims(layer: EmbodimentLinear, index: int) -> tuple[int, int]:
    return int(layer.in_mask[index].sum()), int(layer.out_mask[index].sum())


__all__ = [
    "ADAPTATION_KEYS",
    "AdaptationReport",
    "adaptation_problems",
    "copy_embodiment_linear",
    "transfer_prior_weights",
]
