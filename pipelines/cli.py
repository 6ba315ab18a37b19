"""The ``fewstep`` command.

User mistakes (a missing file, a bad key, a folder that is not a pipeline, an output path that
cannot be written, a damaged checkpoint, image or teacher file) end in one line on stderr,
``fewstep: error: ...`` naming the key or file, and exit status 2, before any expensive work where
they can be known then; ``main`` is the one place that catches them (``USER_ERRORS``). Bugs still show
tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from fewstep.distill.config import ConfigError, DivergedError, EvalConfig, Range, bounds, field_range
from fewstep.distill.memory import retain_freed_memory
from fewstep.eval.errors import ClipError, MetricsError
from fewstep.pipelines.errors import EvalError, LoraBaseError, TeacherError, UserError

EPILOG = """examples:
  fewstep train configs/tiny/teacher.yaml --set train.steps=200
  fewstep train configs/tiny/teacher.yaml --resume latest
  fewstep sample --pipeline tiny-sd --prompt "a large red circle on the left, gray background" --out red.png
  fewstep eval --run runs/tiny-lcm-lora --num-images 500
  fewstep eval --pipeline tiny-sd --lora runs/tiny-lcm-lora/export --steps 1,2,4 --teacher tiny-sd --teacher-steps 25,50
  fewstep build-classifier --out assets/classifier
  fewstep build-tiny-clip --out assets/tiny-clip
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fewstep",
        description="Distil Stable-Diffusion-style teachers into fast 1-8 step students, export them as plain "
                    "diffusers pipelines or LoRA weights, and evaluate them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a run from a YAML config (runs/<name>/)",
                       description="Train a method from a YAML config; writes runs/<name>/ with config.yaml, "
                                   "checkpoints/, logs.jsonl, samples/ and export/.")
    t.add_argument("config", help="YAML config file, e.g. configs/tiny/teacher.yaml (a shipped config is also found "
                                  "by name from any directory: tiny/lcm_lora)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    t.add_argument("--resume", metavar="CKPT", help="'latest' or a checkpoint folder to continue from")
    t.add_argument("--no-export", action="store_true", help="skip writing runs/<name>/export at the end")

    s = sub.add_parser("sample", help="generate an image grid with a pipeline (and optional LoRA)")
    s.add_argument("--pipeline", required=True, help="diffusers pipeline folder, embedded name or hub id")
    s.add_argument("--lora", help="folder with pytorch_lora_weights.safetensors to load on top")
    s.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    s.add_argument("--num-images", type=int, default=1, help="images per prompt")
    s.add_argument("--steps", type=int, help="inference steps (default: the export's recipe, else 25)")
    s.add_argument("--guidance", type=float, help="guidance_scale (default: the export's recipe)")
    s.add_argument("--scheduler", help="a diffusers scheduler class name (default: the export's recipe)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--revision", help="hub id --pipeline: a branch, tag or commit (default: the --lora export's "
                                      "model.revision, else main)")
    s.add_argument("--variant", help="weight files of this variant, e.g. fp16 (default: the --lora export's "
                                     "model.variant, else the plain files)")
    s.add_argument("--out", required=True, help="output PNG grid")

    e = sub.add_parser("export", help="export a run's last checkpoint (LoRA weights or a full pipeline)",
                       description="Export the newest finished checkpoint of a run: LoRA students as "
                                   "pytorch_lora_weights.safetensors, full students as a diffusers pipeline; "
                                   "with a stock scheduler recipe and a model card.")
    e.add_argument("run_dir", help="runs/<name>")
    e.add_argument("--step", type=int, help="export the checkpoint of this step instead of the newest (train.checkpoint_every "
                                            "and train.checkpoints_total_limit decide which are kept)")
    e.add_argument("--fuse", action="store_true", help="fuse a LoRA into the base and write a full pipeline")
    e.add_argument("--out", help="output folder (default runs/<name>/export or export-fused)")

    _eval_parser(sub)

    c = sub.add_parser("build-classifier", help="train the embedded attribute classifier")
    c.add_argument("--config", default="configs/classifier.yaml")
    c.add_argument("--out", default="assets/classifier")

    _cache_parser(sub)

    k = sub.add_parser("build-tiny-clip", help="train the embedded tiny CLIP (CLIP score on the embedded domain)")
    k.add_argument("--config", default="configs/tiny_clip.yaml")
    k.add_argument("--out", default="assets/tiny-clip")
    return p


def _eval_parser(sub) -> None:
    v = sub.add_parser(
        "eval", help="evaluate a student against its teacher: FID/KID, CLIP score, attribute accuracy, latency",
        description="Sweep models x step counts on the same prompts and seeds (image i: generator seed i) and write "
                    "metrics.json, report.md, plots and a sample grid. Without --run, give --pipeline (and --lora, "
                    "--teacher); with --run, the run's export is the student, its model.pretrained the teacher, and "
                    "its eval: section the defaults. Flags override either.")
    v.add_argument("--run", metavar="RUN_DIR", help="evaluate runs/<name>/export (default out runs/<name>/eval)")
    v.add_argument("--best", action="store_true", help="with --run: evaluate runs/<name>/best, the export of the "
                                                       "best validation, instead (default out runs/<name>/eval-best)")
    v.add_argument("--pipeline", help="student: diffusers pipeline folder, embedded name or hub id")
    v.add_argument("--lora", help="student LoRA folder (pytorch_lora_weights.safetensors) on top of --pipeline")
    v.add_argument("--steps", metavar="N,N,..", help="student step counts (default: those of 1,2,4,8 it was "
                                                     "trained for)")
    v.add_argument("--teacher", help="teacher pipeline, sampled with DDIMScheduler and trailing timestep spacing, which "
                                     "starts every step count at t=999 (no teacher rows without it)")
    v.add_argument("--teacher-leading", action="store_true",
                   help="also a teacher row with the pipeline's default (leading) spacing, labelled as such")
    v.add_argument("--teacher-steps", metavar="N,N,..", help="teacher step counts (default 25,50; '' for no "
                                                             "teacher rows); the largest is the speedup baseline")
    v.add_argument("--num-images", type=int, help="images per row (default 1000)")
    v.add_argument("--guidance", type=float, help="student guidance_scale (default: its recipe's)")
    v.add_argument("--teacher-guidance", type=float, help="default: the teacher's recipe, else 7.5")
    v.add_argument("--scheduler", help="student scheduler class (default: its recipe's)")
    v.add_argument("--features", choices=["embedded", "inception"], help="FID/KID features (default embedded)")
    v.add_argument("--inception-weights", metavar="FILE", help="weights-inception-2015-12-05-6726825d.pth")
    v.add_argument("--clip", metavar="SPEC", help="CLIP model: embedded (default), ARCH:/weights, local-dir:PATH")
    v.add_argument("--reference", metavar="procedural|DIR", help="FID reference (default: procedural scenes, seed "
                                                                 "12345)")
    v.add_argument("--reference-images", type=int, help="reference size (default max(5 x num-images, 5000) scenes, "
                                                        "or every image of DIR)")
    v.add_argument("--bootstrap", type=int, help="resamples behind every interval (default 200; same indices in "
                                                 "every row, so differences are paired)")
    v.add_argument("--fid-infinity-resamples", type=int, help="resamples for FID-infinity's interval (default 50, "
                                                              "10 for Inception features on a CPU)")
    v.add_argument("--diversity-prompts", type=int, help="prompts generated with extra seeds for per-prompt "
                                                         "diversity (default 16)")
    v.add_argument("--diversity-seeds", type=int, help="extra seeds per diversity prompt (default 8)")
    v.add_argument("--no-floor", action="store_true", help="leave out the real-images (floor) row")
    v.add_argument("--prompts", metavar="FILE", help="one prompt per line (default: captions of held-out "
                                                     "procedural scenes, seed 777)")
    v.add_argument("--batch-size", type=int, help="images per pipeline call (default 64)")
    v.add_argument("--latency-batch", type=int, default=8, help="images per timed call (default 8)")
    v.add_argument("--cache-dir", help="reference statistics cache (default $FEWSTEP_CACHE/reference-stats)")
    v.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    v.add_argument("--out", help="report folder (default runs/<name>/eval)")


def _cache_parser(sub) -> None:
    a = sub.add_parser("cache", help="precompute VAE latents and text embeddings of a data source (data.source: cache)",
                       description="Encode the images and captions of a config's data source with its teacher's VAE "
                                   "and text encoder into sharded safetensors under --out; resumable (finished shards "
                                   "are verified and kept), split per rank under accelerate launch. Train from it with "
                                   "--set data.source=cache --set data.path=OUT.")
    a.add_argument("config", help="YAML config: its model (teacher) and data sections are read")
    a.add_argument("--out", required=True, help="cache folder (created; an unfinished one is completed)")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.path=shards/{0000..0099}.tar (repeatable)")
    a.add_argument("--shard-size", type=int, default=1000, help="items per output shard (map-style sources)")
    a.add_argument("--num-samples", type=int, help="cache only the first N items (required for procedural data)")
    a.add_argument("--batch-size", type=int, default=32, help="images per VAE / text-encoder call")
    a.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="stored precision (float16 halves the disk; float32 reproduces image-fed losses exactly)")


