"""The study's confidence intervals against known values."""

from __future__ import annotations

import numpy as np
import pytest

from actionprior.study.stats import (
    episodes_for_half_width,
    mcnemar_wald_diff,
    paired_bootstrap_diff,
    wilson,
)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I (score method).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # Closed forms: 5/10 -> 0.5 +- 1.96 sqrt(3.4604) / 13.8415; 0/10 -> upper z^2 / (n + z^2).
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    ci = wilson(k, n)
    assert ci.estimate == pytest.approx(k / n)
    assert ci.low == pytest.approx(low, abs=6e-5)
    assert ci.high == pytest.approx(high, abs=6e-5)
    assert ci.method == "wilson"


def test_wilson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="successes <= n"):
        wilson(11, 10)
    assert wilson(0, 0).n == 0


def test_episodes_for_half_width_twelve_points() -> None:
    n = episodes_for_half_width(0.12)
    assert wilson(n // 2, n).half_width <= 0.12
    assert wilson((n - 1) // 2, n - 1).half_width > 0.12
    assert 60 <= n <= 70  # 1.96^2 / (4 * 0.12^2) = 66.7, Wilson slightly fewer


def test_paired_bootstrap_matches_mcnemar_wald_for_large_n() -> None:
    # 400 paired episodes: 60 only the treatment solves, 20 only the control, the rest concordant.
    rng = np.random.default_rng(1)
    n, b, c = 400, 60, 20
    treat = np.zeros(n)
    ctrl = np.zeros(n)
    treat[:b] = 1
    ctrl[b : b + c] = 1
    both = np.arange(b + c, b + c + 150)
    treat[both] = ctrl[both] = 1
    order = rng.permutation(n)
    boot = paired_bootstrap_diff({0: treat[order]}, {0: ctrl[order]}, resamples=20_000)
    wald = mcnemar_wald_diff(b, c, n)
    assert boot.estimate == pytest.approx(0.1)
    assert wald.estimate == pytest.approx(0.1)
    assert boot.low == pytest.approx(wald.low, abs=0.006)
    assert boot.high == pytest.approx(wald.high, abs=0.006)


def test_paired_bootstrap_identical_policies_and_seed_averaging() -> None:
    x = [1, 0, 1, 1, 0, 0, 1, 0]
    same = paired_bootstrap_diff({0: x, 1: x}, {0: x, 1: x})
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    # Two training seeds: the treatment's seed-mean is 0.5 on every episode, the control's 0 -> +0.5 exactly.
    half = paired_bootstrap_diff({0: [1] * 6, 1: [0] * 6}, {0: [0] * 6, 1: [0] * 6})
    assert half.estimate == pytest.approx(0.5)
    assert half.low == pytest.approx(0.5) and half.high == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different numbers of episodes"):
        paired_bootstrap_diff({0: [1, 0], 1: [1]}, {0: [1, 0], 1: [1, 0]})
