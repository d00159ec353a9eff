"""The Wilson score interval of a success rate: the one formula every report of the package uses.

Layer 0 (no package imports), so that the LIBERO evaluation, which runs beside a peer environment, and the study's
statistics (:mod:`actionprior.study.stats`, which builds its seed-level intervals on it) share it.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_bounds(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Lower and upper Wilson bound of a rate ``p`` observed over ``n`` independent trials (``n`` may be an
    effective, non-integer count); exact 0 and 1 at the boundaries, where the formula gives them only up to
    rounding. ``n <= 0`` says nothing: ``(0, 1)``."""
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if p <= 0 else max(0.0, centre - half)
    high = 1.0 if p >= 1 else min(1.0, centre + half)
    return low, high
