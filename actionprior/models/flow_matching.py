"""Flow-matching maths shared by Stage 1 (action prior) and Stage 2 (VLA).

Convention: ``t = 0`` is pure noise, ``t = 1`` is data; ``x_t = (1 - t) * noise + t * target`` and the
model regresses the constant velocity ``target - noise``. Sampling integrates that velocity with Euler
steps from ``t = 0`` to ``t = 1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# velocity_fn(x, t, i): the velocity at ``x`` and flow time ``t`` ``[B]``, the ``i``-th of ``euler_times``.
VelocityFn = Callable[[Tensor, Tensor, int], Tensor]


def _standard_gamma(concentration: float, n: int, generator: torch.Generator | None, device) -> Tensor:
    """Gamma(concentration, 1) samples drawn from ``generator`` (Marsaglia & Tsang, 2000).

    ``torch.distributions.Gamma`` cannot take a generator, and seeded flow times are what make
    validation losses comparable between runs, so the rejection sampler is written out here.
    """
    boost = concentration < 1.0
    k = concentration + 1.0 if boost else concentration
    d = k - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    out = torch.empty(n, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel():
        m = todo.numel()
        x = torch.randn(m, generator=generator, device=device)
        u = torch.rand(m, generator=generator, device=device)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (
            torch.log(u.clamp_min(1e-30)) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-30))
        )
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:  # Gamma(a) = Gamma(a + 1) * U^(1/a) for a < 1
        u = torch.rand(n, generator=generator, device=device)
        out = out * u.clamp_min(1e-30) ** (1.0 / concentration)
    return out


def sample_flow_time(
    n: int,
    alpha: float = 1.5,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` flow times from Beta(alpha, beta) on (0, 1); alpha > beta favours times near the data."""
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"flow time Beta parameters must be positive, got alpha={alpha}, beta={beta}")
    if beta == 1.0:  # exact inverse CDF: P(t <= x) = x^alpha
        t = torch.rand(n, generator=generator, device=device) ** (1.0 / alpha)
    elif alpha == 1.0:
        t = 1.0 - torch.rand(n, generator=generator, device=device) ** (1.0 / beta)
    else:
        a = _standard_gamma(alpha, n, generator, device)
        b = _standard_gamma(beta, n, generator, device)
        t = a / (a + b)
    # Keep t strictly inside (0, 1): the endpoints carry no training signal and t = 1 makes x_t noise-free.
    return t.clamp(1e-5, 1.0 - 1e-5)


def interpolate(noise: Tensor, target: Tensor, t: Tensor) -> Tensor:
    """``(1 - t) * noise + t * target`` with ``t`` of shape ``[B]`` broadcast over the trailing dims."""
    t = t.reshape(t.shape + (1,) * (target.ndim - t.ndim))
    return (1.0 - t) * noise + t * target


def target_velocity(noise: Tensor, target: Tensor) -> Tensor:
    return target - noise


def masked_mse(pred: Tensor, target: Tensor, step_mask: Tensor, dim_mask: Tensor) -> Tensor:
    """Mean squared error over real chunk steps and real action dims only.

    ``pred``/``target`` are ``[B, H, A]``, ``step_mask`` ``[B, H]`` and ``dim_mask`` ``[B, A]`` (bool).
    Every real element weighs the same, so an embodiment with more action dims contributes more terms.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"masked_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be equal [B,H,A]"
        )
    b, h, a = pred.shape
    if tuple(step_mask.shape) != (b, h) or tuple(dim_mask.shape) != (b, a):
        raise ValueError(
            f"masked_mse: step_mask {tuple(step_mask.shape)} must be [{b}, {h}] and "
            f"dim_mask {tuple(dim_mask.shape)} must be [{b}, {a}]"
        )
    mask = (step_mask[:, :, None] & dim_mask[:, None, :]).to(pred.dtype)
    sq = (pred - target).square() * mask
    return sq.sum() / mask.sum().clamp_min(1.0)


def euler_times(steps: int, device: torch.device | str | None = None) -> Tensor:
    """The flow times ``[steps]`` at which :func:`euler_sample` evaluates the velocity: ``i / steps``."""
    if steps < 1:
        raise ValueError(f"euler_sample needs at least one step, got {steps}")
    return torch.arange(steps, device=device, dtype=torch.float32) / steps


def euler_sample(velocity_fn: VelocityFn, noise: Tensor, steps: int) -> Tensor:
    """Integrate ``dx/dt = velocity_fn(x, t, i)`` from ``t = 0`` (``noise``) to ``t = 1`` in ``steps`` steps.

    ``velocity_fn`` receives ``x``, a ``[B]`` tensor of the current time and the step index ``i`` (so a
    caller can precompute everything that depends on time only for all of :func:`euler_times` at once).
    """
    times = euler_times(steps, noise.device).to(noise.dtype)
    x = noise
    dt = 1.0 / steps
    for i in range(steps):
        x = torch.add(x, velocity_fn(x, times[i].expand(x.shape[0]), i), alpha=dt)
    return x
