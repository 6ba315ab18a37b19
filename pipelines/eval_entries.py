"""What an evaluation sweep compares: model entries (pipeline, optional LoRA, stock-scheduler recipe, steps).

A student's recipe comes from the ``fewstep_recipe.json`` of its LoRA folder, else of its pipeline
folder (what ``pipelines.export`` writes), else the pipeline's own scheduler. The teacher samples
with DDIMScheduler and *trailing* timestep spacing (1 step: t = 999; 2: 999, 499; 4: 999, 749,
499, 249), as SDXL-Lightning, Hyper-SD and TCD compare: SD1.5's default "leading" spacing starts
a 1-step sampler at t = 1 and a 2-step one at t = 501, so its few-step rows would measure a sampler
that never starts from pure noise, not the teacher. A leading-spacing row can be added, labelled as
what a default pipeline does. A hub id loads at the revision and variant its run was trained on
(``pins``: ``model.revision`` / ``model.variant`` of the run config, or of a LoRA export's own config). Nothing
here loads a model: :mod:`pipelines.evaluate` does, after checking every entry.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from fewstep.distill.config import EvalConfig
from fewstep.distill.sampling import Recipe
from fewstep.pipelines.errors import EvalError
from fewstep.pipelines.teacher import Pin, export_pins, resolve

DEFAULT_GUIDANCE = 7.5  # StableDiffusionPipeline's own default, for pipelines without a fewstep recipe
STUDENT_STEPS = (1, 2, 4, 8)  # default student step counts (those the student was trained for)
TEACHER_METHODS = ("denoise", "vae")  # runs that train a teacher: their export is evaluated as the teacher
TEACHER_SPACING = "trailing"  # DDIM timestep spacing of teacher rows (module docstring)
LEADING_NAME = "teacher (default pipeline, leading)"  # the optional leading-spacing baseline row


@dataclass
class ModelEntry:
    """One model of a sweep, evaluated at each of ``steps``."""

    name: str  # row label; the grid shows "name @ steps"
    family: str  # one line per family in the plots
    pipeline: str  # diffusers pipeline folder, embedded name (tiny-sd) or hub id
    recipe: Recipe  # stock scheduler and kwargs ("" until loaded: the pipeline's own); guidance used
    steps: list[int]
    lora: str | None = None  # folder with pytorch_lora_weights.safetensors, loaded on top of ``pipeline``
    teacher: bool = False  # speedup is measured against the first teacher's largest step count
    revision: str | None = None  # of a hub id ``pipeline``: a branch, tag or commit (None: main)
    variant: str | None = None  # weight files of ``pipeline`` of this variant, e.g. "fp16" (None: the plain ones)


def read_recipe(folder: str | None, revision: str | None = None) -> Recipe | None:
    """The ``fewstep_recipe.json`` of a pipeline / LoRA folder (or embedded name, or cached hub id at
    ``revision``), if it has one."""
    path = Path(resolve(folder, revision)) / "fewstep_recipe.json" if folder else None
    return Recipe(**json.loads(path.read_text())) if path is not None and path.is_file() else None


def _label(folder: str) -> str:
    """A row name for a folder: runs/<name>/export(-fused) -> <name>(-fused); a hub id -> its last part."""
    p = Path(folder)
    return p.resolve().parent.name + p.name[len("export"):] if p.name.startswith("export") and p.exists() else p.name


def _family(folder: str, revision: str | None = None) -> str | None:
    """``<method>-<student kind>`` from the fewstep_config.yaml that exports carry."""
    import yaml

    path = Path(resolve(folder, revision)) / "fewstep_config.yaml"
    if not path.is_file():
        return None
    cfg = yaml.safe_load(path.read_text()) or {}
    method = (cfg.get("method") or {}).get("name")
    if method in TEACHER_METHODS:
        return method
    return f"{method}-{(cfg.get('student') or {}).get('kind', 'full')}" if method else None


def default_steps(recipe: Recipe) -> list[int]:
    """Those of 1, 2, 4, 8 steps the student was trained for (else its recipe's own count)."""
    return [s for s in STUDENT_STEPS if recipe.trained_steps is None or s in recipe.trained_steps] or [recipe.steps]


def teacher_entry(pipeline: str, steps: list[int], guidance: float | None = None, name: str = "teacher",
                  family: str | None = None, spacing: str = TEACHER_SPACING, pin: Pin = Pin()) -> ModelEntry:
    """The teacher (at ``pin``'s revision and variant) with DDIMScheduler (its recipe's DDIM settings if it
    has them, ``spacing`` always) at each of ``steps``.

    Guidance: ``guidance``, else the teacher's fewstep recipe, else diffusers' default 7.5.
    """
    own = read_recipe(pipeline, pin.revision)
    kwargs = dict(own.scheduler_kwargs) if own is not None and own.scheduler == "DDIMScheduler" else {}
    kwargs["timestep_spacing"] = spacing
    family = family or f"teacher (DDIM, {spacing})"
    if guidance is None:
        guidance = own.guidance if own is not None else DEFAULT_GUIDANCE
    steps = sorted(set(steps))
    return ModelEntry(name, family, pipeline, Recipe("DDIMScheduler", kwargs, steps[-1] if steps else 25, guidance),
                      steps, teacher=True, revision=pin.revision, variant=pin.variant)


def student_entry(pipeline: str, *, lora: str | None = None, steps: list[int] = (), guidance: float | None = None,
                  scheduler: str | None = None, name: str | None = None, family: str | None = None,
                  pin: Pin = Pin()) -> ModelEntry:
    """A student (``pipeline`` at ``pin``'s revision and variant, with ``lora`` on it): the recipe of its LoRA
    folder, else of its pipeline folder, else the pipeline's scheduler."""
    recipe = (read_recipe(lora) if lora else None) or read_recipe(pipeline, pin.revision)
    if recipe is None:  # not a fewstep export: the pipeline's own scheduler, known once loaded
        recipe = Recipe("", {}, 25, DEFAULT_GUIDANCE)
    if scheduler and scheduler != recipe.scheduler:  # the recipe's kwargs belong to its own scheduler class
        recipe = replace(recipe, scheduler=scheduler, scheduler_kwargs={})
    if guidance is not None:
        recipe.guidance = guidance
    name = name or _label(lora or pipeline)
    family = family or (_family(lora) if lora else _family(pipeline, pin.revision)) or name
    return ModelEntry(name, family, pipeline, recipe, sorted(set(steps)) or default_steps(recipe), lora,
                      revision=pin.revision, variant=pin.variant)


def build_entries(pipeline: str, config: EvalConfig, *, lora: str | None = None, teacher: str | None = None,
                  scheduler: str | None = None, name: str | None = None, family: str | None = None,
                  leading_baseline: bool = False, pins: dict[str, Pin] | None = None) -> list[ModelEntry]:
    """The teacher (if given, and ``config.teacher_steps`` not empty) at ``config.teacher_steps`` with
    trailing spacing, optionally again with a default pipeline's leading spacing, and the student at
    ``config.steps``. ``pins``: the revision and variant of a model id, wherever it is the teacher or the
    student's pipeline; by default those the LoRA export ``lora`` was trained on (``export_pins``)."""
    pins = export_pins(lora) if pins is None else pins
    entries = ([teacher_entry(teacher, config.teacher_steps, config.teacher_guidance, pin=pins.get(teacher, Pin()))]
               if teacher and config.teacher_steps else [])
    if entries and leading_baseline:
        entries.append(teacher_entry(teacher, config.teacher_steps, config.teacher_guidance, LEADING_NAME,
                                     "teacher (DDIM, leading: default pipeline)", spacing="leading",
                                     pin=pins.get(teacher, Pin())))
    return entries + [student_entry(pipeline, lora=lora, steps=config.steps, guidance=config.guidance,
                                    scheduler=scheduler, name=name, family=family, pin=pins.get(pipeline, Pin()))]


@dataclass
class RunEntries:
    """What a training run evaluates, with which settings, and where the report goes."""

    entries: list[ModelEntry]
    config: EvalConfig  # the run's ``eval:`` section unless the caller passed one
    out: Path  # runs/<name>/eval


def run_entries(run_dir: str | os.PathLike, config: EvalConfig | None = None, *, teacher: str | None = None,
                scheduler: str | None = None, leading_baseline: bool = False, export_dir: str = "export") -> RunEntries:
    """Entries for ``runs/<name>``: its export (a pipeline, or a LoRA on ``model.pretrained``) against
    the teacher ``model.pretrained``, each at ``model.revision`` and ``model.variant``. A run that trains a
    teacher (``denoise``) is evaluated alone, as a teacher, at ``steps + teacher_steps``. ``export_dir="best"``:
    the best validation's export instead, reported to ``runs/<name>/eval-best``.
    """
    from fewstep.distill.run_config import load_config

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise EvalError(f"{run} is not a fewstep run directory (config.yaml missing)")
    cfg = load_config(run / "config.yaml")
    config = config or cfg.eval
    export = run / export_dir
    out = run / ("eval" if export_dir == "export" else f"eval-{export_dir}")
    if not (export / "fewstep_recipe.json").is_file():
        hint = (f"write one with: fewstep export {run}" if export_dir == "export" else
                "it is written when a validation measures a metric (validation.metrics, validation.keep_best)")
        raise EvalError(f"{run} has no finished {export_dir} export ({export / 'fewstep_recipe.json'} missing); {hint}")
    if cfg.method.name in TEACHER_METHODS:
        steps = list(config.steps) + list(config.teacher_steps)
        entry = teacher_entry(str(export), steps, config.teacher_guidance, cfg.name, cfg.method.name)
        return RunEntries([entry], config, out)
    lora = (export / "pytorch_lora_weights.safetensors").is_file()
    if lora and not cfg.model.pretrained:
        raise EvalError(f"{export} holds a LoRA but {run / 'config.yaml'} names no model.pretrained base")
    pins = {cfg.model.pretrained: Pin(cfg.model.revision, cfg.model.variant)} if cfg.model.pretrained else {}
    entries = build_entries(cfg.model.pretrained if lora else str(export), config, lora=str(export) if lora else None,
                            teacher=teacher or cfg.model.pretrained, scheduler=scheduler, name=cfg.name,
                            family=f"{cfg.method.name}-{cfg.student.kind}", leading_baseline=leading_baseline,
                            pins=pins)
    return RunEntries(entries, config, out)
