"""The Stage 1 action prior: encoder (state/action window -> z) + flow-matching decoder (z -> action chunk).

Everything here works in normalised units on batch tensors padded to the registry's max dims
(docs/contracts.md). Un-normalisation belongs to :mod:`actionprior.models.action_scaling`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.action_encoder import ActionEncoder
from actionprior.models.embodiment_io import IO_MODES, IOMode
from actionprior.models.flow_decoder import DecoderContext, FlowDecoder, StepConditioning
from actionprior.models.flow_matching import (
    euler_sample,
    euler_times,
    interpolate,
    masked_mse,
    sample_flow_time,
    target_velocity,
)


@dataclass
class ActionPriorConfig:
    width: int = 128
    depth: int = 3
    heads: int = 4
    latent_dim: int = 64
    chunk_len: int = 16
    max_state_dim: int = 0
    max_action_dim: int = 0
    state_dims: list[int] = field(default_factory=list)
    action_dims: list[int] = field(default_factory=list)
    io_mode: IOMode = "projection"
    use_state: bool = True
    flow_alpha: float = 1.5
    flow_beta: float = 1.0
    sample_steps: int = 5
    dropout: float = 0.0

    @classmethod
    def for_embodiments(cls, registry: EmbodimentRegistry, **architecture: Any) -> ActionPriorConfig:
        """The config for ``registry``'s robots: I/O dims come from the specs, the rest from ``architecture``."""
        return cls(
            max_state_dim=registry.max_state_dim,
            max_action_dim=registry.max_action_dim,
            state_dims=registry.state_dims,
            action_dims=registry.action_dims,
            **architecture,
        )

    def __post_init__(self) -> None:
        self.state_dims = [int(d) for d in self.state_dims]
        self.action_dims = [int(d) for d in self.action_dims]
        problems = []
        if not self.state_dims or len(self.state_dims) != len(self.action_dims):
            problems.append(
                f"state_dims {self.state_dims} and action_dims {self.action_dims} need one entry per embodiment"
            )
        if self.state_dims and max(self.state_dims) > self.max_state_dim:
            problems.append(f"max_state_dim {self.max_state_dim} < largest state dim {max(self.state_dims)}")
        if self.action_dims and max(self.action_dims) > self.max_action_dim:
            problems.append(
                f"max_action_dim {self.max_action_dim} < largest action dim {max(self.action_dims)}"
            )
        if self.io_mode not in IO_MODES:
            problems.append(f"io_mode must be one of {IO_MODES}, got '{self.io_mode}'")
        if self.width % self.heads:
            problems.append(f"width {self.width} must be divisible by heads {self.heads}")
        for name in ("width", "depth", "heads", "latent_dim", "chunk_len", "sample_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.flow_alpha <= 0 or self.flow_beta <= 0:
            problems.append(f"flow_alpha/flow_beta must be positive, got {self.flow_alpha}/{self.flow_beta}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid ActionPriorConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionPriorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ActionPriorConfig keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)


class ActionPrior(nn.Module):
    def __init__(self, config: ActionPriorConfig):
        super().__init__()
        self.config = config
        c = config
        common = dict(
            state_dims=c.state_dims,
            action_dims=c.action_dims,
            max_state_dim=c.max_state_dim,
            max_action_dim=c.max_action_dim,
            width=c.width,
            depth=c.depth,
            heads=c.heads,
            latent_dim=c.latent_dim,
            io_mode=c.io_mode,
            dropout=c.dropout,
        )
        self.encoder = ActionEncoder(**common, use_state=c.use_state)
        self.decoder = FlowDecoder(**common)
        self._compiled_loop: Callable[..., Tensor] | None = None  # set by compile_sampler

    def encode(
        self, state: Tensor | None, action: Tensor, step_mask: Tensor, embodiment_id: Tensor
    ) -> Tensor:
        """``z`` ``[B, latent_dim]`` of a state/action window (``state`` is ignored when ``use_state`` is False)."""
        return self.encoder(state, action, step_mask, embodiment_id)

    def velocity(
        self, x_t: Tensor, t: Tensor, z: Tensor, embodiment_id: Tensor, step_mask: Tensor | None = None
    ) -> Tensor:
        return self.decoder(x_t, t, z, embodiment_id, step_mask)

    def flow_loss(
        self,
        z: Tensor,
        action: Tensor,
        step_mask: Tensor,
        action_dim_mask: Tensor,
        embodiment_id: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Flow-matching loss of the decoder conditioned on ``z``, over real steps and dims only."""
        b = action.shape[0]
        t = sample_flow_time(b, self.config.flow_alpha, self.config.flow_beta, generator, action.device)
        noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
        noise = noise * action_dim_mask[:, None, :].to(noise.dtype)
        x_t = interpolate(noise, action, t)
        pred = self.decoder(x_t, t, z, embodiment_id, step_mask)
        return masked_mse(pred, target_velocity(noise, action), step_mask.bool(), action_dim_mask.bool())

    @torch.no_grad()
    def sample(
        self,
        z: Tensor,
        embodiment_id: Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        step_mask: Tensor | None = None,
        compile: bool | None = None,
    ) -> Tensor:
        """An action chunk ``[B, chunk_len, max_action_dim]`` in normalised units, zero on padded dims.

        ``step_mask`` (optional) hides chunk steps from attention exactly as in training, e.g. to
        reconstruct a window that runs past the episode end. ``compile``: run the Euler loop through
        :meth:`compile_sampler`'s compiled function (True compiles it with the defaults on first use),
        eagerly (False), or as :meth:`compile_sampler` left it (None, the default: eager until it is called).
        """
        steps = steps or self.config.sample_steps
        b = z.shape[0]
        shape = (b, self.config.chunk_len, self.config.max_action_dim)
        dim_mask = self.decoder.io.action_dim_mask(embodiment_id).to(z.dtype)
        noise = torch.randn(shape, generator=generator, device=z.device, dtype=z.dtype) * dim_mask[:, None, :]
        # Once per chunk, eagerly: conditioning, the id check (data-dependent, would break a graph) and the
        # time conditioning of every step. Only the Euler loop, the part repeated per step, is compiled.
        context = self.decoder.condition(z, embodiment_id, self.config.chunk_len, step_mask)
        times = euler_times(steps, z.device).to(z.dtype)
        plan = self.decoder.step_conditioning(times[:, None].expand(steps, b), context)
        if compile is None:
            compile = self._compiled_loop is not None
        if not compile:
            return self._euler_loop(noise, context, plan, steps)
        if self._compiled_loop is None:
            self.compile_sampler()
        assert self._compiled_loop is not None
        if z.is_cuda:  # CUDA graphs: each call is a new step, so the previous output's buffers may be reused
            torch.compiler.cudagraph_mark_step_begin()
        # The clone leaves the caller a tensor that the next replay of a CUDA graph does not overwrite.
        return self._compiled_loop(noise, context, plan, steps).clone()

    def _euler_loop(
        self, noise: Tensor, context: DecoderContext, plan: StepConditioning, steps: int
    ) -> Tensor:
        return euler_sample(lambda x, t, i: self.decoder.velocity_at(x, context, plan[i]), noise, steps)

    def compile_sampler(
        self, mode: str | None = "reduce-overhead", backend: str = "inductor", fullgraph: bool = True
    ) -> None:
        """Compile the Euler loop of :meth:`sample` (opt-in; ``sample`` uses it from now on).

        ``mode="reduce-overhead"`` captures the loop (all decoder steps) in CUDA graphs on GPU, removing
        the per-kernel launch cost that dominates a small decoder's latency; on CPU it is plain inductor.
        ``backend="eager"``/``"aot_eager"`` only trace (fast to build; for tests). ``fullgraph=True``
        makes a graph break an error instead of a silently split (slower) graph. Shapes are static: a
        new batch size, chunk length or step count compiles once more.
        """
        kwargs: dict[str, Any] = {"backend": backend, "fullgraph": fullgraph, "dynamic": False}
        if backend == "inductor" and mode is not None:
            kwargs["mode"] = mode
        self._compiled_loop = torch.compile(self._euler_loop, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # A compiled function holds the original module and device-specific code: copies and pickles of the
        # module start eager (call compile_sampler on them to compile their own loop).
        state = self.__dict__.copy()
        state["_compiled_loop"] = None
        return state

    def eager_sampler(self) -> None:
        """Undo :meth:`compile_sampler`: :meth:`sample` runs eagerly again."""
        self._compiled_loop = None
