"""Writing a trained model as a plain diffusers pipeline with a model card, atomically.

The export folder is written under a temporary name and renamed into place only when complete,
so a killed export never leaves a folder that looks loadable.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from distill.sampling import Recipe, apply_recipe, generate, save_grid


def _atomic_dir(out: Path, write) -> Path:
    out = Path(out)
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = out.with_name(f".old-{out.name}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    return out


def model_card(title: str, base_model: str | None, recipe: Recipe, body: str, tags: list[str]) -> str:
    """README.md with the YAML front matter the Hugging Face hub and diffusers read."""
    front = {"library_name": "diffusers", "pipeline_tag": "text-to-image",
             "tags": ["text-to-image", "diffusers", "fewstep", *tags]}
    if base_model:
        front["base_model"] = base_model
    usage = (
        "```python\n"
        "import torch, diffusers\n"
        "pipe = diffusers.StableDiffusionPipeline.from_pretrained(PATH)\n"
        f"pipe.scheduler = diffusers.{recipe.scheduler}.from_config(pipe.scheduler.config"
        + "".join(f", {k}={v!r}" for k, v in recipe.scheduler_kwargs.items()) + ")\n"
        f"image = pipe(PROMPT, num_inference_steps={recipe.steps}, guidance_scale={recipe.guidance}).images[0]\n"
        "```\n"
    )
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {title}\n\n{body}\n\n"
            f"## Recipe\n\n- scheduler: `{recipe.scheduler}` {recipe.scheduler_kwargs or ''}\n"
            f"- steps: {recipe.steps}\n- guidance_scale: {recipe.guidance}\n\n## Usage\n\n{usage}")


def export_pipeline(pipe, recipe: Recipe, out: str | Path, *, title: str, base_model: str | None = None,
                    body: str = "", grid_prompts: list[str] | None = None, config: dict | None = None) -> Path:
    """``save_pretrained`` with the recipe's stock scheduler, a model card and a sample grid."""
    def write(tmp: Path):
        apply_recipe(pipe, recipe)
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "fewstep_recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        if config is not None:
            (tmp / "fewstep_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        text = body
        if grid_prompts:
            imgs = generate(pipe, grid_prompts, recipe.steps, recipe.guidance, seed=0)
            save_grid(imgs, tmp / "samples.png")
            text += "\n\n![samples](samples.png)\n\nPrompts (row-major): " + "; ".join(grid_prompts)
        (tmp / "README.md").write_text(model_card(title, base_model, recipe, text, ["fewstep-export"]))

    return _atomic_dir(Path(out), write)
