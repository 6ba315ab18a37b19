"""Bootstrap uncertainty shared by every number of a sweep: one set of resampled indices, many rows.

A sweep generates image i from prompt i with seed i in every row, so rows are *paired*. The
nonparametric bootstrap (Efron & Tibshirani 1993, ch. 6 and 13) resamples the n image positions
with replacement B times; drawing those indices once (fixed seed) and applying the same draw to
every row makes the replicate of a difference, ``theta*_a - theta*_b``, a paired comparison: the
prompt/seed mix that favours one row in a replicate favours the other as well.

Intervals are percentile intervals re-centred on the point estimate: the bootstrap estimate of
bias, ``mean(theta*) - theta_hat`` (Efron & Tibshirani eq. 10.2), is subtracted from both ends
when it exceeds a quarter of the bootstrap standard error (their rule of thumb in ch. 10: a
smaller bias is not worth correcting, and correcting it only adds Monte-Carlo noise). For means
(CLIP score, accuracy) the bias is ~0 and this is the plain percentile interval. For FID a
resample with repeated rows has fewer distinct images, so its FID is biased upwards relative to
the original's; the shift removes that artefact, and the interval describes the spread of "FID at
n images" around the reported value rather than a second dose of small-sample bias.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # two-sided coverage of every interval in a report


@dataclass(frozen=True)
class Resamples:
    """B bootstrap resamples of the positions 0..n-1 (``indices[b]`` is one resample of length n)."""

    indices: np.ndarray  # int64 [B, n]
    seed: int

    @property
    def num(self) -> int:
        return int(self.indices.shape[0])

    @property
    def n(self) -> int:
        return int(self.indices.shape[1])

    def counts(self) -> np.ndarray:
        """float64 ``[B, n]``: how often each position occurs in each resample (rows sum to n)."""
        out = np.zeros(self.indices.shape, np.float64)
        for b, idx in enumerate(self.indices):
            out[b] = np.bincount(idx, minlength=self.n)
        return out


def draw_resamples(n: int, num: int, seed: int) -> Resamples:
    """``num`` resamples of ``n`` positions with replacement; the same (n, num, seed) give the same draw."""
    if n < 1 or num < 1:
        raise ValueError(f"bootstrap needs n >= 1 and num >= 1, got n={n}, num={num}")
    rng = np.random.default_rng(seed)
    return Resamples(rng.integers(0, n, size=(num, n), dtype=np.int64), seed)


@dataclass(frozen=True)
class Estimate:
    """A point value with its two-sided interval at :data:`LEVEL`."""

    value: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def excludes(self, x: float = 0.0) -> bool:
        """True when ``x`` lies outside the interval (e.g. a paired difference resolved from zero)."""
        return not (self.lo <= x <= self.hi)


def interval(value: float, replicates: np.ndarray, level: float = LEVEL) -> Estimate:
    """Percentile interval of ``replicates``, re-centred on ``value`` when their bias is material (module docstring).

    Non-finite replicates are dropped; with fewer than two finite ones the interval is NaN.
    """
    reps = np.asarray(replicates, np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size < 2 or not np.isfinite(value):
        return Estimate(float(value), float("nan"), float("nan"))
    shift = float(reps.mean()) - float(value)
    if abs(shift) < 0.25 * float(reps.std(ddof=1)):
        shift = 0.0
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha]) - shift
    return Estimate(float(value), float(lo), float(hi))


def mean_replicates(values: np.ndarray, resamples: Resamples) -> np.ndarray:
    """Bootstrap replicates of the mean of per-item ``values`` (``[n]`` -> ``[B]``, ``[n, k]`` -> ``[B, k]``)."""
    v = np.asarray(values, np.float64)
    if v.shape[0] != resamples.n:
        raise ValueError(f"{v.shape[0]} values for resamples of {resamples.n} items")
    return v[resamples.indices].mean(axis=1)


def paired_difference(value_a: float, replicates_a: np.ndarray, value_b: float, replicates_b: np.ndarray,
                      level: float = LEVEL) -> Estimate:
    """``a - b`` with the interval of the paired replicates ``a*_r - b*_r`` (same resample r for both)."""
    ra, rb = np.asarray(replicates_a, np.float64), np.asarray(replicates_b, np.float64)
    if ra.shape != rb.shape:
        raise ValueError(f"paired replicates differ in shape: {ra.shape} vs {rb.shape}")
    return interval(value_a - value_b, ra - rb, level)
