"""The live quality signal: a cheap, fixed-seed evaluation of the student at every validation.

``fewstep train`` builds one :class:`MetricValidator` before training (metric networks and FID
reference statistics loaded once) and hands it to the loop (``distill.loop.Trainer``), which knows
no metric: it calls :meth:`MetricValidator.measure` at every validation, keeps the best value and
the alarm (``distill.watch``), and calls :meth:`MetricValidator.keep_best` when a validation beats
the best so far.

What is measured, with the sweep's own pieces (``pipelines.evaluate.measure``; no latency, no
diversity, no bootstrap): ``validation.num_prompts`` images per step count, prompt i with generator
seed i at every validation, so two validations differ only in the weights (paired). On procedural
prompts (held-out captions of their own split, seed 888, disjoint from the prompts ``fewstep eval``
and the benchmarks score, seed 777: a ``best/`` chosen on them is not chosen on the test prompts)
attribute accuracy ``all`` (every attribute right and exactly one object), FID with the
run's ``eval.features`` against ``eval.reference`` (the same cached statistics as the eval) and CLIP
score (``eval.clip``); on other prompts FID and CLIP score. FID of a few hundred images is biased
upwards (more dimensions than images for Inception features): compare validations of one run with
each other, not with the eval's FID at another number of images.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fewstep.distill.config import RunConfig, procedural_validation, watched_metric
from fewstep.distill.files import atomic_dir, atomic_write
from fewstep.distill.sampling import apply_recipe, generate
from fewstep.distill.watch import BEST_DIR
from fewstep.pipelines.errors import EvalError
from fewstep.pipelines.eval_inputs import (IMAGE_SUFFIXES, PROMPT_SEED, VALIDATION_SEED, image_files,
                                           procedural_prompts, prompt_labels, reference_source)
from fewstep.pipelines.evaluate import Prepared, SweepSpec, collect, measure, reference_cache_dir

BEST_FILE = "best.json"  # in runs/<name>/best: the step and metrics of the validation it was exported at


def check_inputs(cfg: RunConfig) -> None:
    """What the metrics read from disk, checked before the teacher is loaded: the reference folder,
    the Inception weights, the CLIP spec (raises EvalError / MetricsError / ClipError, one line each)."""
    from fewstep.eval.clip import parse_clip_spec
    from fewstep.eval.features import inception_weights_path

    e = cfg.eval
    if e.reference != "procedural":
        folder = Path(e.reference).expanduser()
        if not folder.is_dir():
            raise EvalError(f"eval.reference {e.reference}: validation metrics need 'procedural' or an image folder")
        if len(image_files(folder)[:2]) < 2:
            raise EvalError(f"eval.reference {folder}: fewer than 2 images ({', '.join(IMAGE_SUFFIXES)})")
    if e.features == "inception":
        inception_weights_path(e.inception_weights)
    parse_clip_spec(e.clip)


def validation_prompts(cfg: RunConfig) -> tuple[list[str], str]:
    """``(prompts, where they come from)``: held-out procedural captions (``VALIDATION_SEED``, not
    the eval's) on procedural data, else ``validation.prompts`` or the data source's captions, repeated up to ``num_prompts``."""
    n = cfg.validation.num_prompts
    if procedural_validation(cfg):
        return (procedural_prompts(n, VALIDATION_SEED),
                f"captions of held-out procedural scenes (seed {VALIDATION_SEED}; the eval's are {PROMPT_SEED})")
    if cfg.validation.prompts:
        pool, source = cfg.validation.prompts, "validation.prompts"
    else:
        from fewstep.distill.data import build_dataset, first_items

        ds = build_dataset(cfg.data, seed=cfg.validation.seed)
        pool = [item["caption"] for item in first_items(ds, n)]  # also a streaming source (webdataset)
        source = f"captions of data.source {cfg.data.source}"
    return [pool[i % len(pool)] for i in range(n)], source


@dataclass
class MetricValidator:
    """Measures a student at fixed prompts and seeds; writes the best export (see the module docstring)."""

    cfg: RunConfig
    steps: list[int] | None  # step counts to measure; None: the recipe's default
    ctx: Prepared  # prompts, labels, feature network, CLIP, classifier (what evaluate.measure reads)
    frechet: object  # eval.distances.FrechetReference of the reference statistics
    spec: SweepSpec
    protocol: str  # distill.watch.Validator.protocol

    @classmethod
    def build(cls, cfg: RunConfig, steps: list[int] | None, resolution: int, device: str | torch.device = "cpu",
              cache_dir: str | None = None) -> MetricValidator:
        """Load the metric networks and the reference statistics (cached on disk, shared with ``fewstep eval``)."""
        from fewstep.eval.classifier import load_classifier
        from fewstep.eval.clip import load_clip
        from fewstep.eval.distances import FrechetReference
        from fewstep.eval.features import DEFAULT_CLASSIFIER_DIR, load_feature_net
        from fewstep.eval.metrics import compute_reference_stats

        e = cfg.eval
        spec = SweepSpec(num_images=cfg.validation.num_prompts, batch_size=e.batch_size, features=e.features,
                         inception_weights=e.inception_weights, clip=e.clip, reference=e.reference, device=str(device),
                         progress=False, diversity_prompts=0, floor=False)
        feature_net = load_feature_net(e.features, weights_path=e.inception_weights, device=device)
        clip = load_clip(e.clip, device=device)
        prompts, source = validation_prompts(cfg)
        labels = prompt_labels(prompts)
        classifier = None
        if labels is not None:
            try:
                classifier = load_classifier(DEFAULT_CLASSIFIER_DIR, device)
            except FileNotFoundError as err:
                raise EvalError(f"validation attribute accuracy needs the classifier: {err}") from None
        images, key = reference_source(e.reference, None, spec.num_images, resolution)
        stats = compute_reference_stats(images, feature_net, reference_cache_dir(cache_dir), key,
                                        batch_size=max(spec.batch_size, 64), progress=False)
        frechet = FrechetReference.from_moments(stats.mean(), stats.cov())
        ctx = Prepared([], prompts, source, labels, feature_net, clip, classifier, None, resolution)
        protocol = (f"{watched_metric(cfg)} at {steps or 'the recipe'} steps; {len(prompts)} {source}, seed i for "
                    f"prompt i; features {feature_net.identity}; reference {key}; clip {clip.name}")
        return cls(cfg, steps, ctx, frechet, spec, protocol)

    def measure(self, method, models, step: int) -> list[dict]:
        """One record per step count: ``{"steps", "all"?, "fid", "clip", "seconds"}`` (see module docstring)."""
        pipe, recipe = method.to_pipeline(models)
        apply_recipe(pipe, recipe)
        return [self._measure_at(pipe, s, recipe.guidance) for s in self.steps or [recipe.steps]]

    def _measure_at(self, pipe, steps: int, guidance: float) -> dict:
        from fewstep.eval.distances import fid
        from fewstep.eval.objects import all_attributes_right

        start_time, ctx, bs = time.perf_counter(), self.ctx, self.spec.batch_size
        parts = []
        for start in range(0, len(ctx.prompts), bs):
            chunk = ctx.prompts[start:start + bs]
            # generate() seeds image j of this call with start + j: image i always uses seed i.
            images = torch.from_numpy(generate(pipe, chunk, steps, guidance, seed=start, batch_size=bs))
            labels = ctx.labels[start:start + len(chunk)] if ctx.labels is not None else None
            with torch.autocast(pipe.device.type, enabled=False):  # the judges in their own precision
                parts.append(measure(images.permute(0, 3, 1, 2).contiguous(), chunk, labels, ctx, self.spec))
        row = collect(parts, None, ctx)
        out: dict = {"steps": steps}
        if row.correct is not None:
            out["all"] = float(all_attributes_right(row.correct, row.objects).mean())
        out["fid"] = fid(row.features, self.frechet)
        out["clip"] = float(np.mean(row.clip))
        out["seconds"] = round(time.perf_counter() - start_time, 3)
        return out

    def keep_best(self, method, models, step: int, metrics: dict, grid_prompts: list[str]) -> Path:
        """The run's export (as ``fewstep train`` writes at the end) plus ``best.json``, replacing
        ``runs/<name>/best`` in one rename: a reader sees the old best or the new one, never a mix."""
        from fewstep.pipelines.export import export_run

        out = self.cfg.run_dir / BEST_DIR
        with atomic_dir(out) as tmp:
            export_run(method, models, self.cfg, tmp, grid_prompts=grid_prompts)  # fills tmp (its own rename)
            info = {"step": step, "metric": watched_metric(self.cfg), "metrics": metrics, "protocol": self.protocol}
            atomic_write(tmp / BEST_FILE, json.dumps(info, indent=1))
        return out
