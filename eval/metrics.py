"""FID and KID with a chosen feature network: streaming, float64 statistics, cached reference stats.

Our pipeline extracts features once per batch with a :class:`eval.features.FeatureNet` and feeds them
to torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` through a pass-through
feature module, so one pass serves both metrics, and the reference side is a small
:class:`FeatureStats` object cached on disk under a caller-given key (the reference pass runs once).
EDM2's ``calculate_stats_for_iterable`` is the model: one code path for reference and generated sets.

Conventions (state them in every report; numbers from different protocols are not comparable):

- FID (Heusel et al. 2017): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2); torchmetrics keeps
  running sums of x and x x^T in float64, so memory is O(d^2) however many images stream through.
  Covariances use the unbiased (n - 1) normaliser. With fewer images than feature dimensions the
  covariance is rank-deficient and FID is biased upwards (>= 2048 images for Inception). FID also
  falls with the number of images: compare only at equal counts.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over ``kid_subsets`` random subsets of ``kid_subset_size``.
  torchmetrics keeps *every* feature for KID; we keep a uniform reservoir sample (Vitter's
  Algorithm R) of at most ``kid_max_features`` per side, so memory stays bounded; KID is then
  estimated on that sample (exact whenever fewer images than the cap stream through). KID is not
  scale-free: embedded-feature KIDs are large numbers and only comparable with each other.
- Features are extracted in the network's dtype (float32) and every statistic is float64
  (``set_dtype(torch.float64)`` on the metrics). Images are quantised to uint8 first.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fewstep.eval.features import (  # noqa: F401  (re-exported: the metrics API in one import)
    FEATURE_NETS,
    INCEPTION_WEIGHTS_FILE,
    FeatureNet,
    MetricsError,
    MissingWeightsError,
    inception_weights_path,
    load_feature_net,
)
from fewstep.eval.files import atomic_write
from fewstep.eval.images import uint8_batches

# --------------------------------------------------------------------------------------------
# Statistics


class _Passthrough(nn.Module):
    """A torchmetrics ``feature`` module whose "images" are already features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _fid_metric(num_features: int):
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=_Passthrough(num_features), reset_real_features=False).set_dtype(torch.float64)


