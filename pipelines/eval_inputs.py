"""What a sweep scores against: prompts and their labels, the FID reference, and real images as a floor.

Three held-out splits of the procedural domain, each its own seed, none shared with training
(seeds 0 and 1) or with the judges' validation sets:

- :data:`PROMPT_SEED`: the scenes whose captions are the prompts;
- :data:`REFERENCE_SEED`: the FID reference images;
- :data:`FLOOR_SEED`: the *real images* row. Image i depicts prompt i (its caption's attributes)
  with this seed's jitter of position, size and shade, so it is scored exactly like a model
  (FID against the reference, CLIP and attribute accuracy against prompt i) and measures what a
  perfect sampler would get at this number of images: the floor of every metric.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

PROMPT_SEED = 777  # held-out procedural scenes whose captions are the prompts (as bench/attribute_quality.py)
VALIDATION_SEED = 888  # held-out scenes whose captions training validations use (never the eval's prompts)
REFERENCE_SEED = 12345  # held-out procedural scenes that are the FID reference
FLOOR_SEED = 4242  # held-out jitter of the real-images floor row
DIVERSITY_OFFSET = 1_000_000  # generator seeds / floor indices of the diversity images start here
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def image_files(folder: Path) -> list[Path]:
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


def default_reference_images(num_images: int) -> int:
    """Procedural reference size when none is given: 5x the images per row, at least 5,000 (the
    reference side's share of FID's small-sample bias shrinks with it; it is computed once, cached)."""
    return max(5 * num_images, 5000)


def reference_source(reference: str, num: int | None, num_images: int, resolution: int):
    """``(lazy image iterable, cache key)`` of the FID reference; the key names the source completely,
    including the procedural renderer's version, so a renderer change never reuses stale statistics."""
    if reference == "procedural":
        from fewstep.distill.data.procedural import RENDERER_VERSION, ProceduralDataset

        n = num or default_reference_images(num_images)
        ds = ProceduralDataset(REFERENCE_SEED)
        return (ds[i]["image"] for i in range(n)), f"procedural:renderer={RENDERER_VERSION}:seed={REFERENCE_SEED}:n={n}"
    folder = Path(reference).expanduser().resolve()
    files = image_files(folder)[:num]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = f"folder:{folder}:n={len(files)}:files={h.hexdigest()[:16]}:center-crop+lanczos:res={resolution}"
    return (_square(f, resolution) for f in files), key


def real_image(prompt: str, jitter_index: int) -> torch.Tensor:
    """uint8 CHW: the scene a procedural caption describes, with the jitter of floor scene ``jitter_index``."""
    from fewstep.distill.data.procedural import ATTRIBUTES, Scene, labels_from_caption, render, sample_scene

    names = {a: ATTRIBUTES[a][j] for a, j in zip(ATTRIBUTES, labels_from_caption(prompt))}
    jitter = sample_scene(FLOOR_SEED, jitter_index)
    scene = Scene(**names, dx=jitter.dx, dy=jitter.dy, scale=jitter.scale, shade=jitter.shade)
    return torch.from_numpy(render(scene)).permute(2, 0, 1)


def floor_images(prompts: list[str], procedural: bool) -> torch.Tensor:
    """The real-images row: image i depicts prompt i when the prompts are procedural captions, else
    it is held-out scene i of :data:`FLOOR_SEED` (then only FID / KID / precision / recall apply)."""
    if procedural:
        return torch.stack([real_image(p, i) for i, p in enumerate(prompts)])
    from fewstep.distill.data.procedural import ProceduralDataset

    ds = ProceduralDataset(FLOOR_SEED)
    return torch.stack([ds[i]["image"] for i in range(len(prompts))])


def floor_diversity_images(prompts: list[str], seeds: int) -> torch.Tensor:
    """``[len(prompts) * seeds, 3, 32, 32]``: ``seeds`` real images of each prompt (procedural captions)."""
    return torch.stack([real_image(p, DIVERSITY_OFFSET + i * seeds + k) for i, p in enumerate(prompts)
                        for k in range(seeds)])
