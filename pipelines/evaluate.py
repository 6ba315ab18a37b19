"""Evaluation sweeps: models x step counts on the same prompts and seeds -> metrics.json, report.md, plots, grid.

Every (model, step count) row generates the same ``num_images`` images: prompt i with generator
seed i, so two rows differ only in the model and the number of steps, and every comparison is
paired. Per image the sweep keeps what the metrics need (a feature vector, the CLIP cosine, the
classifier's verdicts, an object count) and drops the image; per row it also generates K seeds of
a few prompts for the diversity metric. When every row is done, :mod:`eval.scoring` turns those
measurements into values with bootstrap intervals (one resample draw shared by all rows) and the
paired difference of each row from the teacher's largest step count. A real-images row (held-out
procedural renders of the same prompts, :mod:`pipelines.eval_inputs`) is scored the same way when
the reference is procedural: the floor of every metric at this number of images.

Whatever can fail because of the user's input (a step count a student was not trained for, a
missing folder or weights file, an unknown scheduler, a LoRA on the wrong base) fails in
:func:`prepare`, before the first image is generated.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fewstep.distill.config import EvalConfig
from fewstep.distill.sampling import apply_recipe, generate
from fewstep.pipelines.eval_entries import (  # noqa: F401  (re-exported: the sweep API in one import)
    EvalError,
    ModelEntry,
    build_entries,
    run_entries,
    student_entry,
    teacher_entry,
)
from fewstep.pipelines.eval_inputs import (  # noqa: F401  (re-exported)
    DIVERSITY_OFFSET,
    FLOOR_SEED,
    IMAGE_SUFFIXES,
    PROMPT_SEED,
    REFERENCE_SEED,
    default_reference_images,
    floor_diversity_images,
    floor_images,
    image_files,
    procedural_prompts,
    prompt_labels,
    reference_source,
)
from fewstep.pipelines.teacher import TeacherError, load_pipeline, locate

FLOOR_NAME = "real images (floor)"


@dataclass
class SweepSpec:
    """How every row is measured (stated in the report's protocol)."""

    num_images: int = 1000  # per row
    batch_size: int = 64  # images per pipeline call while generating and scoring
    features: str = "embedded"  # FID/KID feature network: "embedded" or "inception"
    inception_weights: str | None = None  # Inception weights file (else torch hub's cache)
    clip: str = "embedded"  # eval.clip spec
    clip_prefix: str = ""  # prepended to prompts for CLIP score (DMD2 uses "A photo depicts " with ViT-g-14)
    reference: str = "procedural"  # "procedural" (held-out scenes, seed 12345) or an image folder
    reference_images: int | None = None  # None: max(5 num_images, 5000) scenes / every image of the folder
    prompts: list[str] | None = None  # None: captions of held-out procedural scenes (seed 777)
    latency_batch: int = 8  # images per timed pipeline call
    latency_repeats: int = 3  # timed calls (median reported) after one warm-up call
    grid_images: int = 8  # columns of the sample grid
    cache_dir: str | None = None  # reference statistics; None: $FEWSTEP_CACHE (default ~/.cache/fewstep)
    device: str = "cpu"
    progress: bool = True
    bootstrap: int = 200  # resamples behind every interval (eval.scoring)
    # Of those, how many FID-infinity's interval uses (50 FIDs each; one FID of 2048-d Inception features costs
    # ~1 s on a CPU core). None: 50, or 10 for features above 512 dimensions on a CPU.
    fid_infinity_resamples: int | None = None
    diversity_prompts: int = 16  # the first P prompts, each generated with ...
    diversity_seeds: int = 8  # ... K extra seeds (1,000,000 + p K + k) for per-prompt diversity
    floor: bool = True  # add the real-images row when the reference is procedural


def spec_from_config(config: EvalConfig, **kwargs) -> SweepSpec:
    """A :class:`SweepSpec` from a run's ``eval:`` section; ``kwargs`` set the remaining fields."""
    return SweepSpec(num_images=config.num_images, batch_size=config.batch_size, features=config.features,
                     inception_weights=config.inception_weights, clip=config.clip, reference=config.reference, **kwargs)


def evaluate_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, **spec_kwargs) -> dict[str, Path]:
    """Evaluate a run's export as its ``eval:`` section says (what ``fewstep train`` does after export)."""
    src = run_entries(run_dir)
    return run_sweep(src.entries, spec_from_config(src.config, **spec_kwargs), out or src.out)


# --------------------------------------------------------------------------------------------
# Preparation: everything checked and loaded before the first image


@dataclass
class Prepared:
    """Everything a sweep needs, loaded and checked before the first image is generated."""

    pipes: list
    prompts: list[str]
    prompt_source: str
    labels: torch.Tensor | None
    feature_net: object
    clip: object
    classifier: object
    reference: object  # eval.scoring.Reference
    resolution: int
    health: dict = field(default_factory=dict)  # eval.metrics.feature_health of the reference
    num_diversity: int = 0  # the first num_diversity prompts are generated with several seeds

    @property
    def diversity_prompts(self) -> list[str]:
        return self.prompts[:self.num_diversity]


def check_entries(entries: list[ModelEntry], spec: SweepSpec) -> None:
    """Cheap checks of the request (no model is loaded): raises EvalError / TeacherError."""
    import diffusers

    if not entries:
        raise EvalError("nothing to evaluate")
    if spec.num_images < 2:
        raise EvalError(f"--num-images {spec.num_images}: FID and KID need at least 2 images")
    if spec.bootstrap < 2:
        raise EvalError(f"bootstrap {spec.bootstrap}: intervals need at least 2 resamples")
    if spec.diversity_prompts and spec.diversity_seeds < 2:
        raise EvalError(f"diversity_seeds {spec.diversity_seeds}: per-prompt diversity needs at least 2 seeds")
    if spec.prompts is not None and len(spec.prompts) < spec.num_images:
        raise EvalError(f"{len(spec.prompts)} prompts for --num-images {spec.num_images}")
    for e in entries:
        if not e.steps or min(e.steps) < 1:
            raise EvalError(f"{e.name}: step counts must be >= 1, got {e.steps}")
        for s in e.steps:
            try:
                e.recipe.check_steps(s)
            except ValueError as err:
                raise EvalError(f"{e.name} ({e.lora or e.pipeline}): {err}") from None
        if e.recipe.scheduler and not hasattr(diffusers, e.recipe.scheduler):
            raise EvalError(f"{e.name}: {e.recipe.scheduler!r} is not a diffusers scheduler class")
        try:  # a folder that is no pipeline, missing variant files, a hub id the cache lacks offline
            locate(e.pipeline, e.revision, e.variant)
        except TeacherError as err:
            raise EvalError(f"{e.name}: {err}") from None
        if e.lora and not (Path(e.lora) / "pytorch_lora_weights.safetensors").is_file():
            raise EvalError(f"{e.name}: --lora {e.lora}: pytorch_lora_weights.safetensors not found")
    if spec.reference != "procedural":
        folder = Path(spec.reference).expanduser()
        if not folder.is_dir():
            raise EvalError(f"--reference {spec.reference}: expected 'procedural' or an image folder")
        if len(image_files(folder)[:spec.reference_images]) < 2:
            raise EvalError(f"--reference {folder}: fewer than 2 images ({', '.join(IMAGE_SUFFIXES)})")


def load_entry(entry: ModelEntry, device: str):
    """The entry's pipeline at its revision and variant (with its LoRA, checked against the base it was
    trained on, fused in: rows are timed, and an unfused adapter's side-branches would slow each UNet
    call) on ``device``."""
    from fewstep.pipelines.export import check_lora_base
    from fewstep.pipelines.sample import load_lora_fused

    pipe = load_pipeline(entry.pipeline, entry.revision, entry.variant)
    if entry.lora:
        check_lora_base(entry.lora, pipe.unet)
        load_lora_fused(pipe, entry.lora)
    if not entry.recipe.scheduler:
        entry.recipe.scheduler = type(pipe.scheduler).__name__
    return pipe.to(device)


def reference_cache_dir(cache_dir: str | None = None) -> Path:
    """Where reference statistics are cached: ``cache_dir``, else ``$FEWSTEP_CACHE/reference-stats``."""
    return Path(cache_dir or Path(os.environ.get("FEWSTEP_CACHE", "~/.cache/fewstep")) / "reference-stats").expanduser()


