"""FID, FID-infinity and KID as pure functions of feature arrays (float64), with bootstrap replicates.

The reference side is fixed (cached statistics of held-out images); only the generated side is
resampled, so each replicate answers "what if this row had drawn another n images".

- FID (Heusel et al. 2017, eq. 6): ||mu_g - mu_r||^2 + Tr(S_g) + Tr(S_r) - 2 Tr((S_g S_r)^1/2).
  S_g S_r is similar to A S_g A with A = S_r^1/2, a symmetric PSD matrix, so the trace of the square
  root is the sum of square roots of ``eigvalsh(A S_g A)``; A is computed once per reference.
  Covariances use the unbiased (n - 1) normaliser, as torchmetrics and pytorch-fid do.
- FID-infinity (Chong & Forsyth, CVPR 2020, Sec. 3.2): FID at N images is ~linear in 1/N,
  FID_N = FID_inf + k / N; fit a line to FID at several subset sizes N and read it at 1/N = 0.
- KID (Binkowski et al. 2018, Sec. 4): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3 on all generated features against the reference sample (no
  subsets). A resample with repeated rows is scored with pairs of *distinct* original images
  only, so repeats do not add the large k(x, x) terms to the generated-generated mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fewstep.eval.uncertainty import Resamples

KERNEL_BLOCK = 2048  # kernel-matrix columns held at once: memory O(n * KERNEL_BLOCK), not O(n^2)


def mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` of the rows of ``x``, in float64."""
    x = x.double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues set to 0)."""
    w, v = torch.linalg.eigh(m.double())
    return (v * w.clamp_min(0).sqrt()) @ v.T


@dataclass
class FrechetReference:
    """Reference-side terms of FID, computed once: mean, Tr(S_r) and S_r^1/2."""

    mean: torch.Tensor
    trace: float
    sqrt_cov: torch.Tensor

    @classmethod
    def from_moments(cls, mean: torch.Tensor, cov: torch.Tensor) -> FrechetReference:
        cov = cov.double()
        return cls(mean.double(), float(torch.trace(cov)), sqrt_psd(cov))


def frechet_distance(mean: torch.Tensor, cov: torch.Tensor, ref: FrechetReference) -> float:
    """FID between a Gaussian (mean, cov) and the reference (Heusel et al. 2017, eq. 6; module doc)."""
    mean, cov = mean.to(ref.mean), cov.to(ref.mean)
    a = ref.sqrt_cov
    eig = torch.linalg.eigvalsh(a @ cov @ a)
    diff = mean - ref.mean
    return float(diff @ diff + torch.trace(cov) + ref.trace - 2 * eig.clamp_min(0).sqrt().sum())


def fid(features: torch.Tensor, ref: FrechetReference) -> float:
    """FID of the generated ``features [n, d]`` against the reference."""
    return frechet_distance(*mean_cov(features.to(ref.mean.device)), ref)


def fid_replicates(features: torch.Tensor, ref: FrechetReference, resamples: Resamples) -> np.ndarray:
    """FID of each bootstrap resample of the rows of ``features`` (``[B]``)."""
    x = features.to(ref.mean.device, torch.float64)
    idx = torch.as_tensor(resamples.indices, device=x.device)
    return np.array([fid(x[i], ref) for i in idx])


# --------------------------------------------------------------------------------------------
# FID-infinity


def subset_sizes(n: int, dim: int, num_points: int = 10, min_fraction: float = 0.2) -> list[int]:
    """Subset sizes evenly spaced from ``min_fraction * n`` to ``n`` (Chong & Forsyth space N evenly).

    FID is linear in 1/N only well above the feature dimension (they use N >= 5,000 for 2,048-d
    Inception), so no subset is smaller than ``2 * dim`` unless that exceeds ``n / 2``: below
    ``4 * dim`` images the fit spans a short range of 1/N and its interval is wide.
    """
    lo = max(2, int(np.ceil(min_fraction * n)), min(2 * dim, n // 2))
    return sorted({int(round(s)) for s in np.linspace(lo, n, num_points)})


def extrapolate_to_infinity(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares line value = a + b / N; returns ``(a, b)``: a is the value at 1/N = 0."""
    inv = 1.0 / np.asarray(sizes, np.float64)
    b, a = np.polyfit(inv, np.asarray(values, np.float64), 1)
    return float(a), float(b)


