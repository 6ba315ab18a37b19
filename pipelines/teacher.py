"""Loading a teacher: a diffusers Stable-Diffusion pipeline from a local folder or a hub id.

Nothing is fetched from the network unless the user passes a hub id (a string that is not an
existing path); a local path that is not a diffusers pipeline fails before any work with a message
naming the missing file, and a truncated or overwritten ``.safetensors`` weight file is named before
diffusers reads it (its header says how long it must be). The UNet can also be built from its config
alone, on the meta device, so settings that depend on its layers are checked without its weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from diffusers import StableDiffusionPipeline
from safetensors import SafetensorError

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
    for component in sorted(c for c in spec if not c.startswith("_") and (path / c).is_dir()):
        for weights in sorted((path / component).glob("*.safetensors")):
            problem = safetensors_problem(weights)
            if problem:
                raise TeacherError(f"{weights}: {problem} (a damaged teacher file: copy or download it again)")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a ``.safetensors`` file's framing, or None: the 8-byte header length, the JSON
    header and the end of its last tensor must account for the file's size exactly. Reads the header
    only; a changed byte inside tensor data is not seen (nothing records the teacher's hashes)."""
    size = path.stat().st_size
    if size < 8:
        return f"truncated: {size} bytes, not a safetensors file"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            return f"truncated or not a safetensors file: {size} bytes, its header alone claims {n + 8}"
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
            return "not a safetensors file (unreadable header)"
    if 8 + n + end != size:
        return f"truncated: {size} of {8 + n + end} bytes" if size < 8 + n + end else \
            f"{size} bytes, its header accounts for {8 + n + end}"
    return None


def unet_skeleton(name: str):
    """The UNet of the local pipeline ``name`` built from ``unet/config.json`` on the meta device (no
    weight is read or allocated), or None where there is no local config (a hub id)."""
    folder = Path(resolve(name)) / "unet"
    if not (folder / "config.json").is_file():
        return None
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    try:
        config = UNet2DConditionModel.load_config(folder)
    except (OSError, ValueError) as e:
        raise TeacherError(f"{folder / 'config.json'}: not a readable UNet config ({str(e).splitlines()[0]})") from None
    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


def load_pipeline(name: str, **kwargs) -> StableDiffusionPipeline:
    """Load a Stable-Diffusion pipeline (local dir, embedded name, or hub id) on the CPU in fp32."""
    name = resolve(name)
    if Path(name).exists() or name.startswith((".", "/", "~")):
        check_pipeline_dir(name)
        kwargs.setdefault("local_files_only", True)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(name, safety_checker=None,
                                                       requires_safety_checker=False, **kwargs)
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as e:  # a damaged or mismatched file
        raise TeacherError(f"could not load teacher {name!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe
