"""Confidence intervals for closed-loop success rates of policies trained over several seeds.

The study's design has two sources of variance: the **training seed** (a whole Stage 2 run can be better or
worse) and the **evaluation episode** (a simulator initial state, drawn per task). Every row is evaluated on the
same, fixed evaluation seeds, and training seeds carry the same numbers across rows, so two rows are compared
*paired*: seed with seed, episode with episode.

* A rate or a difference of rates (any linear contrast of per-task success, ``contrast_interval``): a
  **two-level (hierarchical) bootstrap**. Each resample draws the training seeds with replacement, then, per task,
  that many episodes with replacement *within each chosen seed*. The rows of a comparison share every draw, so the
  pairing is kept.
* With few seeds the bootstrap's seed level is too narrow: ``S`` seeds give the variance of their mean times
  ``(S - 1) / S`` and a normal, not Student, spread (at 4 seeds and a strong seed effect a 95 % percentile
  interval covers 84-88 % in simulation). So the interval is the hull of the bootstrap percentile interval and
  the Student-t interval of the per-seed statistics (``S - 1`` degrees of freedom; exact for normal seed means,
  whatever the split between seed and episode variance). Rates also keep at least the Wilson interval of their
  episodes (at the Kish effective number for per-task means), which is what independent episodes allow: an
  all-failure row still gets an upper bound above 0. ``tests/test_study_stats.py`` checks the coverage on
  simulated outcomes with a planted seed effect (93-97 % for a 95 % interval over 1000 simulations).
* ``wilson``: one rate from independent trials (Wilson 1927), e.g. for sizing an evaluation.

"Overall" is reported two ways: the mean over tasks of per-task success (as the paper reports it; every task
weighs the same) and the episode-pooled rate (tasks weigh by their episode count). Both are contrasts with
different task weights (``task_weights``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from actionprior.intervals import Z95, wilson_bounds

RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided interval; all in [0, 1] units (or differences of them)."""

    estimate: float
    low: float
    high: float
    n: int  # evaluation episodes (per row) behind the estimate
    method: str
    seeds: int = 0  # training seeds behind the estimate (0: not a seed-level interval)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "half_width": self.half_width}

    def pct(self, signed: bool = False) -> str:
        """``'62.5 [48.1, 75.0]'`` in percentage points."""
        sign = "+" if signed else ""
        return f"{100 * self.estimate:{sign}.1f} [{100 * self.low:{sign}.1f}, {100 * self.high:{sign}.1f}]"


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of ``successes / n`` (independent trials)."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0, 0, "wilson")
    low, high = wilson_bounds(successes / n, n, z)
    return Interval(successes / n, low, high, n, "wilson")


def episodes_for_half_width(half_width: float, p: float = 0.5, z: float = Z95) -> int:
    """The smallest ``n`` whose Wilson interval around ``p`` has at most this half-width (worst case p=0.5)."""
    if not 0 < half_width < 0.5:
        raise ValueError(f"half_width must be in (0, 0.5), got {half_width}")
    n = max(1, math.ceil(z * z * p * (1 - p) / half_width**2) - 10)
    while wilson(round(p * n), n, z).half_width > half_width:
        n += 1
    return n


def mcnemar_wald_diff(b: int, c: int, n: int, z: float = Z95) -> Interval:
    """Wald interval of a paired difference from the discordant counts (b: only treatment succeeds)."""
    if n <= 0:
        raise ValueError("n must be positive")
    d = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return Interval(d, d - z * se, d + z * se, n, "McNemar Wald")


# ------------------------------------------------------------------------------------------ Student t
def _t_cdf(t: float, df: int) -> float:
    """Student t CDF for an integer ``df`` (closed-form finite series, Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd
        total, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        a = (2 / math.pi) * (theta + (s * total if df > 1 else 0.0))
    else:
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c * c * (2 * k - 1) / (2 * k)
        a = s * total
    return 0.5 + a / 2


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t with integer ``df >= 1`` degrees of freedom."""
    if not 0.5 < q < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0.5 < q < 1 and df >= 1, got q={q}, df={df}")
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < q:
        high *= 2
    for _ in range(200):  # bisection to machine precision
        mid = (low + high) / 2
        if _t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2


# --------------------------------------------------------------------------------- two-level bootstrap
def check_outcomes(outcomes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validates ``outcomes``: per task an array ``([batch,] rows, seeds, episodes)`` of 0/1 with the same batch,
    rows and seeds for every task; returns them as ``(batch, rows, seeds, episodes)`` int8 arrays."""
    if not outcomes:
        raise ValueError("no tasks to estimate over")
    arrays = [np.asarray(y) for y in outcomes]
    arrays = [y[None] if y.ndim == 3 else y for y in arrays]
    if any(y.ndim != 4 for y in arrays) or len({y.shape[:3] for y in arrays}) != 1:
        raise ValueError("outcomes must be ([batch,] rows, seeds, episodes) per task with equal batch, rows and "
                         f"seeds, got {[y.shape for y in arrays]}")  # fmt: skip
    if any(0 in y.shape for y in arrays):
        raise ValueError("every task needs at least one row, training seed and episode")
    if any(((y != 0) & (y != 1)).any() for y in arrays):
        raise ValueError("outcomes must be 0/1")
    return [y.astype(np.int8) for y in arrays]


def resample_task_means(
    outcomes: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Two-level bootstrap replicates of every row's per-task success: ``([batch,] resamples, rows, tasks)``.

    ``outcomes[t]`` is ``([batch,] rows, seeds, episodes)``: row ``r``'s 0/1 outcome under training seed ``s`` on
    the ``e``-th evaluation episode of task ``t`` (the same episodes for every seed and row; ``batch`` stacks
    independent data sets, e.g. simulations). A replicate draws the seeds with replacement once (shared by every
    task: a seed is one training run), then per task as many episode indices with replacement within each drawn
    seed; every row reads the same draws (paired).
    """
    arrays = check_outcomes(outcomes)
    batch, rows, seeds = arrays[0].shape[:3]
    rng = np.random.default_rng(seed)
    out = np.empty((batch, resamples, rows, len(arrays)))
    # Chunks of the batch keep the index arrays near 16 MB.
    chunk = max(1, 2_000_000 // (resamples * seeds * max(y.shape[3] for y in arrays)))
    for lo in range(0, batch, chunk):
        n = min(chunk, batch - lo)
        data = np.arange(lo, lo + n)[:, None, None, None]
        drawn = rng.integers(0, seeds, size=(n, resamples, seeds, 1))
        for t, y in enumerate(arrays):
            episodes = y.shape[3]
            picked = rng.integers(0, episodes, size=(n, resamples, seeds, episodes))
            for r in range(rows):
                hits = y[:, r][data, drawn, picked]  # (n, resamples, seeds, episodes)
                out[lo : lo + n, :, r, t] = hits.sum(axis=(2, 3), dtype=np.int64) / (seeds * episodes)
    return out if np.ndim(outcomes[0]) == 4 else out[0]


def task_weights(episodes_per_task: Sequence[int], per_task_mean: bool) -> np.ndarray:
    """Weights over tasks: equal (mean over tasks) or proportional to episodes (episode-pooled)."""
    n = np.asarray(episodes_per_task, dtype=np.float64)
    return np.full(len(n), 1 / len(n)) if per_task_mean else n / n.sum()


def contrast_bounds(
    outcomes: Sequence[np.ndarray],
    row_coef: Sequence[float],
    weights: Sequence[float],
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate, low, high)``, each ``(batch,)``, of ``sum_r sum_t row_coef[r] * weights[t] * success[r, t]``
    for every data set of a batch (see ``contrast_interval``)."""
    arrays = check_outcomes(outcomes)
    coef = np.asarray(row_coef, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    rows, seeds = arrays[0].shape[1:3]
    if coef.shape != (rows,) or w.shape != (len(arrays),):
        raise ValueError(f"{len(coef)} row coefficients / {len(w)} task weights for outcomes of {rows} rows and "
                         f"{len(arrays)} tasks")  # fmt: skip
    per_seed_task = np.stack([y.mean(axis=3) for y in arrays], axis=-1)  # (batch, rows, seeds, tasks)
    per_seed = np.einsum("r,nrst,t->ns", coef, per_seed_task, w)
    estimate = per_seed.mean(axis=1)
    replicates = np.einsum("r,nbrt,t->nb", coef, resample_task_means(arrays, resamples, seed), w)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha], axis=1)
    if seeds >= 2:
        # Student-t over the per-seed statistics: the seed level's small-sample guard (module docstring).
        half = t_quantile(1 - alpha, seeds - 1) * per_seed.std(axis=1, ddof=1) / math.sqrt(seeds)
        low, high = np.minimum(low, estimate - half), np.maximum(high, estimate + half)
    if rows == 1 and coef[0] > 0 and (w >= 0).all():
        # A rate: never narrower than what independent episodes allow (Kish effective episode count).
        scale = coef[0] * w.sum()
        n_eff = w.sum() ** 2 / float(np.sum(w**2 / np.array([seeds * y.shape[3] for y in arrays])))
        wl, wh = _wilson_array(estimate / scale, n_eff, _z(confidence))
        low, high = np.minimum(low, scale * wl), np.maximum(high, scale * wh)
    terms = np.outer(coef, w)
    low = np.maximum(low, np.minimum(terms, 0).sum())
    high = np.minimum(high, np.maximum(terms, 0).sum())
    return estimate, low, high


def contrast_interval(
    outcomes: Sequence[np.ndarray],
    row_coef: Sequence[float],
    weights: Sequence[float],
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Estimate and interval of ``sum_r sum_t row_coef[r] * weights[t] * success[r, t]`` for one data set
    (``outcomes[t]``: ``(rows, seeds, episodes)``).

    ``row_coef=(1,)`` with weights summing to 1 is a rate; ``(1, -1)`` a paired difference of two rows; task
    weights of both signs a difference between groups of tasks (e.g. the gain on Panda minus the gain on the
    data-rich tasks). The interval is the hull of the two-level bootstrap's percentile interval and the Student-t
    interval over training seeds, and for a rate also the Wilson interval (module docstring).
    """
    arrays = check_outcomes(outcomes)
    if arrays[0].shape[0] != 1:
        raise ValueError("contrast_interval takes one data set; use contrast_bounds for a batch")
    estimate, low, high = contrast_bounds(arrays, row_coef, weights, confidence, resamples, seed)
    rows, seeds = arrays[0].shape[1:3]
    method = f"two-level bootstrap ({resamples} resamples)" + (
        f" ∪ t over {seeds} seeds" if seeds >= 2 else ""
    )
    if rows == 1 and row_coef[0] > 0 and min(weights) >= 0:
        method += " ∪ Wilson"
    n = int(sum(y.shape[2] * y.shape[3] for y in arrays))
    return Interval(float(estimate[0]), float(low[0]), float(high[0]), n, method, seeds)


def _wilson_array(p: np.ndarray, n: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.array([wilson_bounds(float(v), n, z) for v in np.atleast_1d(p)])
    return bounds[:, 0], bounds[:, 1]


def _z(confidence: float) -> float:
    if confidence == 0.95:
        return Z95
    # Normal quantile by bisection on erf (confidence levels other than 95 % are rare here).
    q, low, high = 1 - (1 - confidence) / 2, 0.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q else (low, mid)
    return (low + high) / 2
