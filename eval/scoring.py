"""Score the rows of a sweep from per-image measurements: values, intervals, paired differences.

A row's images are generated from prompt i with seed i, so each per-image measurement (feature
vector, CLIP cosine, attribute verdicts, object count) lines up across rows. :func:`score` turns a
row's :class:`RowSamples` into point values plus bootstrap replicates drawn with the sweep's one
:class:`Bootstrap`; :func:`row_fields` writes them into a report row (values and 95 % intervals)
and :func:`versus` gives the paired difference of two rows with its interval. Sources of
uncertainty, per metric:

- over generated images (``Bootstrap.images``): FID, FID-infinity, KID, CLIP score, attribute
  accuracy, object counts, precision;
- over reference images (``Bootstrap.reference``): recall (a real image's indicator depends on the
  whole generated set, whose k-NN radii a resample with repeated rows would shrink to zero);
- over prompts (``Bootstrap.prompts``): per-prompt diversity.
The reference statistics themselves are fixed: every row is compared with the same reference.

Calibration, measured on the embedded domain (1,000 images per set, 30 independent sets of real
renders and of a brightened, enlarged variant): the bootstrap spread of a paired FID difference
was 4.7 against a true spread of 4.8, so the paired column can be read as it stands; a single
row's FID interval came out about 1.6x too wide (4.0 against 2.5), because a resample that
repeats images has fewer distinct ones and FID's small-sample bias fluctuates more at a smaller
effective size. Claims rest on the paired column; a single row's FID interval is conservative.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fewstep.eval.distances import (FrechetReference, KernelReference, fid, fid_infinity, fid_infinity_replicates,
                                    fid_replicates, kid_weighted)
from fewstep.eval.diversity import DEFAULT_K, per_prompt_diversity, precision_recall_indicators
from fewstep.eval.files import atomic_write
from fewstep.eval.metrics import FeatureStats
from fewstep.eval.objects import all_attributes_right
from fewstep.eval.uncertainty import (LEVEL, Estimate, Resamples, draw_resamples, interval, mean_replicates,
                                      paired_difference)

NUM_RESAMPLES = 200  # bootstrap resamples of every metric
FID_INFINITY_RESAMPLES = 50  # FID-infinity costs 50 FIDs per resample: its interval uses the first 50
SEED = 20240  # one fixed draw: the same resampled indices for every row and every sweep of this size


@dataclass
class RowSamples:
    """Per-image measurements of one row (position i: prompt i, seed i) kept until the sweep is scored."""

    features: torch.Tensor  # [n, d] feature vectors of the generated images
    clip: np.ndarray | None = None  # [n] cos(image, prompt)
    correct: np.ndarray | None = None  # bool [n, attributes]: the classifier's verdict per attribute
    attributes: list[str] = field(default_factory=list)  # column names of ``correct``
    objects: np.ndarray | None = None  # int [n]: objects counted in each image
    diversity_features: torch.Tensor | None = None  # [prompts, seeds, d]: K seeds of each diversity prompt

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """Write as ``.npz`` (so rows of different reports can be compared paired later)."""
        arrays = {"features": self.features.float().numpy(), "attributes": np.array(self.attributes, dtype=str)}
        for name in ("clip", "correct", "objects"):
            if getattr(self, name) is not None:
                arrays[name] = np.asarray(getattr(self, name))
        if self.diversity_features is not None:
            arrays["diversity_features"] = self.diversity_features.float().numpy()
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RowSamples:
        with np.load(path) as z:
            get = {k: z[k] for k in z.files}
        div = get.get("diversity_features")
        return cls(torch.from_numpy(get["features"]), get.get("clip"), get.get("correct"),
                   [str(a) for a in get["attributes"]], get.get("objects"),
                   torch.from_numpy(div) if div is not None else None)


@dataclass
class Reference:
    """Everything a row is compared with, precomputed once per sweep."""

    stats: FeatureStats
    frechet: FrechetReference
    kernel: KernelReference
    pr_features: torch.Tensor  # [m, d] reference sample for precision / recall (m ~ images per row)

    @classmethod
    def build(cls, stats: FeatureStats, pr_size: int, seed: int = SEED, device: str | torch.device = "cpu") -> Reference:
        """Moments and kernel terms of ``stats``; precision/recall get ``pr_size`` of its sampled features
        (Kynkaenniemi et al. compare sets of equal size; more reference than generated samples would
        shrink the real balls and raise recall)."""
        sample = stats.kid_features
        pick = torch.randperm(sample.shape[0], generator=torch.Generator().manual_seed(seed))[:pr_size]
        return cls(stats, FrechetReference.from_moments(stats.mean().to(device), stats.cov().to(device)),
                   KernelReference.from_features(sample.to(device)), sample[pick.sort().values])


@dataclass(frozen=True)
class Bootstrap:
    """The sweep's resamples: over image positions, reference sample rows and diversity prompts."""

    images: Resamples
    reference: Resamples
    prompts: Resamples | None
    fid_infinity_resamples: int = FID_INFINITY_RESAMPLES
    k: int = DEFAULT_K  # precision / recall neighbourhood

    @classmethod
    def create(cls, n: int, reference_size: int, prompts: int = 0, num: int = NUM_RESAMPLES, seed: int = SEED,
               fid_infinity_resamples: int = FID_INFINITY_RESAMPLES, k: int = DEFAULT_K) -> Bootstrap:
        return cls(draw_resamples(n, num, seed), draw_resamples(reference_size, num, seed + 1),
                   draw_resamples(prompts, num, seed + 2) if prompts else None,
                   min(fid_infinity_resamples, num), k)

    def describe(self) -> str:
        return (f"{self.images.num} bootstrap resamples (seed {self.images.seed}) of the {self.images.n} image "
                f"positions, the same in every row (paired); {int(LEVEL * 100)} % percentile intervals re-centred "
                f"on the value; FID-infinity from the first {self.fid_infinity_resamples}; recall resamples the "
                f"{self.reference.n} reference samples, diversity the prompts")