def prepare(entries: list[ModelEntry], spec: SweepSpec) -> Prepared:
    """Check the request, load metric networks, pipelines and reference statistics (in that order)."""
    from fewstep.eval.classifier import load_classifier
    from fewstep.eval.clip import load_clip
    from fewstep.eval.features import DEFAULT_CLASSIFIER_DIR, load_feature_net
    from fewstep.eval.metrics import compute_reference_stats, feature_health
    from fewstep.eval.scoring import Reference

    check_entries(entries, spec)
    feature_net = load_feature_net(spec.features, weights_path=spec.inception_weights, device=spec.device)
    clip = load_clip(spec.clip, device=spec.device)
    if spec.prompts is not None:
        prompts, source = list(spec.prompts[:spec.num_images]), "user prompts"
    else:
        prompts = procedural_prompts(spec.num_images)
        source = f"captions of held-out procedural scenes (seed {PROMPT_SEED})"
    labels = prompt_labels(prompts)
    classifier = None
    if labels is not None:
        try:
            classifier = load_classifier(DEFAULT_CLASSIFIER_DIR, spec.device)
        except FileNotFoundError as err:
            raise EvalError(f"attribute accuracy needs the classifier: {err}") from None
    pipes = [load_entry(e, spec.device) for e in entries]
    sizes = {p.unet.config.sample_size * p.vae_scale_factor for p in pipes}
    if len(sizes) > 1:
        raise EvalError(f"the models generate different resolutions {sorted(sizes)}; compare like with like")
    resolution = sizes.pop()
    images, key = reference_source(spec.reference, spec.reference_images, spec.num_images, resolution)
    stats = compute_reference_stats(images, feature_net, reference_cache_dir(spec.cache_dir), key,
                                    batch_size=max(spec.batch_size, 64), progress=spec.progress)
    reference = Reference.build(stats, min(spec.num_images, stats.kid_features.shape[0]), device=spec.device)
    return Prepared(pipes, prompts, source, labels, feature_net, clip, classifier, reference, resolution,
                    feature_health(stats), min(spec.diversity_prompts, len(prompts)))


# --------------------------------------------------------------------------------------------
# Measuring images: the same code for every model row and the real-images row


def _judge_size(images: torch.Tensor) -> torch.Tensor:
    """The embedded judges read 32x32: other sizes are resized like the embedded FID features."""
    import torch.nn.functional as F

    if images.shape[-1] == 32:
        return images
    x = F.interpolate(images.float(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def measure(images: torch.Tensor, prompts: list[str], labels: torch.Tensor | None, ctx: Prepared,
            spec: SweepSpec) -> dict:
    """Per-image measurements of one batch (uint8 NCHW, image j depicts ``prompts[j]``)."""
    from fewstep.eval.classifier import predict
    from fewstep.eval.clip import clip_score
    from fewstep.eval.objects import count_objects

    out = {"features": ctx.feature_net(images).detach().float().cpu()}
    if prompts is not None:
        out["clip"] = np.asarray(clip_score(images, prompts, ctx.clip, prefix=spec.clip_prefix,
                                            batch_size=spec.batch_size, return_per_image=True)["per_image"])
    if labels is not None and ctx.classifier is not None:
        small = _judge_size(images)
        out["correct"] = (predict(ctx.classifier, small).cpu() == labels).numpy()
        out["objects"] = count_objects(small)
    return out


def collect(parts: list[dict], diversity: torch.Tensor | None, ctx: Prepared):
    """Concatenate per-batch measurements into one :class:`eval.scoring.RowSamples`."""
    from fewstep.eval.scoring import RowSamples

    def cat(key):
        return np.concatenate([p[key] for p in parts]) if key in parts[0] else None

    attrs = list(ctx.classifier.attributes) if ctx.classifier is not None else []
    return RowSamples(torch.cat([p["features"] for p in parts]), cat("clip"), cat("correct"), attrs, cat("objects"),
                      diversity)


def _diversity_features(images: torch.Tensor, ctx: Prepared, spec: SweepSpec) -> torch.Tensor:
    return ctx.feature_net(images).detach().float().cpu().reshape(ctx.num_diversity, spec.diversity_seeds, -1)


def sampler_info(pipe, steps: int) -> dict:
    """The scheduler's actual timesteps at ``steps`` and its spacing, when the spacing changes them."""
    def timesteps(config) -> list[int]:
        sched = type(pipe.scheduler).from_config(config)
        sched.set_timesteps(steps)
        return [int(t) for t in sched.timesteps]

    config = dict(pipe.scheduler.config)
    ts = timesteps(config)
    spacing = config.get("timestep_spacing")
    if spacing is not None:  # LCM / TCD keep the key but build their own grid: do not claim a spacing
        other = "leading" if spacing != "leading" else "trailing"
        try:
            if timesteps({**config, "timestep_spacing": other}) == ts:
                spacing = None
        except (ValueError, NotImplementedError):  # the scheduler refuses the other spacing: it reads the key
            pass
    name = type(pipe.scheduler).__name__.removesuffix("Scheduler")
    label = f"{name} {spacing}" if spacing else name
    if len(ts) <= 8:
        label += " [" + ",".join(map(str, ts)) + "]"
    return {"timestep_spacing": spacing, "timesteps": ts, "sampler": label}


def evaluate_row(entry: ModelEntry, pipe, steps: int, ctx: Prepared, spec: SweepSpec):
    """One (model, steps) row: ``(row fields, RowSamples, first grid_images samples as uint8 NCHW)``."""
    from tqdm.auto import tqdm

    from fewstep.eval.latency import measure_latency

    recipe, n, bs = entry.recipe, spec.num_images, spec.batch_size
    apply_recipe(pipe, recipe)
    parts, grid = [], []
    bar = tqdm(total=n + ctx.num_diversity * spec.diversity_seeds, desc=f"{entry.name} @ {steps} steps", unit="img",
               disable=not spec.progress)
    for start in range(0, n, bs):
        chunk = ctx.prompts[start:start + bs]
        # generate() seeds image j of this call with start + j: image i always uses seed i.
        imgs = torch.from_numpy(generate(pipe, chunk, steps, recipe.guidance, seed=start, batch_size=bs))
        imgs = imgs.permute(0, 3, 1, 2).contiguous()
        labels = ctx.labels[start:start + len(chunk)] if ctx.labels is not None else None
        parts.append(measure(imgs, chunk, labels, ctx, spec))
        grid.append(imgs[:max(0, spec.grid_images - sum(len(g) for g in grid))])
        bar.update(len(chunk))
    diversity = None
    if ctx.num_diversity:
        rep = [p for p in ctx.diversity_prompts for _ in range(spec.diversity_seeds)]
        imgs = torch.from_numpy(generate(pipe, rep, steps, recipe.guidance, seed=DIVERSITY_OFFSET, batch_size=bs))
        diversity = _diversity_features(imgs.permute(0, 3, 1, 2).contiguous(), ctx, spec)
        bar.update(len(rep))
    bar.close()
    row = {"model": entry.name, "family": entry.family, "steps": steps, "guidance": recipe.guidance,
           "scheduler": recipe.scheduler, **sampler_info(pipe, steps)}
    timed = ctx.prompts[:min(spec.latency_batch, n)]

    def call():  # the whole user-facing call: text encoding, every UNet step, VAE decode
        gens = [torch.Generator().manual_seed(i) for i in range(len(timed))]
        pipe(timed, num_inference_steps=steps, guidance_scale=recipe.guidance, generator=gens, output_type="np")

    lat = measure_latency(call, len(timed), warmup=1, repeats=spec.latency_repeats)
    row.update(sec_per_image=lat["sec_per_image"], latency_batch_size=lat["batch_size"], num_images=n)
    return row, collect(parts, diversity, ctx), torch.cat(grid)


def floor_row(ctx: Prepared, spec: SweepSpec):
    """The real-images row, measured exactly like a model's (:func:`measure`)."""
    procedural = ctx.labels is not None
    images = floor_images(ctx.prompts, procedural)
    parts = [measure(images[s:s + spec.batch_size], ctx.prompts[s:s + spec.batch_size] if procedural else None,
                     ctx.labels[s:s + spec.batch_size] if procedural else None, ctx, spec)
             for s in range(0, len(images), spec.batch_size)]
    diversity = None
    if procedural and ctx.num_diversity:
        diversity = _diversity_features(floor_diversity_images(ctx.diversity_prompts, spec.diversity_seeds), ctx, spec)
    row = {"model": FLOOR_NAME, "family": FLOOR_NAME, "steps": None, "guidance": None, "scheduler": None,
           "sampler": f"held-out renders (seed {FLOOR_SEED})", "num_images": len(images)}
    return row, collect(parts, diversity, ctx), images[:spec.grid_images]


# --------------------------------------------------------------------------------------------
# The sweep


def _baseline_index(entries: list[ModelEntry], rows: list[dict]) -> int | None:
    teacher = next((e for e in entries if e.teacher), None)
    if teacher is None:
        return None
    return next(i for i, r in enumerate(rows) if r["model"] == teacher.name and r["steps"] == max(teacher.steps))


def run_sweep(entries: list[ModelEntry], spec: SweepSpec, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Evaluate every entry at each of its step counts and write the report into ``out_dir``.

    Returns:
        The paths written: ``metrics_json``, ``report_md``, the plots, ``samples``, ``prompts`` and
        ``per_image`` (the per-image measurements, for paired comparisons across reports).
    """
    from fewstep.eval.report import atomic_write, save_sample_grid, write_report
    from fewstep.eval.scoring import Bootstrap

    ctx = prepare(entries, spec)
    rows, samples, grid = [], [], []
    for i, entry in enumerate(entries):
        for steps in entry.steps:
            row, s, g = evaluate_row(entry, ctx.pipes[i], steps, ctx, spec)
            rows.append(row)
            samples.append(s)
            grid.append((f"{entry.name} @ {steps}", g))
        ctx.pipes[i] = None  # free each model once its rows are done
    floor = None
    if spec.floor and spec.reference == "procedural":
        floor, floor_samples, g = floor_row(ctx, spec)
        grid.append((FLOOR_NAME, g))
    fid_inf = spec.fid_infinity_resamples
    if fid_inf is None:
        fid_inf = 10 if ctx.feature_net.num_features > 512 and str(spec.device) == "cpu" else 50
    boot = Bootstrap.create(spec.num_images, ctx.reference.pr_features.shape[0], ctx.num_diversity,
                            num=spec.bootstrap, fid_infinity_resamples=fid_inf)
    base = _baseline_index(entries, rows)
    score_rows(rows + ([floor] if floor else []), samples + ([floor_samples] if floor else []), ctx.reference, boot, base)
    for r in rows:
        r["speedup"] = rows[base]["sec_per_image"] / r["sec_per_image"] if base is not None else None
    protocol = protocol_dict(entries, spec, ctx, rows[base] if base is not None else None, boot)
    out = Path(out_dir)
    paths = write_report(out, rows, protocol, floor=floor)
    paths["prompts"] = atomic_write(out / "prompts.txt", "".join(p + "\n" for p in ctx.prompts))
    paths["per_image"] = save_per_image(out / "per_image", rows, samples, floor, floor_samples if floor else None)
    top = f"{rows[base]['model']} @ {rows[base]['steps']}" if base is not None else None
    paths["samples"] = save_sample_grid(grid, out / "samples.png", top=top)
    note = ("\n## Samples\n\n![samples](samples.png)\n\nOne row per model @ steps (teacher on top, real images at the "
            "bottom); column i is prompt i of prompts.txt with generator seed i in every row.\n")
    atomic_write(paths["report_md"], paths["report_md"].read_text() + note)
    return paths


def score_rows(rows: list[dict], samples: list, reference, boot, base: int | None) -> None:
    """Fill each row with its values, intervals and (for every row but the baseline) the paired difference."""
    from fewstep.eval.scoring import row_fields, score, versus

    scored = [score(s, reference, boot) for s in samples]
    for i, (row, sc) in enumerate(zip(rows, scored)):
        row.update(row_fields(sc))
        if base is not None and i != base:
            row["vs_teacher"] = versus(sc, scored[base])


def per_image_file(folder: Path, row: dict) -> Path:
    """The ``.npz`` of a row's per-image measurements: a readable name plus a hash that keeps names distinct."""
    name = row["model"] if row.get("steps") is None else f"{row['model']}@{row['steps']}"
    readable = "".join(c if c.isalnum() or c in "-_@" else "_" for c in name)
    return folder / f"{hashlib.sha256(name.encode()).hexdigest()[:8]}-{readable}.npz"


def save_per_image(folder: Path, rows: list[dict], samples: list, floor: dict | None, floor_samples) -> Path:
    """One ``.npz`` of per-image measurements per row (eval.scoring.RowSamples); read by pipelines.eval_compare."""
    for row, s in list(zip(rows, samples)) + ([(floor, floor_samples)] if floor else []):
        s.save(per_image_file(folder, row))
    return folder


def protocol_dict(entries: list[ModelEntry], spec: SweepSpec, ctx: Prepared, base: dict | None, boot) -> dict:
    """How the rows were measured; numbers under different protocols are not comparable."""
    n = spec.num_images
    ref = ctx.reference
    protocol = {
        "num_images": n,
        "resolution": f"{ctx.resolution}x{ctx.resolution}",
        "prompts": ctx.prompt_source,
        "prompts_file": "prompts.txt",
        "prompts_sha256": hashlib.sha256("\n".join(ctx.prompts).encode()).hexdigest(),
        "seeds": f"image i uses torch.Generator('cpu').manual_seed(i), i = 0..{n - 1}, in every row",
        "features": ctx.feature_net.identity,
        "feature_health": {k: v for k, v in ctx.health.items() if k != "warning"},
        "reference": ref.stats.key,
        "reference_images": ref.stats.num_images,
        "fid_kid": "eval.distances in float64: FID (Heusel et al. 2017) against the reference moments; KID = unbiased "
                   f"cubic-kernel MMD^2 of all generated features against {ref.kernel.features.shape[0]} reference "
                   "features; kid_std = its bootstrap spread over generated images",
        "fid_infinity": "Chong & Forsyth 2020: mean FID of 5 random subsets at each of 10 sizes from max(n/5, min(2 d, "
                        "n/2)) to n, line a + b/N, value at 1/N = 0 (the reference keeps its size: the real-images row "
                        "shows what remains)",
        "uncertainty": boot.describe(),
        "bootstrap_resamples": boot.images.num,
        "precision_recall": f"Kynkaenniemi et al. 2019, k = {boot.k}, {ref.pr_features.shape[0]} reference features",
        "diversity": (f"mean pairwise feature distance between {spec.diversity_seeds} seeds ({DIVERSITY_OFFSET} + p K + k) "
                      f"of each of the first {ctx.num_diversity} prompts, averaged over prompts"
                      if ctx.num_diversity else "not computed"),
        "clip_model": ctx.clip.name,
        "clip_prefix": spec.clip_prefix,
        "clip_score": "mean over images of cos(image, prefix + prompt); clip_score_x100 = 100 x clip_score",
        "attribute_accuracy": ("assets/classifier; labels parsed from the prompts; 'all' = every attribute right and "
                               "exactly one object (eval.objects); attribute_accuracy_ignoring_count = the classifier "
                               "alone" if ctx.classifier is not None
                               else "not computed (the prompts are not procedural captions)"),
        "floor": (f"'{FLOOR_NAME}': image i renders prompt i with held-out jitter (seed {FLOOR_SEED}), scored like a "
                  "model" if spec.floor and spec.reference == "procedural" else "none (the reference is not procedural)"),
        "latency": {"what": "whole pipeline call: text encoding, UNet steps, VAE decode; 1 warm-up call excluded",
                    "images_per_call": min(spec.latency_batch, n), "repeats": spec.latency_repeats,
                    "statistic": "median", "device": str(spec.device), "torch_threads": torch.get_num_threads()},
        "speedup": f"sec_per_image of {base['model']} @ {base['steps']} steps / the row's" if base else "no teacher",
        "paired_differences": (f"row - {base['model']} @ {base['steps']} steps, same resamples" if base
                               else "none (no teacher row)"),
        "generation_batch_size": spec.batch_size,
        "models": {e.name: {"pipeline": e.pipeline, "revision": e.revision, "variant": e.variant, "lora": e.lora,
                            "recipe": e.recipe.to_dict()} for e in entries},
    }
    warnings = [ctx.health["warning"]] if ctx.health.get("warning") else []
    if n < ctx.feature_net.num_features:
        warnings.append(f"{n} images < {ctx.feature_net.num_features} feature dimensions: covariances are "
                        "rank-deficient and FID is biased upwards; compare rows of equal num_images only")
    protocol["warnings"] = warnings
    return protocol
