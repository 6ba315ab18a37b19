"""``fewstep sample``: an image grid from a pipeline (a folder, an embedded name, or a hub id at a revision
and variant), optionally with a LoRA export on it, sampled with the stock-scheduler recipe the export
carries (``fewstep_recipe.json``); flags override the recipe's scheduler, steps and guidance.

A LoRA export loads onto the files of its base that it was trained on: the ``model.revision`` /
``model.variant`` its run config names (``teacher.export_pins``), unless ``--revision`` / ``--variant``
say otherwise; a LoRA on another base is refused by its fingerprint (``export.check_lora_base``).
Imports here are light: the command line checks its arguments with these functions before torch loads.
"""
from __future__ import annotations

import json
from pathlib import Path

from fewstep.pipelines.errors import UserError

DEFAULT_STEPS, DEFAULT_GUIDANCE = 25, 3.0  # a pipeline without a fewstep recipe: its own scheduler at these


def check_lora_file(flag: str, folder: Path, whole: bool = True) -> None:
    """``folder`` holds ``pytorch_lora_weights.safetensors``, and with ``whole`` one whose framing is
    intact (a truncated file is named here, not in a traceback from inside ``load_lora_weights``)."""
    weights = folder / "pytorch_lora_weights.safetensors"
    if not weights.is_file():
        raise UserError(f"{flag} {folder}: pytorch_lora_weights.safetensors not found")
    if not whole:
        return
    from fewstep.pipelines.teacher import safetensors_problem

    problem = safetensors_problem(weights)
    if problem:
        raise UserError(f"{flag} {folder}: {weights.name}: {problem}")


def check_scheduler(name: str) -> None:
    """``name`` must be a diffusers scheduler class (a ``SchedulerMixin`` subclass)."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise UserError(f"--scheduler {name}: not a diffusers scheduler class (e.g. LCMScheduler, DDIMScheduler)")


def read_recipe(path: Path):
    """A ``fewstep_recipe.json``; a damaged one is named instead of failing inside the sampler."""
    from fewstep.distill.sampling import Recipe

    try:
        return Recipe(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: not a fewstep recipe ({type(e).__name__}: {e})") from None


def load_lora_fused(pipe, folder) -> None:
    """Load the LoRA in ``folder`` onto ``pipe`` and fuse it into the base weights (UNet, and text
    encoder if the file carries one), leaving plain modules: the unfused peft side-branches cost every
    UNet call (measured 1.14x per call on the SD1.5 architecture, 1.6-1.8x on the tiny teacher on CPU).
    The result is the unfused function: the merge adds ``scaling * B @ A`` with the adapter's own
    ``alpha / rank`` (from the file's metadata), and ``lora_scale=1`` is the scale an unfused adapter
    samples at when no ``cross_attention_kwargs`` scale is passed, as ours never is."""
    pipe.load_lora_weights(str(folder))
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()  # removes the peft wrappers; their merged base weights stay


def load_for_sampling(pipeline: str, lora: str | None = None, revision: str | None = None,
                      variant: str | None = None):
    """``(pipe, recipe)``: ``pipeline`` at ``revision`` / ``variant`` (both None: those the LoRA export
    ``lora`` was trained on, else main and the plain files) with ``lora`` fused into it, and the recipe of
    the LoRA folder, else of the pipeline folder, else the pipeline's own scheduler."""
    from fewstep.distill.sampling import Recipe
    from fewstep.pipelines.export import check_lora_base
    from fewstep.pipelines.teacher import Pin, export_pins, load_pipeline, resolve

    if lora:
        check_lora_file("--lora", Path(lora), whole=False)  # before the pipeline is loaded
    flags = bool(revision or variant)
    pin = Pin(revision, variant) if flags else export_pins(lora).get(pipeline, Pin())
    pipe = load_pipeline(pipeline, pin.revision, pin.variant,
                         keys=("--revision", "--variant") if flags else ("model.revision", "model.variant"))
    own = Path(resolve(pipeline, pin.revision)) / "fewstep_recipe.json"
    recipe = read_recipe(own) if own.is_file() else Recipe(type(pipe.scheduler).__name__, {}, DEFAULT_STEPS,
                                                           DEFAULT_GUIDANCE)
    if lora:
        check_lora_base(lora, pipe.unet)  # the likelier mistake first: a LoRA of another base
        check_lora_file("--lora", Path(lora))
        load_lora_fused(pipe, lora)
        if (Path(lora) / "fewstep_recipe.json").is_file():
            recipe = read_recipe(Path(lora) / "fewstep_recipe.json")
    return pipe, recipe


def sample_grid(pipeline: str, prompts: list[str], out: Path, *, lora: str | None = None, num_images: int = 1,
                steps: int | None = None, guidance: float | None = None, scheduler: str | None = None,
                seed: int = 0, revision: str | None = None, variant: str | None = None):
    """Write ``num_images`` images of each prompt (image i with generator seed ``seed + i``) as one PNG grid
    at ``out``, a row per prompt when there are several; returns the recipe sampled with."""
    from fewstep.distill.sampling import apply_recipe, generate, save_grid

    pipe, recipe = load_for_sampling(pipeline, lora, revision, variant)
    recipe.scheduler = scheduler or recipe.scheduler
    recipe.steps = steps or recipe.steps
    recipe.guidance = recipe.guidance if guidance is None else guidance
    check_scheduler(recipe.scheduler)
    try:
        recipe.check_steps(recipe.steps)
    except ValueError as e:
        raise UserError(f"--steps: {e}") from None
    apply_recipe(pipe, recipe)
    images = generate(pipe, [p for p in prompts for _ in range(num_images)], recipe.steps, recipe.guidance, seed)
    save_grid(images, Path(out), ncol=num_images if len(prompts) > 1 else 8)
    return recipe
