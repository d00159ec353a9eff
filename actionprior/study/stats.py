"""Confidence intervals for closed-loop success rates.

* One rate: the **Wilson score interval** (Wilson 1927). Unlike the Wald interval it stays inside [0, 1]
  and keeps close to nominal coverage at the small counts a simulated evaluation has (e.g. 0/10 -> [0, 27.8 %]).
* The difference of two policies evaluated on the *same* episode seeds: a **paired bootstrap**. The unit
  resampled is the episode seed (a simulator initial state): both policies' outcomes on that seed, averaged
  over their training seeds, move together, so the correlation the shared seeds create is kept and the
  between-training-seed spread enters through the per-seed averages. Percentile interval, fixed RNG seed,
  so the report is reproducible. For large samples it agrees with the McNemar-style Wald interval
  ``(b - c) / n +- z sqrt(b + c - (b - c)^2 / n) / n`` (tests/test_study_stats.py checks that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided interval; all in [0, 1] units (or differences of them)."""

    estimate: float
    low: float
    high: float
    n: int
    method: str

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
    """The Wilson score interval of ``successes / n``."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0, 0, "wilson")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Exact 0 and 1 at the boundaries (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, n, "wilson")


def episodes_for_half_width(half_width: float, p: float = 0.5, z: float = Z95) -> int:
    """The smallest ``n`` whose Wilson interval around ``p`` has at most this half-width (worst case p=0.5)."""
    if not 0 < half_width < 0.5:
        raise ValueError(f"half_width must be in (0, 0.5), got {half_width}")
    n = max(1, math.ceil(z * z * p * (1 - p) / half_width**2) - 10)
    while wilson(round(p * n), n, z).half_width > half_width:
        n += 1
    return n


def _seed_means(outcomes: Mapping[int, Sequence[float]]) -> np.ndarray:
    """``{training seed: outcomes per episode seed}`` -> mean over training seeds, per episode seed."""
    rows = [np.asarray(v, dtype=np.float64) for v in outcomes.values()]
    if not rows:
        raise ValueError("no training seeds")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"training seeds were evaluated on different numbers of episodes: {sorted(lengths)}")
    return np.mean(rows, axis=0)


def paired_bootstrap_diff(
    treatment: Mapping[int, Sequence[float]],
    control: Mapping[int, Sequence[float]],
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean success of ``treatment`` minus ``control`` over the same episode seeds, with a bootstrap interval.

    Each argument maps a training seed to the 0/1 outcomes on the shared, ordered list of evaluation episode
    seeds (the same list for every training seed and both policies). Episode seeds are resampled with
    replacement; the statistic is the difference of the seed-averaged success rates.
    """
    t, c = _seed_means(treatment), _seed_means(control)
    if len(t) != len(c):
        raise ValueError(f"paired episodes differ in number: {len(t)} vs {len(c)}")
    n = len(t)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "paired bootstrap")
    d = t - c
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    stats = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(float(d.mean()), float(low), float(high), n, f"paired bootstrap ({resamples} resamples)")


def mcnemar_wald_diff(b: int, c: int, n: int, z: float = Z95) -> Interval:
    """Wald interval of a paired difference from the discordant counts (b: only treatment succeeds)."""
    if n <= 0:
        raise ValueError("n must be positive")
    d = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return Interval(d, d - z * se, d + z * se, n, "McNemar Wald")
