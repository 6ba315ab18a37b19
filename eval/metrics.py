"""FID / KID inputs: a chosen feature network, streaming float64 reference statistics, a cache.

The reference side (thousands of held-out images, the same for every row of a sweep) is streamed
through :func:`compute_stats` into a small :class:`FeatureStats` (running float64 sums of x and
x x^T, and a bounded uniform sample of feature vectors for KID / precision-recall), cached on disk
under a key that names the source completely (EDM2's ``calculate_stats_for_iterable`` is the model:
one code path for every image set). The generated side of a row is kept as its feature matrix
(n x d floats: 0.5 MB for 1,000 embedded images, 8 MB for 1,000 Inception ones), because the
bootstrap, FID-infinity and precision/recall resample its rows. The distances themselves are the
pure functions of :mod:`eval.distances`.

Conventions (state them in every report; numbers from different protocols are not comparable):

- FID (Heusel et al. 2017) with unbiased covariances; with fewer images than feature dimensions
  the covariance is rank-deficient and FID is biased upwards. FID falls with the number of images:
  compare only at equal counts, or use FID-infinity (:func:`eval.distances.fid_infinity`).
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic kernel between all generated
  features and the reference sample. The reference sample is a uniform reservoir (Vitter's
  Algorithm R) of at most ``kid_max_features`` vectors, exact whenever fewer images stream through.
  KID is not scale-free: embedded-feature KIDs are large numbers, comparable only with each other.
- Features are extracted in the network's dtype (float32), statistics are float64, and images are
  quantised to uint8 first.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from fewstep.eval.distances import FrechetReference, KernelReference, fid, kid
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

STATS_FORMAT = 2  # part of every cache key: bump when FeatureStats' meaning changes

# --------------------------------------------------------------------------------------------
# Statistics


@dataclass
class FeatureStats:
    """Sufficient statistics of one image set under one feature network.

    Attributes:
        feature_net: the :attr:`FeatureNet.identity` the features came from.
        num_images: images seen.
        features_sum: float64 ``[d]``, sum of feature vectors.
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
        """Unbiased feature covariance, float64 ``[d, d]``."""
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


def _feature_batches(images: Iterable, feature_net: FeatureNet, batch_size: int, progress: bool):
    batches = uint8_batches(images, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="features", unit="batch")
    for batch in batches:
        yield feature_net(batch).detach().cpu()


def extract_features(images: Iterable, feature_net: FeatureNet, *, batch_size: int = 64,
                     progress: bool = False) -> torch.Tensor:
    """Features ``[n, d]`` (float32, CPU) of a stream of images, one row per image in stream order."""
    feats = list(_feature_batches(images, feature_net, batch_size, progress))
    if not feats:
        raise MetricsError("no images to extract features from")
    return torch.cat(feats)


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
    """Stream images through ``feature_net`` into :class:`FeatureStats`; memory O(d^2 + kid_max_features d).

    Args:
        images: iterable of images or batches (see :func:`eval.images.uint8_batches`).
        feature_net: from :func:`load_feature_net`.
        batch_size: images per feature-network call.
        kid_max_features: size of the uniform feature sample kept for KID and precision/recall.
        seed: seeds the reservoir sampling.
        progress: show a tqdm counter.
        key: recorded in the stats (see :func:`compute_reference_stats`).

    Returns:
        The statistics. Raises MetricsError if fewer than 2 images arrived.
    """
    d = feature_net.num_features
    total, outer = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    res = _Reservoir(kid_max_features, d, seed)
    n = 0
    for feats in _feature_batches(images, feature_net, batch_size, progress):
        x = feats.double()
        total += x.sum(0)
        outer += x.T @ x
        res.add(feats)
        n += x.shape[0]
    if n < 2:
        raise MetricsError(f"FID/KID need at least 2 images per set, got {n}")
    return FeatureStats(feature_net.identity, n, total, outer, res.rows, key)


def cache_path(cache_dir: str | os.PathLike, key: str, feature_net: FeatureNet | str, kid_max_features: int) -> Path:
    """File that holds the reference statistics for ``key`` under ``feature_net`` in ``cache_dir``.

    The name hashes the key (which names the image source, e.g. the renderer version), the feature
    network's identity (its weights' fingerprint; a network or its identity string), the sample size
    and :data:`STATS_FORMAT`.
    """
    identity = feature_net if isinstance(feature_net, str) else feature_net.identity
    full = f"{key}|features={identity}|kid_max={kid_max_features}|stats={STATS_FORMAT}"
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
            ``"procedural:renderer=2:seed=12345:n=5000"``. Two sources must never share a key.
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


def feature_health(stats: FeatureStats, rel_tol: float = 1e-10) -> dict:
    """Dead dimensions and covariance rank of a feature set (a degenerate feature network warns).

    A dimension is dead when its variance is at most ``rel_tol`` times the largest variance (a ReLU
    unit that never fires); the rank counts covariance eigenvalues above ``rel_tol`` times the
    largest. Returns ``{"dimension", "dead_dimensions", "covariance_rank", "warning"}``; ``warning``
    is None for a healthy network.
    """
    cov = stats.cov()
    var = torch.diagonal(cov)
    eig = torch.linalg.eigvalsh(cov)
    top = float(eig.max()) if eig.numel() else 0.0
    d = stats.num_features
    dead = int((var <= rel_tol * float(var.max())).sum())
    rank = int((eig > rel_tol * top).sum())
    warning = None
    if dead or rank < d:
        warning = (f"degenerate features ({stats.feature_net}): {dead} of {d} dimensions never vary and the "
                   f"covariance has rank {rank} < {d} on {stats.num_images} reference images; FID only sees "
                   f"the {rank}-dimensional subspace the reference spans")
    return {"dimension": d, "dead_dimensions": dead, "covariance_rank": rank, "warning": warning}


# --------------------------------------------------------------------------------------------
# One-call distances


def fid_kid(generated: Iterable, reference: FeatureStats, feature_net: FeatureNet, *, batch_size: int = 64,
            progress: bool = False) -> dict:
    """FID and KID of a stream of generated images against cached reference statistics.

    Returns:
        ``{"fid", "kid", "num_generated", "num_reference", "features"}``.
    """
    if reference.feature_net != feature_net.identity:
        raise MetricsError(f"reference statistics were computed with {reference.feature_net!r}, not {feature_net.identity!r}")
    x = extract_features(generated, feature_net, batch_size=batch_size, progress=progress)
    if x.shape[0] < 2:
        raise MetricsError(f"FID/KID need at least 2 images per set, got {x.shape[0]}")
    return {"fid": fid(x, FrechetReference.from_moments(reference.mean(), reference.cov())),
            "kid": kid(x, KernelReference.from_features(reference.kid_features)),
            "num_generated": int(x.shape[0]), "num_reference": reference.num_images, "features": reference.feature_net}