def cmd_cache(args) -> int:
    from fewstep.distill.run_config import load_config

    _check_overrides(args.overrides)
    for flag, value in (("--shard-size", args.shard_size), ("--num-samples", args.num_samples),
                        ("--batch-size", args.batch_size)):
        if value is not None:
            bounds(ge=1).check(flag, value)  # the range rule of every flag and config number
    cfg = load_config(config_path(args.config), args.overrides)
    check_output("--out", args.out, folder=True)
    from fewstep.pipelines.cache import plan_units, write_cache

    units = plan_units(cfg, args.shard_size, args.num_samples)  # source and shard files: before the teacher loads
    counts = write_cache(cfg, _load_pipeline_for(cfg), args.out, units, args.shard_size, args.batch_size, args.dtype)
    print(f"fewstep: cache {args.out}: {counts['written']} shard(s) written, {counts['kept']} kept, of this "
          f"process's {counts['mine']} ({counts['shards']} in all)", file=sys.stderr)
    return 0


def _load_pipeline_for(cfg):
    from fewstep.pipelines.teacher import run_teacher

    return run_teacher(cfg)


SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # package data in a wheel, configs/ in a checkout


def config_path(name: str) -> Path:
    """``name`` as given if it exists, else the shipped config of that name (``configs/tiny/lcm_lora.yaml``,
    ``tiny/lcm_lora.yaml`` or ``tiny/lcm_lora``), so a wheel install runs the shipped configs from anywhere."""
    path = Path(name)
    if path.exists():
        return path
    rel = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    for candidate in (SHIPPED_CONFIGS / rel, SHIPPED_CONFIGS / rel.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    return path  # load_config names the missing file


def check_output(flag: str, path: str | os.PathLike, folder: bool) -> None:
    """``path`` (``--out`` or ``output_dir``) must be writable: checked before any work, leaving nothing."""
    from fewstep.distill.files import unwritable

    problem = unwritable(path, folder)
    if problem:
        raise UserError(f"{flag} {path}: {problem}")


def lora_target_keys(cfg) -> list[tuple[str, list[str]]]:
    """(config key, patterns) of every LoRA the run attaches to the teacher's UNet: the student's
    (``student.lora_targets``, also a fake score's without targets of its own) and a fake score's own."""
    method = cfg.method.config
    fake_rank, fake_targets = getattr(method, "fake_lora_rank", 0), getattr(method, "fake_lora_targets", None)
    keys = []
    if cfg.student.kind == "lora" or (fake_rank and not fake_targets):
        keys.append(("student.lora_targets", list(cfg.student.lora_targets)))
    if fake_rank and fake_targets:
        keys.append(("method.fake_lora_targets", list(fake_targets)))
    return keys


def check_lora_targets(cfg) -> None:
    """LoRA targets that match no layer fail here, resolved against the teacher's UNet built from its
    ``unet/config.json`` on the meta device: before any weight is loaded. (A fresh tiny pipeline has no
    weights to wait for: ``add_lora`` checks its targets as it is built; a hub id is checked on load.)"""
    keys = lora_target_keys(cfg)
    if not keys or not cfg.model.pretrained or cfg.model.tiny:
        return
    from fewstep.distill.students import lora_target_modules
    from fewstep.pipelines.teacher import unet_skeleton

    unet = unet_skeleton(cfg.model.pretrained, cfg.model.revision)
    for key, patterns in keys if unet is not None else []:
        lora_target_modules(unet, patterns, key)


def _resume_point(args, run_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names, verified (nothing loaded yet): ``latest`` falls back past
    damaged checkpoints with one line; an explicit damaged folder is an error naming the file."""
    from fewstep.distill import checkpoints

    if args.resume == "latest":
        path, note = checkpoints.resume_latest(run_dir)
        if note:
            print(f"fewstep: {note}", file=sys.stderr)
        elif path is None:
            print(f"fewstep: no finished checkpoint in {run_dir}/checkpoints; starting fresh", file=sys.stderr)
        return path
    path = Path(args.resume)
    if not (path / checkpoints.STATE_FILE).is_file() and not (path / checkpoints.MANIFEST_FILE).is_file():
        raise UserError(f"--resume {path}: not a finished fewstep checkpoint ({checkpoints.STATE_FILE} missing)")
    checkpoints.verify(path)  # no fallback: the user named this one
    return path


def _check_overrides(overrides: list[str]) -> None:
    """Each ``--set KEY=VALUE`` value must parse as YAML (``load_config`` reads it so)."""
    import yaml

    for assignment in overrides:
        try:
            yaml.safe_load(assignment.split("=", 1)[1] if "=" in assignment else "")
        except yaml.YAMLError as e:
            where = f" ({e.problem})" if getattr(e, "problem", None) else ""
            raise UserError(f"--set {assignment}: the value is not valid YAML{where}") from None


def _check_fresh(run_dir: Path) -> None:
    """A fresh run must not write into an earlier run's folder: its logs.jsonl would be appended to and
    its checkpoints would mix with the new ones (``--resume latest`` would then pick the old run's)."""
    earlier = [name for name in ("logs.jsonl", "checkpoints") if (run_dir / name).exists()]
    if earlier:
        raise UserError(f"output_dir: {run_dir} already holds a run ({', '.join(earlier)}); continue it with "
                        "--resume latest, or set another name (--set name=...) or remove the folder")


def cmd_train(args) -> int:
    from fewstep.distill.run_config import load_config

    _check_overrides(args.overrides)
    cfg = load_config(config_path(args.config), args.overrides)  # before anything heavy is imported: errors come fast
    check_output("output_dir", cfg.run_dir, folder=True)
    if not args.resume:
        _check_fresh(cfg.run_dir)
    from fewstep.distill.loop import Trainer, make_accelerator, preflight

    checked = preflight(cfg)  # phases, data files, images each phase needs: before the teacher is loaded
    if cfg.validation.metrics or cfg.eval.enabled:
        from fewstep.pipelines.validation import MetricValidator, check_inputs

        check_inputs(cfg)  # the metrics' reference folder and weights, also before the teacher
    if cfg.model.pretrained:  # a hub id missing from the cache offline, a damaged file: before any weight loads
        from fewstep.pipelines.teacher import locate

        locate(cfg.model.pretrained, cfg.model.revision, cfg.model.variant)
    check_lora_targets(cfg)
    if cfg.model.pretrained and not cfg.model.tiny:  # the data against the size the student generates at
        from fewstep.pipelines.teacher import native_size

        native = native_size(cfg.model.pretrained, cfg.model.revision)
        if native is not None:
            checked.method.check_native_size(checked.dataset, *native)
    resume = _resume_point(args, cfg.run_dir) if args.resume else None
    if resume is not None:
        from fewstep.distill.checkpoints import check_phases

        check_phases(resume, [p.name for p in checked.plans])  # another method's checkpoint: before the teacher
    pipe = _load_pipeline_for(cfg)
    acc = make_accelerator(cfg.train)
    validator = None
    if cfg.validation.metrics and acc.is_main_process:  # the other processes learn a stop by broadcast
        validator = MetricValidator.build(cfg, checked.validation_steps,
                                          pipe.unet.config.sample_size * pipe.vae_scale_factor, acc.device)
    trainer = Trainer(cfg, pipe, accelerator=acc, checked=checked, validator=validator)
    if resume is not None:
        trainer.load_checkpoint(resume, verified=True)
        print(f"fewstep: resumed from {resume} at step {trainer.step}", file=sys.stderr)
    models = trainer.train()
    if trainer.stopped and trainer.acc.is_main_process:  # a planned outcome: the final weights still export
        print(f"fewstep: {trainer.stopped}", file=sys.stderr)
    if not args.no_export and trainer.acc.is_main_process:
        from fewstep.distill.loop import eager_sampling
        from fewstep.pipelines.export import export_run

        with eager_sampling(cfg.train.compile):
            out = export_run(trainer.method, models, cfg, cfg.run_dir / "export",
                             grid_prompts=trainer.val_batch["captions"])
        print(f"fewstep: exported to {out}", file=sys.stderr)
    if cfg.eval.enabled and trainer.acc.is_main_process:
        if args.no_export:
            print("fewstep: eval.enabled but --no-export: nothing to evaluate", file=sys.stderr)
            return 0
        from fewstep.pipelines.evaluate import evaluate_run

        del trainer, models, pipe, validator  # the sweep loads the export afresh
        paths = evaluate_run(cfg.run_dir, device=_device("auto"))
        print(f"fewstep: evaluation report {paths['report_md']}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from fewstep.distill.run_config import load_config

    run = Path(args.run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a fewstep run directory (config.yaml missing)")
    out = Path(args.out) if args.out else run / ("export-fused" if args.fuse else "export")
    check_output("--out", out, folder=True)
    if args.step is not None:
        bounds(ge=0).check("--step", args.step)
    from fewstep.distill.checkpoints import checkpoint_at, resume_latest
    from fewstep.distill.restore import restore, validation_batch
    from fewstep.pipelines.export import export_run

    cfg = load_config(run / "config.yaml")
    cfg.output_dir, cfg.name = str(run.parent), run.name
    if args.step is not None:
        newest, note = checkpoint_at(run, args.step), None
    else:
        newest, note = resume_latest(run)  # the newest whole checkpoint; a damaged newer one is named
    if newest is None:
        raise UserError(f"{run} has no finished checkpoint under checkpoints/ (was the run killed before its "
                        "first save? resume it with fewstep train CONFIG --resume latest)")
    if note:
        print(f"fewstep: {note}", file=sys.stderr)
    captions = validation_batch(cfg)["captions"]  # a missing data source is named before the teacher loads
    # the trained weights alone: no optimizer, data loader, compiled graphs or method setup (DMD2's pairs)
    method, models, step = restore(cfg, _load_pipeline_for(cfg), newest, verified=True)
    export_run(method, models, cfg, out, fuse=args.fuse, grid_prompts=captions)
    print(f"fewstep: exported step {step} of {run} to {out}", file=sys.stderr)
    return 0


def _check_sample_args(args) -> None:
    """Every ``fewstep sample`` number and the scheduler name, before any model is loaded."""
    for flag, value, rng in (("--steps", args.steps, bounds(ge=1)), ("--num-images", args.num_images, bounds(ge=1)),
                             ("--guidance", args.guidance, Range()), ("--seed", args.seed, bounds(ge=0))):
        if value is not None:
            rng.check(flag, value)
    if args.scheduler is not None:
        from fewstep.pipelines.sample import check_scheduler

        check_scheduler(args.scheduler)


def cmd_sample(args) -> int:
    _check_sample_args(args)
    check_output("--out", args.out, folder=False)
    from fewstep.pipelines.sample import sample_grid

    recipe = sample_grid(args.pipeline, args.prompt, Path(args.out), lora=args.lora, num_images=args.num_images,
                         steps=args.steps, guidance=args.guidance, scheduler=args.scheduler, seed=args.seed,
                         revision=args.revision, variant=args.variant)
    print(f"fewstep: wrote {args.out} ({len(args.prompt) * args.num_images} images, {recipe.scheduler}, "
          f"{recipe.steps} steps, guidance {recipe.guidance})", file=sys.stderr)
    return 0


def _int_list(flag: str, text: str | None, rng: Range, allow_empty: bool = False) -> list[int] | None:
    """``text`` as a list of integers in ``rng`` (``''``: the empty list where ``allow_empty``)."""
    if text is None:
        return None
    if allow_empty and not text.strip():
        return []
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    for v in values:
        rng.check(flag, v)
    return values


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _eval_flags(args) -> dict:
    """The EvalConfig overrides of ``fewstep eval``, each checked against its field's range, and the
    other numbers and the device checked too: all before anything heavy is imported."""
    flags = {"steps": _int_list("--steps", args.steps, field_range(EvalConfig, "steps")),
             "teacher_steps": _int_list("--teacher-steps", args.teacher_steps, field_range(EvalConfig, "teacher_steps"),
                                        allow_empty=True),
             "num_images": args.num_images, "guidance": args.guidance, "teacher_guidance": args.teacher_guidance,
             "features": args.features, "inception_weights": args.inception_weights, "clip": args.clip,
             "reference": args.reference, "batch_size": args.batch_size}
    for key in ("num_images", "batch_size", "guidance", "teacher_guidance"):
        if flags[key] is not None:
            (field_range(EvalConfig, key) or Range()).check("--" + key.replace("_", "-"), flags[key])
    for flag, value in (("--latency-batch", args.latency_batch), ("--reference-images", args.reference_images)):
        if value is not None:
            bounds(ge=1).check(flag, value)
    if not DEVICE.fullmatch(args.device):
        raise UserError(f"--device {args.device}: expected auto, cpu, cuda, cuda:N or mps")
    return {k: v for k, v in flags.items() if v is not None}


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def cmd_eval(args) -> int:
    import dataclasses

    flags = _eval_flags(args)
    extra = {"bootstrap": args.bootstrap, "fid_infinity_resamples": args.fid_infinity_resamples,
             "diversity_prompts": args.diversity_prompts, "diversity_seeds": args.diversity_seeds}
    for flag, value in extra.items():
        if value is not None and value < (0 if flag == "fid_infinity_resamples" else 1):
            raise UserError(f"--{flag.replace('_', '-')} {value}: must be a positive number")
    from fewstep.pipelines import evaluate as ev

    if args.run:
        if args.pipeline or args.lora:
            raise UserError("--run evaluates the run's export: leave out --pipeline / --lora")
        which = "best" if args.best else "export"
        src = ev.run_entries(args.run, export_dir=which)
        config = dataclasses.replace(src.config, **flags)
        src = ev.run_entries(args.run, config, teacher=args.teacher, scheduler=args.scheduler,
                             leading_baseline=args.teacher_leading, export_dir=which)
        entries, out = src.entries, Path(args.out) if args.out else src.out
    elif args.best:
        raise UserError("--best needs --run RUN_DIR")
    elif args.pipeline:
        config = dataclasses.replace(EvalConfig(), **flags)
        if args.teacher is None and "teacher_steps" in flags:
            raise UserError("--teacher-steps without --teacher")
        entries = ev.build_entries(args.pipeline, config, lora=args.lora, teacher=args.teacher,
                                   scheduler=args.scheduler, leading_baseline=args.teacher_leading)
        out = Path(args.out) if args.out else Path("runs") / f"eval-{entries[-1].name}"
    else:
        raise UserError("give --pipeline DIR (with --lora, --teacher as needed) or --run RUN_DIR")
    check_output("--out", out, folder=True)
    from fewstep.pipelines.sample import check_lora_file

    for entry in entries:
        if entry.lora:
            check_lora_file("--lora" if args.lora else "--run", Path(entry.lora))
    prompts = None
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise UserError(f"--prompts {path}: file not found")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    spec = ev.spec_from_config(config, prompts=prompts, reference_images=args.reference_images,
                               latency_batch=args.latency_batch, cache_dir=args.cache_dir, device=_device(args.device),
                               floor=not args.no_floor, **{k: v for k, v in extra.items() if v is not None})
    paths = ev.run_sweep(entries, spec, out)
    print(f"fewstep: wrote {paths['report_md']} ({', '.join(p.name for k, p in paths.items() if k != 'report_md')})",
          file=sys.stderr)
    return 0


def cmd_build_classifier(args) -> int:
    from fewstep.pipelines.judge_config import ClassifierBuildConfig, load_build_config

    cfg = load_build_config(args.config, ClassifierBuildConfig)  # before torch is imported: errors come fast
    check_output("--out", args.out, folder=True)
    from fewstep.pipelines.build_classifier import build_classifier

    _, record = build_classifier(cfg, args.out)
    print(f"fewstep: wrote {args.out}; held-out accuracy {json.dumps(record['val_accuracy'])}", file=sys.stderr)
    return 0


def cmd_build_tiny_clip(args) -> int:
    from fewstep.pipelines.judge_config import TinyClipBuildConfig, load_build_config

    cfg = load_build_config(args.config, TinyClipBuildConfig)
    check_output("--out", args.out, folder=True)
    from fewstep.pipelines.build_tiny_clip import build_tiny_clip

    record = build_tiny_clip(cfg, args.out)
    print(f"fewstep: wrote {args.out}; held-out retrieval {json.dumps(record['val_retrieval'])}", file=sys.stderr)
    return 0


# The errors a user can fix (each message names the key or file); main prints any of them as one line.
USER_ERRORS = (UserError, ConfigError, DivergedError, TeacherError, LoraBaseError, EvalError, MetricsError, ClipError)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line. An error raised in a DataLoader worker arrives wrapped in
    the worker's traceback ("Caught ConfigError in DataLoader worker process 0 ... Original Traceback"):
    its own message is the last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Original Traceback" in str(error) and lines:
        lines = [lines[-1].split(": ", 1)[-1]]
    return " ".join(lines)


COMMANDS = {"train": cmd_train, "export": cmd_export, "sample": cmd_sample, "eval": cmd_eval, "cache": cmd_cache,
            "build-classifier": cmd_build_classifier, "build-tiny-clip": cmd_build_tiny_clip}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    args = _parser().parse_args(argv)
    retain_freed_memory()  # each step's activations stay in the process instead of faulting back in
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"fewstep: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
