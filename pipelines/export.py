"""Writing a trained model as a plain diffusers pipeline with a model card, atomically.

The export folder is written under a temporary name and renamed into place only when complete,
so a killed export never leaves a folder that looks loadable.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
import yaml

from fewstep.distill.files import atomic_dir
from fewstep.distill.sampling import Recipe, apply_recipe, generate, save_grid
from fewstep.pipelines.errors import LoraBaseError


def card_value(v) -> str:
    """A scheduler setting as the card shows it: a long list (a schedule's betas) by its length and ends;
    the exact values are in scheduler/scheduler_config.json."""
    if isinstance(v, (list, tuple)) and len(v) > 6:
        return f"[{v[0]!r}, ..., {v[-1]!r}] ({len(v)} values, in scheduler/scheduler_config.json)"
    return repr(v)


def model_card(title: str, base_model: str | None, recipe: Recipe, body: str, tags: list[str],
               load: str | None = None) -> str:
    """README.md with the YAML front matter the Hugging Face hub and diffusers read. ``load``: the usage
    lines that build ``pipe`` with its scheduler (default: a full pipeline folder)."""
    front = {"library_name": "diffusers", "pipeline_tag": "text-to-image",
             "tags": ["text-to-image", "diffusers", "fewstep", *tags]}
    if base_model:
        front["base_model"] = base_model
    kwargs = "".join(f", {k}={card_value(v)}" for k, v in recipe.scheduler_kwargs.items())
    load = load or ("pipe = diffusers.StableDiffusionPipeline.from_pretrained(PATH)  # carries its scheduler:\n"
                    f"# {recipe.scheduler}{kwargs}\n")
    usage = ("```python\nimport torch, diffusers\n" + load +
             f"image = pipe(PROMPT, num_inference_steps={recipe.steps}, guidance_scale={recipe.guidance}).images[0]\n"
             "```\n")
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {title}\n\n{body}\n\n"
            f"## Recipe\n\n- scheduler: `{recipe.scheduler}`{kwargs}\n"
            f"- steps: {recipe.steps}\n- guidance_scale: {recipe.guidance}\n\n## Usage\n\n{usage}")


def _write_common(tmp: Path, pipe, recipe: Recipe, config: dict | None, body: str,
                  grid_prompts: list[str] | None) -> str:
    """Recipe, resolved config and sample grid (sampled with the recipe) of any export; returns the
    model card body with the grid added."""
    (tmp / "fewstep_recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    if config is not None:
        (tmp / "fewstep_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if not grid_prompts:
        return body
    apply_recipe(pipe, recipe)
    save_grid(generate(pipe, grid_prompts, recipe.steps, recipe.guidance, seed=0), tmp / "samples.png")
    return body + "\n\n![samples](samples.png)\n\nPrompts (row-major): " + "; ".join(grid_prompts)


def export_pipeline(pipe, recipe: Recipe, out: str | Path, *, title: str, base_model: str | None = None,
                    body: str = "", grid_prompts: list[str] | None = None, config: dict | None = None) -> Path:
    """``save_pretrained`` with the recipe's stock scheduler, a model card and a sample grid."""
    def write(tmp: Path):
        apply_recipe(pipe, recipe)
        pipe.save_pretrained(tmp, safe_serialization=True)
        text = _write_common(tmp, pipe, recipe, config, body, grid_prompts)
        (tmp / "README.md").write_text(model_card(title, base_model, recipe, text, ["fewstep-export"]))

    with atomic_dir(out) as tmp:
        write(tmp)
    return Path(out)


def base_fingerprint(unet) -> str:
    """A short hash of a base UNet (architecture and a few weights), stored with LoRA exports so a
    LoRA loaded onto a different base is caught with a clear message instead of silent garbage."""
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    state = unet.state_dict()
    for key in ("conv_in.weight", "conv_out.weight"):
        weight = state.get(key, state.get(f"{key.rsplit('.', 1)[0]}.base_layer.weight"))
        h.update(weight.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def lora_state_dict(unet) -> dict:
    """The UNet's LoRA weights with peft key names, which ``load_lora_weights`` reads directly.

    (``convert_state_dict_to_diffusers`` renames attention LoRAs to the old ``lora.down`` form,
    which diffusers 0.42 then fails to match, silently dropping them: measured, not assumed.)
    """
    from peft.utils import get_peft_model_state_dict

    # contiguous: a train.channels_last run holds its conv LoRA factors NHWC, which safetensors refuses
    return {k: v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def save_lora(pipe, folder) -> None:
    """``pytorch_lora_weights.safetensors`` with the adapter's rank/alpha metadata (so alpha != rank
    loads with the right scale)."""
    meta = pipe.unet.peft_config["default"].to_dict()
    meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}
    type(pipe).save_lora_weights(folder, unet_lora_layers=lora_state_dict(pipe.unet), safe_serialization=True,
                                 unet_lora_adapter_metadata=meta)


def export_lora(pipe, recipe: Recipe, out: str | Path, *, title: str, base_model: str | None, base_unet,
                body: str = "", grid_prompts: list[str] | None = None, config: dict | None = None) -> Path:
    """``pytorch_lora_weights.safetensors`` + ``scheduler/`` (stock config) + recipe + base fingerprint +
    model card (+ sample grid).

    ``pipe`` is the base pipeline whose UNet carries the trained adapter; ``base_unet`` the same UNet
    (its base weights are fingerprinted with the adapter layers' base weights).
    """
    def write(tmp: Path):
        save_lora(pipe, tmp)
        apply_recipe(pipe, recipe)  # the stock scheduler it was trained for, loadable on its own:
        pipe.scheduler.save_pretrained(tmp / "scheduler")  # Scheduler.from_pretrained(PATH, subfolder="scheduler")
        (tmp / "fewstep_base.json").write_text(json.dumps({"base_model": base_model,
                                                           "fingerprint": base_fingerprint(base_unet)}))
        text = _write_common(tmp, pipe, recipe, config, body, grid_prompts)
        (tmp / "README.md").write_text(lora_card(title, base_model, recipe, text))

    with atomic_dir(out) as tmp:
        write(tmp)
    return Path(out)


def lora_card(title: str, base_model: str | None, recipe: Recipe, body: str) -> str:
    load = ("pipe = diffusers.StableDiffusionPipeline.from_pretrained(BASE_MODEL)\n"
            "pipe.load_lora_weights(PATH)  # this folder\n"
            f"pipe.scheduler = diffusers.{recipe.scheduler}.from_pretrained(PATH, subfolder='scheduler')\n")
    return model_card(title, base_model, recipe, body, ["lora", "fewstep-export"], load)


def check_lora_base(lora_dir: str | Path, unet) -> None:
    """Raise LoraBaseError if ``unet`` is not the base the LoRA in ``lora_dir`` was trained on."""
    meta = Path(lora_dir) / "fewstep_base.json"
    if not meta.is_file():
        return  # not a fewstep export: nothing to compare against
    info = json.loads(meta.read_text())
    got = base_fingerprint(unet)
    if got != info["fingerprint"]:
        raise LoraBaseError(f"the LoRA in {lora_dir} was trained on base {info.get('base_model')!r} "
                            f"(fingerprint {info['fingerprint']}), not on this pipeline (fingerprint {got}); "
                            "load it onto the base model named in its README")


def export_run(method, models, cfg, out: str | Path, fuse: bool = False, grid_prompts: list[str] | None = None) -> Path:
    """Export a trained run: LoRA weights for LoRA students (or, with ``fuse``, a full pipeline with
    the LoRA fused in), a full pipeline otherwise. Always with recipe, config and model card."""
    import tempfile

    from fewstep.distill.config import to_dict
    from fewstep.distill.modelset import unwrap
    from fewstep.pipelines.teacher import run_teacher

    pipe, recipe = method.to_pipeline(models)
    mixed = cfg.train.mixed_precision != "no"
    common = dict(title=f"fewstep {cfg.method.name} student ({cfg.name})", base_model=cfg.model.pretrained,
                  config=to_dict(cfg), grid_prompts=grid_prompts,
                  body=f"Distilled with fewstep method `{cfg.method.name}` "
                       f"({cfg.student.kind} student, {cfg.train.steps} steps"
                       f"{f', {cfg.train.mixed_precision} mixed precision' if mixed else ''}). "
                       f"Trained step counts: {recipe.trained_steps or 'any'}.")
    if cfg.student.kind != "lora":
        return export_pipeline(full_precision(pipe, cfg.model) if mixed else pipe, recipe, out, **common)
    if not fuse and not mixed:
        return export_lora(pipe, recipe, out, base_unet=unwrap(models["student"]).unet, **common)
    # Fused, or a mixed-precision run (whose base UNet was stored in bf16/fp16 while the adapters stayed
    # float32): the adapters go onto a fresh full-precision base, as a user loads them, and the
    # fingerprint and the sample grid come from that base.
    with tempfile.TemporaryDirectory() as tmp:
        save_lora(pipe, tmp)
        fresh = run_teacher(cfg)  # with its revision, variant and prediction type (a tiny run: its seeded one)
        fresh.load_lora_weights(tmp, adapter_name="default")  # the name save_lora reads
    if not fuse:
        return export_lora(fresh, recipe, out, base_unet=fresh.unet, **common)
    fresh.fuse_lora()
    fresh.unload_lora_weights()
    return export_pipeline(fresh, recipe, out, **common)


def _low_precision(module) -> bool:
    return any(p.is_floating_point() and p.dtype != torch.float32 for p in module.parameters())


def full_precision(pipe, model):
    """A mixed-precision run stores its frozen networks (VAE, text encoder, teacher) in bf16/fp16; an
    export must carry the originals. Every component still in low precision is taken from a fresh load
    of the teacher ``model`` (a ``ModelConfig``; or, for a pipeline built from scratch, cast back to float32)."""
    from fewstep.pipelines.teacher import load_teacher

    comps = dict(pipe.components)
    low = [n for n, m in comps.items() if isinstance(m, torch.nn.Module) and _low_precision(m)]
    if not low:
        return pipe
    fresh = load_teacher(model) if model.pretrained else None
    for name in low:  # a copy: the run's own module keeps its dtype (best/ is exported mid-training)
        comps[name] = getattr(fresh, name) if fresh is not None else copy.deepcopy(comps[name]).float()
    kwargs = {"requires_safety_checker": False} if "safety_checker" in comps else {}
    out = type(pipe)(**comps, **kwargs)
    out.set_progress_bar_config(disable=True)
    return out