def fid_infinity(features: torch.Tensor, ref: FrechetReference, *, num_points: int = 10, min_fraction: float = 0.2,
                 draws: int = 5, seed: int = 0) -> dict:
    """FID extrapolated to infinitely many generated images (Chong & Forsyth 2020, Sec. 3.2).

    At each size of :func:`subset_sizes`, FID is averaged over ``draws`` random subsets (without
    replacement; one draw leaves most of the estimate's noise in the subset choice: at 1,000
    embedded images its spread over draws is ~4.8 FID with 1 draw, ~1.3 with 5), then a + b / N is
    fitted by least squares. The reference side stays at its own size, so its share of the
    small-sample bias remains (the real-images floor row measures it).

    Returns:
        ``{"value": a, "slope": b, "sizes": [...], "fids": [...]}``.
    """
    x = features.to(ref.mean.device, torch.float64)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    sizes = subset_sizes(n, x.shape[1], num_points, min_fraction)
    fids = [float(np.mean([fid(x[torch.randperm(n, generator=gen)[:s].to(x.device)], ref) for _ in range(draws)]))
            for s in sizes]
    if len(sizes) < 2:
        return {"value": float("nan"), "slope": float("nan"), "sizes": sizes, "fids": fids}
    a, b = extrapolate_to_infinity(sizes, fids)
    return {"value": a, "slope": b, "sizes": sizes, "fids": fids}


def fid_infinity_replicates(features: torch.Tensor, ref: FrechetReference, resamples: Resamples, *,
                            seed: int = 0, **kwargs) -> np.ndarray:
    """:func:`fid_infinity` of each resample (subsets drawn from the resample's rows), ``[B]``."""
    x = features.to(ref.mean.device, torch.float64)
    return np.array([fid_infinity(x[torch.as_tensor(i, device=x.device)], ref, seed=seed + 1 + b, **kwargs)["value"]
                     for b, i in enumerate(resamples.indices)])


# --------------------------------------------------------------------------------------------
# KID


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018; torchmetrics' and torch-fidelity's default)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


@dataclass
class KernelReference:
    """Reference side of KID: its features and the mean kernel value over distinct reference pairs."""

    features: torch.Tensor  # float64 [m, d]
    mean_within: float  # 1 / (m (m - 1)) sum_{i != j} k(y_i, y_j)

    @classmethod
    def from_features(cls, y: torch.Tensor) -> KernelReference:
        y = y.double()
        m = y.shape[0]
        if m < 2:
            raise ValueError(f"KID needs at least 2 reference features, got {m}")
        total = sum(float(polynomial_kernel(y, y[c:c + KERNEL_BLOCK]).sum()) for c in range(0, m, KERNEL_BLOCK))
        diag = float(((y * y).sum(1) / y.shape[1] + 1).pow(3).sum())
        return cls(y, (total - diag) / (m * (m - 1)))


def kid_weighted(features: torch.Tensor, ref: KernelReference, weights: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 (cubic kernel) for each row of ``weights [B, n]`` (counts of each generated image).

    With weights w (a resample's counts) the generated-generated term averages k over pairs of
    distinct original images, sum_{a != b} w_a w_b k_ab / (W^2 - sum w_a^2), and the cross term is
    sum_a w_a sum_j k(x_a, y_j) / (W m). All-ones weights give the standard unbiased estimator.
    """
    x = features.to(ref.features.device, torch.float64)
    w = torch.as_tensor(np.atleast_2d(weights), dtype=torch.float64, device=x.device)
    n, m = x.shape[0], ref.features.shape[0]
    if w.shape[1] != n:
        raise ValueError(f"weights for {w.shape[1]} images, features of {n}")
    wk = torch.empty_like(w)  # (w K_xx), one block of columns at a time
    cross = torch.zeros(n, dtype=torch.float64, device=x.device)  # sum_j k(x_a, y_j)
    for c in range(0, n, KERNEL_BLOCK):
        wk[:, c:c + KERNEL_BLOCK] = w @ polynomial_kernel(x, x[c:c + KERNEL_BLOCK])
    for c in range(0, m, KERNEL_BLOCK):
        cross += polynomial_kernel(x, ref.features[c:c + KERNEL_BLOCK]).sum(1)
    diag = ((x * x).sum(1) / x.shape[1] + 1).pow(3)
    total = w.sum(1)
    pairs = total * total - (w * w).sum(1)  # 0 when a resample repeats one image n times: no distinct pair
    within = ((wk * w).sum(1) - (w * w * diag).sum(1)) / pairs.clamp_min(1e-300)
    within = torch.where(pairs > 0, within, torch.full_like(within, float("nan")))
    between = (w * cross).sum(1) / (total * m)
    return (within + ref.mean_within - 2 * between).cpu().numpy()


def kid(features: torch.Tensor, ref: KernelReference) -> float:
    """KID of all generated ``features`` against the reference sample (unbiased MMD^2)."""
    return float(kid_weighted(features, ref, np.ones((1, features.shape[0])))[0])
