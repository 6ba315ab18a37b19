"""Loading a teacher: a diffusers Stable-Diffusion pipeline from a local folder or a hub id.

Nothing is fetched from the network unless the user passes a hub id (a string that is not an
existing path); a local path that is not a diffusers pipeline fails before any work with a message
naming the missing file.
"""
from __future__ import annotations

import json
from pathlib import Path

from diffusers import StableDiffusionPipeline

from fewstep.eval.assets import assets_dir
from fewstep.pipelines.errors import TeacherError

ASSETS = assets_dir()
REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def resolve(name: str) -> str:
    """Map the embedded names (``tiny-sd``, ``tiny-sd-v``) to their folders in assets/."""
    if not Path(name).exists() and (ASSETS / name / "model_index.json").is_file():
        return str(ASSETS / name)
    return name


def check_pipeline_dir(path: str | Path) -> None:
    """Raise TeacherError naming what is missing if ``path`` is not a diffusers SD pipeline."""
    path = Path(path)
    index = path / "model_index.json"
    if not path.is_dir():
        raise TeacherError(f"teacher path {path} is not a directory")
    if not index.is_file():
        raise TeacherError(f"{path} is not a diffusers pipeline: {index.name} is missing "
                           "(expected a folder written by pipeline.save_pretrained)")
    try:
        spec = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise TeacherError(f"{index} is not valid JSON ({e})") from None
    missing = [c for c in REQUIRED if c not in spec or not (path / c).is_dir()]
    if missing:
        raise TeacherError(f"{path} lacks the pipeline component(s) {', '.join(missing)}")


def load_pipeline(name: str, **kwargs) -> StableDiffusionPipeline:
    """Load a Stable-Diffusion pipeline (local dir, embedded name, or hub id) on the CPU in fp32."""
    name = resolve(name)
    if Path(name).exists() or name.startswith((".", "/", "~")):
        check_pipeline_dir(name)
        kwargs.setdefault("local_files_only", True)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(name, safety_checker=None,
                                                       requires_safety_checker=False, **kwargs)
    except OSError as e:
        raise TeacherError(f"could not load teacher {name!r}: {str(e).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe
