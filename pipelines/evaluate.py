"""Evaluation sweeps: models x step counts on the same prompts and seeds -> metrics.json, report.md, plots, grid.

Every (model, step count) row generates the same ``num_images`` images: prompt i with generator
seed i, so two rows differ only in the model and the number of steps. Per row: FID / KID against
cached reference statistics (``eval.metrics``), CLIP score (``eval.clip``), attribute accuracy
when the prompts are captions of the procedural domain (``eval.classifier``), latency of the whole
pipeline call (``eval.latency``) and the speedup over the teacher's largest step count. Images are
streamed: each generated batch is scored and dropped, so memory does not grow with ``num_images``.

Whatever can fail because of the user's input (a step count a student was not trained for, a
missing folder or weights file, an unknown scheduler, a LoRA on the wrong base) fails in
:func:`prepare`, before the first image is generated.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
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
from fewstep.pipelines.teacher import TeacherError, check_pipeline_dir, load_pipeline, resolve

PROMPT_SEED = 777  # held-out procedural scenes whose captions are the prompts (as bench/attribute_quality.py)
REFERENCE_SEED = 12345  # held-out procedural scenes that are the FID reference
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
    reference_images: int | None = None  # None: max(num_images, 1000) scenes / every image of the folder
    prompts: list[str] | None = None  # None: captions of held-out procedural scenes (seed 777)
    latency_batch: int = 8  # images per timed pipeline call
    latency_repeats: int = 3  # timed calls (median reported) after one warm-up call
    grid_images: int = 8  # columns of the sample grid
    cache_dir: str | None = None  # reference statistics; None: $FEWSTEP_CACHE (default ~/.cache/fewstep)
    device: str = "cpu"
    progress: bool = True


def spec_from_config(config: EvalConfig, **kwargs) -> SweepSpec:
    """A :class:`SweepSpec` from a run's ``eval:`` section; ``kwargs`` set the remaining fields."""
    return SweepSpec(num_images=config.num_images, batch_size=config.batch_size, features=config.features,
                     inception_weights=config.inception_weights, clip=config.clip, reference=config.reference, **kwargs)


def evaluate_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, **spec_kwargs) -> dict[str, Path]:
    """Evaluate a run's export as its ``eval:`` section says (what ``fewstep train`` does after export)."""
    src = run_entries(run_dir)
    return run_sweep(src.entries, spec_from_config(src.config, **spec_kwargs), out or src.out)


# --------------------------------------------------------------------------------------------
# Inputs: prompts, labels, reference images


def procedural_prompts(num: int, seed: int = PROMPT_SEED) -> list[str]:
    """Captions of held-out procedural scenes (the prompts of bench/attribute_quality.py)."""
    from fewstep.distill.data.procedural import caption, sample_scene

    return [caption(sample_scene(seed, i)) for i in range(num)]


def prompt_labels(prompts: list[str]) -> torch.Tensor | None:
    """Ground-truth attribute labels ``[N, n_attr]`` if every prompt is a procedural caption, else None."""
    from fewstep.distill.data.procedural import labels_from_caption

    try:
        return torch.tensor([labels_from_caption(p) for p in prompts])
    except ValueError:
        return None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _square(path: Path, resolution: int) -> torch.Tensor:
    """Centre crop to a square, LANCZOS resize to the generated resolution (clean-fid / DMD2's protocol)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.LANCZOS)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def reference_source(spec: SweepSpec, resolution: int):
    """``(lazy image iterable, cache key)`` of the FID reference; the key names the source completely."""
    if spec.reference == "procedural":
        from fewstep.distill.data.procedural import ProceduralDataset

        n = spec.reference_images or max(spec.num_images, 1000)
        ds = ProceduralDataset(REFERENCE_SEED)
        return (ds[i]["image"] for i in range(n)), f"procedural:seed={REFERENCE_SEED}:n={n}"
    folder = Path(spec.reference).expanduser().resolve()
    files = _image_files(folder)[:spec.reference_images]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = f"folder:{folder}:n={len(files)}:files={h.hexdigest()[:16]}:center-crop+lanczos:res={resolution}"
    return (_square(f, resolution) for f in files), key


# --------------------------------------------------------------------------------------------
# The sweep


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
    reference: object
    resolution: int


def check_entries(entries: list[ModelEntry], spec: SweepSpec) -> None:
    """Cheap checks of the request (no model is loaded): raises EvalError / TeacherError."""
    import diffusers

    if not entries:
        raise EvalError("nothing to evaluate")
    if spec.num_images < 2:
        raise EvalError(f"--num-images {spec.num_images}: FID and KID need at least 2 images")
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
        local = resolve(e.pipeline)
        if Path(local).exists() or local.startswith((".", "/", "~")):
            try:
                check_pipeline_dir(local)
            except TeacherError as err:
                raise EvalError(f"{e.name}: {err}") from None
        if e.lora and not (Path(e.lora) / "pytorch_lora_weights.safetensors").is_file():
            raise EvalError(f"{e.name}: --lora {e.lora}: pytorch_lora_weights.safetensors not found")
    if spec.reference != "procedural":
        folder = Path(spec.reference).expanduser()
        if not folder.is_dir():
            raise EvalError(f"--reference {spec.reference}: expected 'procedural' or an image folder")
        if len(_image_files(folder)[:spec.reference_images]) < 2:
            raise EvalError(f"--reference {folder}: fewer than 2 images ({', '.join(IMAGE_SUFFIXES)})")


def load_entry(entry: ModelEntry, device: str):
    """The entry's pipeline (with its LoRA, checked against the base it was trained on) on ``device``."""
    from fewstep.pipelines.export import check_lora_base

    pipe = load_pipeline(entry.pipeline)
    if entry.lora:
        check_lora_base(entry.lora, pipe.unet)
        pipe.load_lora_weights(entry.lora)
    if not entry.recipe.scheduler:
        entry.recipe.scheduler = type(pipe.scheduler).__name__
    return pipe.to(device)


def prepare(entries: list[ModelEntry], spec: SweepSpec) -> Prepared:
    """Check the request, load metric networks, pipelines and reference statistics (in that order)."""
    from fewstep.eval.classifier import load_classifier
    from fewstep.eval.clip import load_clip
    from fewstep.eval.features import DEFAULT_CLASSIFIER_DIR, load_feature_net
    from fewstep.eval.metrics import compute_reference_stats

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
    images, key = reference_source(spec, resolution)
    cache = Path(spec.cache_dir or Path(os.environ.get("FEWSTEP_CACHE", "~/.cache/fewstep")) / "reference-stats")
    reference = compute_reference_stats(images, feature_net, cache.expanduser(), key,
                                        batch_size=max(spec.batch_size, 64), progress=spec.progress)
    return Prepared(pipes, prompts, source, labels, feature_net, clip, classifier, reference, resolution)


def evaluate_row(entry: ModelEntry, pipe, steps: int, ctx: Prepared, spec: SweepSpec) -> tuple[dict, torch.Tensor]:
    """One (model, steps) row and its first ``grid_images`` samples (uint8 NCHW)."""
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from fewstep.eval.classifier import predict
    from fewstep.eval.clip import clip_score
    from fewstep.eval.latency import measure_latency
    from fewstep.eval.metrics import fid_kid

    recipe, n, bs = entry.recipe, spec.num_images, spec.batch_size
    apply_recipe(pipe, recipe)
    cosines, correct, grid = [], [], []
    bar = tqdm(total=n, desc=f"{entry.name} @ {steps} steps", unit="img", disable=not spec.progress)

    def batches():
        for start in range(0, n, bs):
            chunk = ctx.prompts[start:start + bs]
            # generate() seeds image j of this call with start + j: image i always uses seed i.
            imgs = torch.from_numpy(generate(pipe, chunk, steps, recipe.guidance, seed=start, batch_size=bs))
            imgs = imgs.permute(0, 3, 1, 2).contiguous()
            cosines.extend(clip_score(imgs, chunk, ctx.clip, prefix=spec.clip_prefix, batch_size=bs,
                                      return_per_image=True)["per_image"])
            if ctx.classifier is not None:  # the classifier reads 32x32: resize like the embedded FID features
                x = imgs if imgs.shape[-1] == 32 else F.interpolate(imgs.float(), size=(32, 32), mode="bilinear",
                                                                     antialias=True, align_corners=False)
                correct.append(predict(ctx.classifier, x) == ctx.labels[start:start + len(chunk)])
            grid.append(imgs[:max(0, spec.grid_images - sum(len(g) for g in grid))])
            bar.update(len(chunk))
            yield imgs

    with warnings.catch_warnings():  # stated once in the protocol instead
        warnings.filterwarnings("ignore", message="FID from fewer images than feature dimensions")
        fk = fid_kid(batches(), ctx.reference, ctx.feature_net, batch_size=bs)
    bar.close()
    cos = torch.tensor(cosines, dtype=torch.float64)
    row = {"model": entry.name, "family": entry.family, "steps": steps, "guidance": recipe.guidance,
           "scheduler": recipe.scheduler, "fid": fk["fid"], "kid_mean": fk["kid_mean"], "kid_std": fk["kid_std"],
           "clip_score": float(cos.mean()), "clip_score_x100": 100 * float(cos.mean())}
    if correct:
        c = torch.cat(correct)
        acc = {a: float(c[:, j].float().mean()) for j, a in enumerate(ctx.classifier.attributes)}
        row["attribute_accuracy"] = {**acc, "mean": sum(acc.values()) / len(acc), "all": float(c.all(1).float().mean())}
    timed = ctx.prompts[:min(spec.latency_batch, n)]

    def call():  # the whole user-facing call: text encoding, every UNet step, VAE decode
        gens = [torch.Generator().manual_seed(i) for i in range(len(timed))]
        pipe(timed, num_inference_steps=steps, guidance_scale=recipe.guidance, generator=gens, output_type="np")

    lat = measure_latency(call, len(timed), warmup=1, repeats=spec.latency_repeats)
    row.update(sec_per_image=lat["sec_per_image"], latency_batch_size=lat["batch_size"], num_images=n)
    return row, torch.cat(grid)


