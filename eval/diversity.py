"""Diversity and coverage in feature space: what a collapsed few-step student loses first.

- Per-prompt diversity: the mean pairwise feature distance between K images of one prompt drawn
  with K different seeds (the intra-prompt spread of DMD2-style collapse checks). A model that
  ignores its noise gives 0, however good each image is.
- Precision and recall (Kynkaenniemi et al., NeurIPS 2019, Sec. 2, eq. 1-3): the real and the
  generated manifolds are unions of balls around each feature vector, with radius the distance to
  its k-th nearest neighbour in its own set (k = 3). Precision: share of generated samples inside
  the real manifold; recall: share of real samples inside the generated manifold.

torch-fidelity 0.4 implements the same precision/recall (``metric_prc.prc_features_to_metric``, on
feature tensors, same k-th-neighbour convention) but returns only the two means. The report needs
the per-sample indicators, so that the bootstrap can resample them with the same indices in every
row; they are computed here and the test suite checks their means against torch-fidelity's.
"""
from __future__ import annotations

import torch

DEFAULT_K = 3  # Kynkaenniemi et al. 2019's recommended neighbourhood size


def pairwise_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[len(x), len(y)]`` in float64, computed exactly (identical rows give 0)."""
    return torch.cdist(x.double(), y.double(), compute_mode="donot_use_mm_for_euclid_dist")


def kth_neighbour_radii(x: torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest *other* row (eq. 1's NN_k radius)."""
    if x.shape[0] <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {x.shape[0]}")
    return pairwise_distances(x, x).kthvalue(k + 1, dim=1).values  # the smallest (k=0th) is the row itself


def manifold_membership(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """bool ``[len(queries)]``: query q lies in some ball ||q - s_j|| <= radius_j (eq. 2's f(phi, Phi))."""
    return (pairwise_distances(queries, support) <= radii.double()[None]).any(dim=1)


def precision_recall_indicators(generated: torch.Tensor, real: torch.Tensor,
                                k: int = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample precision and recall indicators (Kynkaenniemi et al. 2019, eq. 3).

    Returns:
        ``(in_real [n_generated], in_generated [n_real])``, booleans whose means are precision and
        recall.
    """
    in_real = manifold_membership(generated, real, kth_neighbour_radii(real, k))
    in_generated = manifold_membership(real, generated, kth_neighbour_radii(generated, k))
    return in_real, in_generated


def per_prompt_diversity(features: torch.Tensor) -> torch.Tensor:
    """Mean pairwise distance among the K images of each prompt: ``[P, K, d]`` -> ``[P]`` (float64)."""
    if features.ndim != 3 or features.shape[1] < 2:
        raise ValueError(f"expected features [prompts, seeds >= 2, dim], got {tuple(features.shape)}")
    kk = features.shape[1]
    d = torch.stack([pairwise_distances(f, f) for f in features])
    return d.sum((1, 2)) / (kk * (kk - 1))  # the zero diagonal is left out of the mean
