"""The Stage 1 action prior: encoder (state/action window -> z) + flow-matching decoder (z -> action chunk).

Everything here works in normalised units on batch tensors padded to the registry's max dims
(docs/contracts.md). It is also the VLA's default action head (registered as ``action_prior``,
:mod:`actionprior.models.action_head`): ``loss``/``sample`` with every optional capability (``encode``,
``sample_rtc``, ``compile_sampler``). Un-normalisation belongs to :mod:`actionprior.training.action_scaling`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from actionprior.embodiments import EmbodimentRegistry
from actionprior.models.action_encoder import ActionEncoder
from actionprior.models.action_head import HeadSettings, refuse_unknown_keys, register_head
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
from actionprior.models.rtc import RTCGuide, guidance_weight, rtc_weights


def _architecture(default: Any) -> Any:
    """A setting that fixes the weights' shapes or meaning: a checkpoint and its user must agree on it."""
    return field(default=default, metadata={"architecture": True})


@dataclass
class ActionPriorConfig(HeadSettings):
    """The action prior's settings: each field is one YAML key (``model.init_args.prior.<field>``).

    Args:
        width, depth, heads: transformer size (encoder and decoder each have ``depth`` blocks).
        latent_dim: size of the latent ``z``.
        io_mode: ``projection`` (per-embodiment linear maps) or ``padded`` (the paper's unified layout).
        use_state: False trains the action-only prior (the encoder sees actions only).
        flow_alpha, flow_beta: flow time ~ Beta(alpha, beta), t = 1 is data.
        sample_steps: Euler steps when sampling (validation, inference).
        dropout: in every transformer block.

    What comes from the data is not a setting: :meth:`bind` fills ``chunk_len`` (``data.chunk_len``) and the
    embodiment dims (``max_state_dim``, ``state_dims``, ...) from the registry; checkpoints store them.
    """

    width: int = _architecture(128)
    depth: int = _architecture(2)
    heads: int = _architecture(4)
    latent_dim: int = _architecture(64)
    io_mode: IOMode = _architecture("projection")
    use_state: bool = _architecture(True)
    flow_alpha: float = 1.5
    flow_beta: float = 1.0
    sample_steps: int = 5
    dropout: float = 0.0

    def bind(self, registry: EmbodimentRegistry, chunk_len: int | None = None) -> ActionPriorConfig:
        """A copy with the embodiment dims of ``registry`` and the data's ``chunk_len`` filled in."""
        bound = super().bind(registry, chunk_len)
        bound.check_dims()
        return bound

    @classmethod
    def for_embodiments(
        cls, registry: EmbodimentRegistry, chunk_len: int = 16, **settings: Any
    ) -> ActionPriorConfig:
        """``ActionPriorConfig(**settings).bind(registry, chunk_len)``."""
        return cls(**settings).bind(registry, chunk_len)

    def __post_init__(self) -> None:
        problems = self._setting_problems()
        if problems:
            raise ValueError("invalid ActionPriorConfig: " + "; ".join(problems))

    def _setting_problems(self) -> list[str]:
        problems = []
        if self.io_mode not in IO_MODES:
            problems.append(f"io_mode must be one of {IO_MODES}, got '{self.io_mode}'")
        for name in ("width", "depth", "heads", "latent_dim", "sample_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heads >= 1 and self.width % self.heads:
            problems.append(f"width {self.width} must be divisible by heads {self.heads}")
        if self.flow_alpha <= 0 or self.flow_beta <= 0:
            problems.append(f"flow_alpha/flow_beta must be positive, got {self.flow_alpha}/{self.flow_beta}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        return problems

    def check_dims(self) -> None:
        problems = self._dim_problems()
        if problems:
            raise ValueError("invalid ActionPriorConfig: " + "; ".join(problems))

    def _dim_problems(self) -> list[str]:
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
        return problems

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionPriorConfig:
        """Settings and (when present) embodiment dims, e.g. from a checkpoint; unknown keys are refused."""
        refuse_unknown_keys(cls, data)
        config = cls.__new__(cls)  # every problem is reported at once, settings and dims alike
        for f in fields(cls):
            if f.name in data:
                setattr(config, f.name, data[f.name])
            else:
                setattr(config, f.name, f.default if f.default_factory is MISSING else f.default_factory())
        problems = config._setting_problems() + (config._dim_problems() if config.state_dims else [])
        if problems:
            raise ValueError("invalid ActionPriorConfig: " + "; ".join(problems))
        return config


@register_head("action_prior", ActionPriorConfig)
class ActionPrior(nn.Module):
    """The action prior (see the module docstring); as a VLA action head, ``cond`` is the latent ``z``."""

    def __init__(self, config: ActionPriorConfig):
        super().__init__()
        if not config.state_dims:
            raise ValueError(
                "ActionPrior needs a config bound to embodiments: ActionPriorConfig.bind(registry)"
            )
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

    @property
    def cond_dim(self) -> int:
        return self.config.latent_dim

    def encode(
        self, state: Tensor | None, action: Tensor, step_mask: Tensor, embodiment_id: Tensor
    ) -> Tensor:
        """``z`` ``[B, latent_dim]`` of a state/action window (``state`` is ignored when ``use_state`` is False)."""
        return self.encoder(state, action, step_mask, embodiment_id)

    def velocity(
        self, x_t: Tensor, t: Tensor, z: Tensor, embodiment_id: Tensor, step_mask: Tensor | None = None
    ) -> Tensor:
        return self.decoder(x_t, t, z, embodiment_id, step_mask)

    def loss(
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
        noise, context, plan = self._prepare(z, embodiment_id, steps, generator, step_mask)
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

    def _prepare(
        self,
        z: Tensor,
        embodiment_id: Tensor,
        steps: int,
        generator: torch.Generator | None,
        step_mask: Tensor | None,
    ) -> tuple[Tensor, DecoderContext, StepConditioning]:
        """The starting noise (zero on padded dims) and everything the Euler loop needs that does not depend
        on the noisy chunk; :meth:`sample` and :meth:`sample_rtc` draw the same noise from ``generator``."""
        b = z.shape[0]
        shape = (b, self.config.chunk_len, self.config.max_action_dim)
        dim_mask = self.decoder.io.action_dim_mask(embodiment_id).to(z.dtype)
        noise = torch.randn(shape, generator=generator, device=z.device, dtype=z.dtype) * dim_mask[:, None, :]
        # Once per chunk, eagerly: conditioning, the id check (data-dependent, would break a graph) and the
        # time conditioning of every step. Only the Euler loop, the part repeated per step, is compiled.
        context = self.decoder.condition(z, embodiment_id, self.config.chunk_len, step_mask)
        times = euler_times(steps, z.device).to(z.dtype)
        plan = self.decoder.step_conditioning(times[:, None].expand(steps, b), context)
        return noise, context, plan

    def sample_rtc(
        self,
        z: Tensor,
        embodiment_id: Tensor,
        guide: RTCGuide,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        step_mask: Tensor | None = None,
    ) -> Tensor:
        """A chunk like :meth:`sample`, inpainted to continue the previous one (real-time chunking, see
        :mod:`actionprior.models.rtc`): the frozen prefix is exactly ``guide.target``'s, the rest of the overlap
        is guided towards it, with the same noise draw and number of Euler steps as :meth:`sample`.

        The guidance needs a vector-Jacobian product through the decoder, so this runs with autograd on (also
        when called under ``torch.inference_mode``, as :meth:`VLA.sample_actions` is): one forward and one
        backward pass per step (unless ``guide.vjp`` is False), gradients with respect to the noisy chunk only,
        parameters untouched. With ``max_guidance == 0`` no backward pass runs; with in addition no frozen step the result is
        :meth:`sample`'s exactly. Always eager (a compiled sampler is not used here).
        """
        steps = steps or self.config.sample_steps
        c = self.config
        guide.check(z.shape[0], c.chunk_len, c.max_action_dim)
        # Tensors made under inference mode cannot enter an autograd graph; copies made outside it can.
        with torch.inference_mode(False), torch.no_grad():
            z, embodiment_id = z.clone(), embodiment_id.clone()
            target = guide.target.to(device=z.device, dtype=z.dtype).clone()
            frozen, overlap = guide.frozen.to(z.device).clone(), guide.overlap.to(z.device).clone()
            noise, context, plan = self._prepare(z, embodiment_id, steps, generator, step_mask)
            dim_mask = self.decoder.io.action_dim_mask(embodiment_id).to(z.dtype)[:, None, :]
            weights = rtc_weights(c.chunk_len, frozen, overlap, guide.mask).to(z.dtype)[:, :, None] * dim_mask
            held = (torch.arange(c.chunk_len, device=z.device)[None, :] < frozen[:, None])[:, :, None]
            target = target * dim_mask
            any_held = bool(held.any())
            times = euler_times(steps, z.device).to(z.dtype)
            dt = 1.0 / steps
            x = noise
            for i in range(steps):
                t = float(times[i])
                if any_held:  # the frozen steps on the straight path from their noise to the executed actions
                    x = torch.where(held, (1.0 - t) * noise + t * target, x)
                scale = guidance_weight(t, guide.max_guidance)
                if scale == 0.0:
                    v = self.decoder.velocity_at(x, context, plan[i])
                elif not guide.vjp:  # the identity in place of the Jacobian: no backward pass
                    v = self.decoder.velocity_at(x, context, plan[i])
                    v = v + scale * (target - (x + (1.0 - t) * v)) * weights
                else:
                    with torch.enable_grad():
                        x_in = x.detach().requires_grad_(True)
                        v = self.decoder.velocity_at(x_in, context, plan[i])
                        denoised = x_in + (1.0 - t) * v
                        error = ((target - denoised) * weights).detach()
                        (pull,) = torch.autograd.grad(denoised, x_in, grad_outputs=error)
                    v = v.detach() + scale * pull * dim_mask
                x = torch.add(x, v, alpha=dt)
            if any_held:
                x = torch.where(held, target, x)
            return x

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