def _baseline(entries: list[ModelEntry], rows: list[dict]) -> dict | None:
    teacher = next((e for e in entries if e.teacher), None)
    if teacher is None:
        return None
    return next(r for r in rows if r["model"] == teacher.name and r["steps"] == max(teacher.steps))


def run_sweep(entries: list[ModelEntry], spec: SweepSpec, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Evaluate every entry at each of its step counts and write the report into ``out_dir``.

    Returns:
        The paths written: ``metrics_json``, ``report_md``, the plots, ``samples`` and ``prompts``.
    """
    from fewstep.eval.report import atomic_write, save_sample_grid, write_report

    ctx = prepare(entries, spec)
    rows, grid = [], []
    for i, entry in enumerate(entries):
        for steps in entry.steps:
            row, samples = evaluate_row(entry, ctx.pipes[i], steps, ctx, spec)
            rows.append(row)
            grid.append((f"{entry.name} @ {steps}", samples))
        ctx.pipes[i] = None  # free each model once its rows are done
    base = _baseline(entries, rows)
    for r in rows:
        r["speedup"] = base["sec_per_image"] / r["sec_per_image"] if base else None
    protocol = protocol_dict(entries, spec, ctx, base)
    out = Path(out_dir)
    paths = write_report(out, rows, protocol)
    paths["prompts"] = atomic_write(out / "prompts.txt", "".join(p + "\n" for p in ctx.prompts))
    top = f"{base['model']} @ {base['steps']}" if base else None
    paths["samples"] = save_sample_grid(grid, out / "samples.png", top=top)
    note = ("\n## Samples\n\n![samples](samples.png)\n\nOne row per model @ steps (teacher on top); column i is "
            "prompt i of prompts.txt with generator seed i in every row.\n")
    atomic_write(paths["report_md"], paths["report_md"].read_text() + note)
    return paths


def protocol_dict(entries: list[ModelEntry], spec: SweepSpec, ctx: Prepared, base: dict | None) -> dict:
    """How the rows were measured; numbers under different protocols are not comparable."""
    n = spec.num_images
    protocol = {
        "num_images": n,
        "resolution": f"{ctx.resolution}x{ctx.resolution}",
        "prompts": ctx.prompt_source,
        "prompts_file": "prompts.txt",
        "prompts_sha256": hashlib.sha256("\n".join(ctx.prompts).encode()).hexdigest(),
        "seeds": f"image i uses torch.Generator('cpu').manual_seed(i), i = 0..{n - 1}, in every row",
        "features": ctx.feature_net.identity,
        "reference": ctx.reference.key,
        "reference_images": ctx.reference.num_images,
        "fid_kid": "eval.metrics: torchmetrics formulas in float64; KID: cubic-kernel MMD over 100 subsets of "
                   f"{min(1000, n, ctx.reference.kid_features.shape[0])} images",
        "clip_model": ctx.clip.name,
        "clip_prefix": spec.clip_prefix,
        "clip_score": "mean over images of cos(image, prefix + prompt); clip_score_x100 = 100 x clip_score",
        "attribute_accuracy": "assets/classifier; labels parsed from the prompts" if ctx.classifier is not None
        else "not computed (the prompts are not procedural captions)",
        "latency": {"what": "whole pipeline call: text encoding, UNet steps, VAE decode; 1 warm-up call excluded",
                    "images_per_call": min(spec.latency_batch, n), "repeats": spec.latency_repeats,
                    "statistic": "median", "device": str(spec.device), "torch_threads": torch.get_num_threads()},
        "speedup": f"sec_per_image of {base['model']} @ {base['steps']} steps / the row's" if base else "no teacher",
        "generation_batch_size": spec.batch_size,
        "models": {e.name: {"pipeline": e.pipeline, "lora": e.lora, "recipe": e.recipe.to_dict()} for e in entries},
    }
    if n < ctx.feature_net.num_features:
        protocol["fid_note"] = (f"{n} images < {ctx.feature_net.num_features} feature dimensions: covariances are "
                                "rank-deficient and FID is biased upwards; compare rows of equal num_images only")
    return protocol