@dataclass
class FeatureStats:
    """Sufficient statistics of one image set under one feature network.

    Attributes:
        feature_net: the :attr:`FeatureNet.identity` the features came from.
        num_images: images seen.
        features_sum: float64 ``[d]``, sum of feature vectors (torchmetrics' FID state layout).
        features_cov_sum: float64 ``[d, d]``, sum of outer products x x^T.
        kid_features: float32 ``[k, d]``, a uniform sample of at most ``kid_max_features`` feature
            vectors (all of them when fewer images were seen).
        key: the cache key these stats were stored under ("" if never cached).
    """

    feature_net: str
    num_images: int
    features_sum: torch.Tensor
    features_cov_sum: torch.Tensor
    kid_features: torch.Tensor
    key: str = ""

    @property
    def num_features(self) -> int:
        return int(self.features_sum.shape[0])

    def mean(self) -> torch.Tensor:
        """Feature mean, float64 ``[d]``."""
        return self.features_sum / self.num_images

    def cov(self) -> torch.Tensor:
        """Unbiased feature covariance, float64 ``[d, d]`` (the same formula torchmetrics uses)."""
        mu = self.mean()
        return (self.features_cov_sum - self.num_images * torch.outer(mu, mu)) / (self.num_images - 1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to a ``.safetensors`` file atomically (temp file, then ``os.replace``)."""
        from safetensors.torch import save

        tensors = {
            "features_sum": self.features_sum.contiguous(),
            "features_cov_sum": self.features_cov_sum.contiguous(),
            "kid_features": self.kid_features.contiguous(),
        }
        meta = {"feature_net": self.feature_net, "num_images": str(self.num_images), "key": self.key}
        return atomic_write(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        return cls(meta["feature_net"], int(meta["num_images"]), t["features_sum"], t["features_cov_sum"],
                   t["kid_features"], meta.get("key", ""))


class _Reservoir:
    """Uniform sample of at most ``capacity`` rows from a stream (Vitter 1985, Algorithm R)."""

    def __init__(self, capacity: int, dim: int, seed: int):
        if capacity < 2:
            raise ValueError(f"kid_max_features must be >= 2, got {capacity}")
        self.capacity = capacity
        self.rows = torch.empty(0, dim, dtype=torch.float32)
        self.seen = 0
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().to("cpu", torch.float32)
        room = max(0, self.capacity - self.rows.shape[0])
        if room:
            self.rows = torch.cat([self.rows, x[:room]])
            self.seen += min(room, x.shape[0])
            x = x[room:]
        if not x.shape[0]:
            return
        # Row number t (0-based, over the whole stream) replaces slot j ~ U{0..t} when j < capacity.
        t = torch.arange(self.seen, self.seen + x.shape[0], dtype=torch.float64)
        j = (torch.rand(x.shape[0], generator=self.gen, dtype=torch.float64) * (t + 1)).floor().long()
        self.seen += x.shape[0]
        for i in torch.nonzero(j < self.capacity).flatten().tolist():  # in stream order: later rows win
            self.rows[j[i]] = x[i]


def compute_stats(
    images: Iterable,
    feature_net: FeatureNet,
    *,
    batch_size: int = 64,
    kid_max_features: int = 10_000,
    seed: int = 0,
    progress: bool = False,
    key: str = "",
) -> FeatureStats:
    """Stream images through ``feature_net`` into :class:`FeatureStats` (one code path for both sides).

    Args:
        images: iterable of images or batches (see :func:`eval.images.uint8_batches`).
        feature_net: from :func:`load_feature_net`.
        batch_size: images per feature-network call.
        kid_max_features: size of the KID reservoir sample; memory is O(d^2 + kid_max_features d).
        seed: seeds the reservoir sampling.
        progress: show a tqdm counter.
        key: recorded in the stats (see :func:`compute_reference_stats`).

    Returns:
        The statistics. Raises MetricsError if fewer than 2 images arrived.
    """
    fid = _fid_metric(feature_net.num_features)
    res = _Reservoir(kid_max_features, feature_net.num_features, seed)
    batches = uint8_batches(images, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="features", unit="batch")
    for batch in batches:
        feats = feature_net(batch).detach().cpu()
        fid.update(feats, real=True)  # torchmetrics adds sum(x) and x^T x in float64
        res.add(feats)
    n = int(fid.real_features_num_samples)
    if n < 2:
        raise MetricsError(f"FID/KID need at least 2 images per set, got {n}")
    return FeatureStats(feature_net.identity, n, fid.real_features_sum.clone(), fid.real_features_cov_sum.clone(), res.rows, key)


def cache_path(cache_dir: str | os.PathLike, key: str, feature_net: FeatureNet, kid_max_features: int) -> Path:
    """File that holds the reference statistics for ``key`` under ``feature_net`` in ``cache_dir``."""
    full = f"{key}|features={feature_net.identity}|kid_max={kid_max_features}"
    return Path(cache_dir) / f"ref-{hashlib.sha256(full.encode()).hexdigest()[:24]}.safetensors"


def compute_reference_stats(
    images: Iterable,
    feature_net: FeatureNet,
    cache_dir: str | os.PathLike | None,
    key: str,
    **kwargs,
) -> FeatureStats:
    """Reference statistics, computed once per (key, feature network) and cached on disk.

    Args:
        images: the reference images; only iterated on a cache miss, so pass a lazy generator.
        feature_net: from :func:`load_feature_net`; its identity is part of the cache key.
        cache_dir: directory of cached statistics; None disables caching.
        key: describes the reference source completely, e.g.
            ``"procedural:seed=12345:n=5000"``. Two sources must never share a key.
        **kwargs: passed to :func:`compute_stats` (``batch_size``, ``kid_max_features``, ...).

    Returns:
        The (possibly cached) statistics.
    """
    if not key:
        raise ValueError("a non-empty key describing the reference images is required")
    path = None
    if cache_dir is not None:
        path = cache_path(cache_dir, key, feature_net, kwargs.get("kid_max_features", 10_000))
        if path.is_file():
            stats = FeatureStats.load(path)
            if stats.key == key and stats.feature_net == feature_net.identity:
                return stats
            warnings.warn(f"reference cache {path} holds other statistics ({stats.key!r}); recomputing", stacklevel=2)
    stats = compute_stats(images, feature_net, key=key, **kwargs)
    if path is not None:
        stats.save(path)
    return stats


# --------------------------------------------------------------------------------------------
# Distances


def fid_kid_from_stats(
    generated: FeatureStats,
    reference: FeatureStats,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict:
    """FID and KID between two :class:`FeatureStats` (torchmetrics formulas, float64).

    Args:
        generated, reference: statistics from the same feature network.
        kid_subsets: number of random subsets KID is averaged over.
        kid_subset_size: images per subset; capped at the smaller reservoir size (reported).
        seed: seeds the subset draws, so KID is reproducible.

    Returns:
        ``{"fid", "kid_mean", "kid_std", "kid_subset_size", "kid_subsets", "num_generated",
        "num_reference", "features"}``; ``kid_*`` is NaN when a side has fewer than 2 features.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    if generated.feature_net != reference.feature_net:
        raise MetricsError(
            f"statistics come from different feature networks: generated {generated.feature_net!r}, "
            f"reference {reference.feature_net!r}"
        )
    d = reference.num_features
    fid = _fid_metric(d)
    fid.merge_state({
        "real_features_sum": reference.features_sum.double(),
        "real_features_cov_sum": reference.features_cov_sum.double(),
        "real_features_num_samples": torch.tensor(reference.num_images),
        "fake_features_sum": generated.features_sum.double(),
        "fake_features_cov_sum": generated.features_cov_sum.double(),
        "fake_features_num_samples": torch.tensor(generated.num_images),
    })
    # An empty update (adds zero to every sum) marks the metric as updated and records float64 as
    # the output dtype; the statistics themselves arrive through the public merge_state.
    fid.update(torch.zeros(0, d, dtype=torch.float64), real=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        fid_value = float(fid.compute())
        size = min(kid_subset_size, reference.kid_features.shape[0], generated.kid_features.shape[0])
        kid_mean = kid_std = math.nan
        if size >= 2:
            kid = KernelInceptionDistance(feature=_Passthrough(d), subsets=kid_subsets, subset_size=size).set_dtype(torch.float64)
            kid.update(reference.kid_features.double(), real=True)
            kid.update(generated.kid_features.double(), real=False)
            with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global RNG
                torch.manual_seed(seed)
                m, s = kid.compute()
            kid_mean, kid_std = float(m), float(s)
    if max(generated.num_images, reference.num_images) < d:
        warnings.warn(f"FID from fewer images than feature dimensions ({d}): covariances are rank-deficient", stacklevel=2)
    return {
        "fid": fid_value, "kid_mean": kid_mean, "kid_std": kid_std, "kid_subset_size": size, "kid_subsets": kid_subsets,
        "num_generated": generated.num_images, "num_reference": reference.num_images, "features": reference.feature_net,
    }


def fid_kid(
    generated: Iterable,
    reference: FeatureStats,
    feature_net: FeatureNet,
    *,
    batch_size: int = 64,
    kid_max_features: int = 10_000,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Stream generated images and compare them with cached reference statistics.

    Args:
        generated: iterable of generated images / batches.
        reference: from :func:`compute_reference_stats` with the same ``feature_net``.
        feature_net: from :func:`load_feature_net`.
        batch_size, kid_max_features, progress: see :func:`compute_stats`.
        kid_subsets, kid_subset_size, seed: see :func:`fid_kid_from_stats`.

    Returns:
        The dict of :func:`fid_kid_from_stats`.
    """
    if reference.feature_net != feature_net.identity:
        raise MetricsError(f"reference statistics were computed with {reference.feature_net!r}, not {feature_net.identity!r}")
    gen = compute_stats(generated, feature_net, batch_size=batch_size, kid_max_features=kid_max_features, seed=seed + 1,
                        progress=progress)
    return fid_kid_from_stats(gen, reference, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)


def frechet_distance_scipy(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """FID from means and covariances with ``scipy.linalg.sqrtm`` (pytorch-fid's formulation).

    An implementation independent of torchmetrics (which uses eigenvalues of S1 S2), used to
    cross-check it. Follows pytorch-fid: if the product is near-singular, offset both diagonals
    by 1e-6; drop a negligible imaginary part from sqrtm.

    Returns:
        d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2).
    """
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    covmean = linalg.sqrtm(cov1 @ cov2)  # ReLU features with dead units make S1 S2 singular: warns, still accurate
    if not np.isfinite(covmean).all():
        off = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def stats_summary(stats: FeatureStats) -> str:
    """One-line JSON description of a stats object (for logs and reports)."""
    return json.dumps({"key": stats.key, "features": stats.feature_net, "num_images": stats.num_images,
                       "kid_sample": int(stats.kid_features.shape[0])})
