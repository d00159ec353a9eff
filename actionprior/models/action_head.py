"""The seam between the VLA and its action head: what a head must do, what it may do, where heads are found.

The VLA (:mod:`actionprior.models.vla`) turns an observation into a conditioning vector ``cond [B, cond_dim]``
(``z'``, the output of its latent head) and hands it to its *action head*, which turns it into an action chunk.
Training, checkpoints and :class:`~actionprior.inference.policy.Policy` reach the head only through this
protocol, so a new head is one file: a config dataclass (its YAML settings) and an ``nn.Module``, registered
under a name with :func:`register_head`. The paper's head is the Stage 1 prior
(:class:`~actionprior.models.action_prior.ActionPrior`, registered as ``action_prior``).

Required (:class:`ActionHead`), all in normalised units on tensors padded to the registry's widths:

* ``config``: the bound config (:class:`HeadConfig`);  ``cond_dim``: the width of ``cond``;
* ``loss(cond, action, step_mask, action_dim_mask, embodiment_id, generator=None)``: a scalar, over real steps
  and dims only;
* ``sample(cond, embodiment_id, steps=None, generator=None, step_mask=None)``: a chunk
  ``[B, chunk_len, max_action_dim]``, zero on padded dims.

Optional capabilities, each found by its method (:func:`has_latent`, :func:`can_guide`, :func:`can_compile`):

* ``encode(state, action, step_mask, embodiment_id) -> [B, cond_dim]``: a latent of an action window. It is
  what the auxiliary terms (``L_align``, ``L_recon``), the history token and a Stage 1 prior need;
* ``sample_rtc(cond, embodiment_id, guide, steps=None, generator=None, step_mask=None)``: a chunk inpainted to
  continue the previous one (:mod:`actionprior.models.rtc`), for ``rtc`` execution;
* ``compile_sampler()`` / ``eager_sampler()``: a compiled sampling loop (``Policy(compile_decoder=True)``).

A head that lacks a capability is refused, in one line, by whatever needs it.

Heads are looked up by name, never by a class path read from a file (a checkpoint is untrusted input and must
not choose code to import): a checkpoint records the name, and reading it needs the module that registers the
head imported (the built-in heads are imported with :mod:`actionprior.models`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

from actionprior.embodiments import EmbodimentRegistry


@runtime_checkable
class HeadConfig(Protocol):
    """A head's settings (one YAML key per field) plus what :meth:`bind` fills in from the data."""

    chunk_len: int
    max_action_dim: int

    def bind(self, registry: EmbodimentRegistry, chunk_len: int | None = None) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any: ...

    @classmethod
    def settings(cls) -> tuple[str, ...]: ...

    @classmethod
    def architecture_keys(cls) -> tuple[str, ...]: ...


@runtime_checkable
class ActionHead(Protocol):
    """What the VLA, training and inference need from an action head (see the module docstring)."""

    config: Any

    @property
    def cond_dim(self) -> int: ...

    def loss(
        self,
        cond: Tensor,
        action: Tensor,
        step_mask: Tensor,
        action_dim_mask: Tensor,
        embodiment_id: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...

    def sample(
        self,
        cond: Tensor,
        embodiment_id: Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        step_mask: Tensor | None = None,
    ) -> Tensor: ...


def has_latent(head: Any) -> bool:
    """The head can encode an action window into its conditioning space (``encode``)."""
    return callable(getattr(head, "encode", None))


def can_guide(head: Any) -> bool:
    """The head can sample a chunk guided to continue the previous one (``sample_rtc``, for ``rtc``)."""
    return callable(getattr(head, "sample_rtc", None))


def can_compile(head: Any) -> bool:
    """The head has a compilable sampling loop (``compile_sampler``)."""
    return callable(getattr(head, "compile_sampler", None))


# ----------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class HeadType:
    """A registered head: its name (in configs and checkpoints), config class and module class."""

    name: str
    config_class: type
    head_class: type[nn.Module]

    def config_from(self, data: Mapping[str, Any] | Any) -> Any:
        """The config object of ``data`` (a mapping, e.g. from YAML or a checkpoint, or already one)."""
        if isinstance(data, self.config_class):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(
                f"action head '{self.name}': settings must be a mapping or a {self.config_class.__name__}, "
                f"got {type(data).__name__}"
            )
        return self.config_class.from_dict(dict(data))

    def build(self, config: Any) -> nn.Module:
        """The head for a bound config."""
        return self.head_class(config)


_HEADS: dict[str, HeadType] = {}
H = TypeVar("H", bound=type)


def register_head(name: str, config_class: type) -> Callable[[H], H]:
    """Class decorator: make ``name`` (a ``vla.head`` value, recorded in checkpoints) build this head class."""
    if not name.isidentifier():
        raise ValueError(f"action head name must be an identifier, got '{name}'")

    def decorate(head_class: H) -> H:
        known = _HEADS.get(name)
        if known is not None and known.head_class.__qualname__ != head_class.__qualname__:
            raise ValueError(f"action head '{name}' is already registered by {known.head_class.__qualname__}")
        _HEADS[name] = HeadType(name, config_class, head_class)
        return head_class

    return decorate


def head_type(name: str) -> HeadType:
    """The registered head called ``name``; one line listing the known ones otherwise."""
    found = _HEADS.get(name)
    if found is None:
        raise ValueError(
            f"unknown action head '{name}'; registered heads: {sorted(_HEADS)} (a head defined in your own "
            "module is registered when that module is imported)"
        )
    return found


def head_names() -> tuple[str, ...]:
    return tuple(sorted(_HEADS))


# ----------------------------------------------------------------------------------------------- configs
def refuse_unknown_keys(cls: type, data: Mapping[str, Any]) -> None:
    """One line naming the keys of ``data`` that are not fields of the dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed: {sorted(known)}")


def _derived(default_factory: Callable[[], Any]) -> Any:
    """Filled from the data by :meth:`HeadSettings.bind` (not a YAML setting), stored in checkpoints."""
    return field(default_factory=default_factory, init=False, metadata={"architecture": True})


@dataclass
class HeadSettings:
    """A base for a new head's config dataclass: :class:`HeadConfig`'s methods for plain settings.

    Subclass it with the head's settings as fields (with defaults); mark the ones that fix the weights' shapes
    with ``field(default=..., metadata={"architecture": True})``. :meth:`bind` fills the chunk length and the
    registry's embodiment dims.
    """

    chunk_len: int = field(default=16, init=False, metadata={"architecture": False})
    max_state_dim: int = _derived(int)
    max_action_dim: int = _derived(int)
    state_dims: list[int] = _derived(list)
    action_dims: list[int] = _derived(list)

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.init)

    @classmethod
    def architecture_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("architecture"))

    def bind(self, registry: EmbodimentRegistry, chunk_len: int | None = None) -> Any:
        bound = replace(self)
        bound.chunk_len = int(chunk_len if chunk_len is not None else self.chunk_len)
        if bound.chunk_len < 1:
            raise ValueError(f"invalid {type(self).__name__}: chunk_len must be >= 1, got {bound.chunk_len}")
        bound.max_state_dim, bound.max_action_dim = registry.max_state_dim, registry.max_action_dim
        bound.state_dims, bound.action_dims = list(registry.state_dims), list(registry.action_dims)
        return bound

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        refuse_unknown_keys(cls, data)
        config = cls(**{k: v for k, v in data.items() if k in cls.settings()})
        for f in fields(cls):
            if not f.init:
                default = f.default if f.default_factory is MISSING else f.default_factory()
                setattr(config, f.name, data.get(f.name, default))
        return config