@dataclass
class Scored:
    """Point values and bootstrap replicates of one row, keyed by flattened metric name."""

    values: dict[str, float]
    replicates: dict[str, np.ndarray]

    def estimate(self, name: str) -> Estimate:
        return interval(self.values[name], self.replicates[name])


def _put(scored: Scored, name: str, value: float, replicates: np.ndarray) -> None:
    scored.values[name] = float(value)
    scored.replicates[name] = np.asarray(replicates, np.float64)


def score(samples: RowSamples, ref: Reference, boot: Bootstrap) -> Scored:
    """Every metric of one row with its bootstrap replicates (module docstring for what is resampled)."""
    if samples.n != boot.images.n:
        raise ValueError(f"row has {samples.n} images, the bootstrap resamples {boot.images.n}")
    out = Scored({}, {})
    x, imgs = samples.features, boot.images
    _put(out, "fid", fid(x, ref.frechet), fid_replicates(x, ref.frechet, imgs))
    head = Resamples(imgs.indices[:boot.fid_infinity_resamples], imgs.seed)
    _put(out, "fid_infinity", fid_infinity(x, ref.frechet, seed=imgs.seed)["value"],
         fid_infinity_replicates(x, ref.frechet, head, seed=imgs.seed))
    kids = kid_weighted(x, ref.kernel, np.vstack([np.ones(samples.n), imgs.counts()]))
    _put(out, "kid_mean", kids[0], kids[1:])
    if samples.clip is not None:
        _put(out, "clip_score", np.mean(samples.clip), mean_replicates(samples.clip, imgs))
    if samples.correct is not None:
        correct = np.asarray(samples.correct, bool)
        per_attr = mean_replicates(correct, imgs)
        for j, a in enumerate(samples.attributes):
            _put(out, f"attribute_accuracy.{a}", correct[:, j].mean(), per_attr[:, j])
        _put(out, "attribute_accuracy.mean", correct.mean(), per_attr.mean(1))
        right = correct.all(1) if samples.objects is None else all_attributes_right(correct, samples.objects)
        _put(out, "attribute_accuracy.all", right.mean(), mean_replicates(right, imgs))
        if samples.objects is not None:
            _put(out, "attribute_accuracy_ignoring_count", correct.all(1).mean(), mean_replicates(correct.all(1), imgs))
    if samples.objects is not None:
        counts = np.asarray(samples.objects)
        for name, hit in (("one", counts == 1), ("none", counts == 0), ("several", counts >= 2)):
            _put(out, f"objects.{name}", hit.mean(), mean_replicates(hit, imgs))
    if min(samples.n, ref.pr_features.shape[0]) > boot.k:
        in_real, in_gen = precision_recall_indicators(x, ref.pr_features, boot.k)
        _put(out, "precision", in_real.double().mean(), mean_replicates(in_real.numpy(), imgs))
        _put(out, "recall", in_gen.double().mean(), mean_replicates(in_gen.numpy(), boot.reference))
    if samples.diversity_features is not None and boot.prompts is not None:
        div = per_prompt_diversity(samples.diversity_features).numpy()
        _put(out, "diversity", div.mean(), mean_replicates(div, boot.prompts))
    return out


def _nest(row: dict, name: str, value: float) -> None:
    head, _, tail = name.partition(".")
    if tail:
        row.setdefault(head, {})[tail] = value
    else:
        row[name] = value


def row_fields(scored: Scored) -> dict:
    """Report-row fields: nested values (``attribute_accuracy: {...}``), ``kid_std`` (the bootstrap
    spread over generated images), ``clip_score_x100`` and ``ci: {metric: [lo, hi]}``."""
    row: dict = {}
    for name, value in scored.values.items():
        _nest(row, name, value)
    kids = scored.replicates["kid_mean"]
    kids = kids[np.isfinite(kids)]
    row["kid_std"] = float(kids.std(ddof=1)) if kids.size > 1 else float("nan")
    if "clip_score" in row:
        row["clip_score_x100"] = 100 * row["clip_score"]
    row["ci"] = {name: [scored.estimate(name).lo, scored.estimate(name).hi] for name in scored.values}
    return row


def versus(scored: Scored, base: Scored) -> dict:
    """Paired difference ``row - base`` of every metric both rows have: ``{metric: {"diff", "lo", "hi"}}``."""
    out = {}
    for name in scored.values:
        if name in base.values:
            e = paired_difference(scored.values[name], scored.replicates[name], base.values[name], base.replicates[name])
            out[name] = {"diff": e.value, "lo": e.lo, "hi": e.hi}
    return out
