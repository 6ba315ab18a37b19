"""CLIP score with open_clip, offline: any local checkpoint, or the embedded tiny CLIP.

Model spec (the CLI's ``--clip``), parsed by :func:`parse_clip_spec`:

- ``embedded`` (default): the tiny CLIP in ``assets/tiny-clip`` (see ``eval/tiny_clip.py``).
- ``ARCH:/path/to/open_clip_pytorch_model.bin`` (or ``.safetensors``): an open_clip architecture
  name plus a weights file, e.g. ``ViT-g-14:/models/open_clip_pytorch_model.bin``. The
  architecture's default preprocessing is used (OpenAI mean/std, bicubic, shortest-side resize),
  which is right for the LAION ViT-g/14 of DMD2 / SwiftBrush.
- ``ARCH:TAG``: an open_clip pretrained tag (``ViT-g-14:laion2b_s12b_b42k``), only if its weights
  are already in the Hugging Face / open_clip cache; the tag's preprocessing and QuickGELU setting
  apply. Nothing is downloaded: a tag that needs a download is a :class:`ClipError` that says
  which file to fetch and how to pass it.
- ``local-dir:/path`` or a directory path: an open_clip model directory
  (``open_clip_config.json`` + weights), as published on the Hugging Face Hub.

Score convention (say which one a table uses; papers mix them): CLIP score = the mean over
images of cos(E_img(image), E_txt(prefix + prompt)) in the model's joint space, reported both raw
(``clip_score_cosine``, DMD2 / SwiftBrush with ViT-g/14 and prefix "A photo depicts ") and x100
(``clip_score_x100`` = 100 x the same mean; MLCM / Hyper-SD tables). Unlike torchmetrics'
``CLIPScore`` we do not clamp each image's score at 0. Images go through the model's own eval
preprocessing (PIL resize + centre crop + normalise).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fewstep.eval.assets import assets_dir
from fewstep.eval.errors import ClipError
from fewstep.eval.images import uint8_batches

EMBEDDED_CLIP_DIR = assets_dir() / "tiny-clip"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass(frozen=True)
class ClipSpec:
    """A parsed ``--clip`` value.

    Attributes:
        model: an open_clip architecture name, or ``"local-dir:<path>"``.
        checkpoint: weights file path or pretrained tag (None for ``local-dir:``).
    """

    model: str
    checkpoint: str | None = None

    def __str__(self) -> str:
        return self.model if self.checkpoint is None else f"{self.model}:{self.checkpoint}"


def parse_clip_spec(spec: str | os.PathLike) -> ClipSpec:
    """Parse ``embedded`` | ``ARCH:CHECKPOINT`` | ``local-dir:PATH`` | ``PATH`` (see module doc).

    The split is at the first ``:``, so checkpoint paths may contain colons; an architecture name
    never does.
    """
    s = str(spec).strip()
    if s in ("", "embedded"):
        return ClipSpec(f"local-dir:{EMBEDDED_CLIP_DIR}")
    if s.startswith("local-dir:"):
        return ClipSpec(s)
    if s.startswith("hf-hub:"):
        raise ClipError(f"{s!r} would download from the Hugging Face Hub; this tool works offline. Download the "
                        f"repository yourself and pass local-dir:/path/to/it (or ARCH:/path/to/open_clip_pytorch_model.bin)")
    if Path(s).expanduser().is_dir():
        return ClipSpec(f"local-dir:{Path(s).expanduser()}")
    arch, sep, ckpt = s.partition(":")
    if not sep or not ckpt:
        raise ClipError(f"CLIP spec {s!r} names no weights; use ARCH:/path/to/weights, ARCH:TAG, local-dir:PATH or "
                        f"'embedded' (a randomly initialised CLIP gives meaningless scores)")
    if Path(ckpt).expanduser().is_dir():
        return ClipSpec(f"local-dir:{Path(ckpt).expanduser()}")
    return ClipSpec(arch, ckpt)


@dataclass
class ClipModel:
    """A loaded CLIP: open_clip model (eval mode), its tokenizer and eval preprocessing (PIL -> tensor)."""

    model: torch.nn.Module
    tokenizer: object
    preprocess: object
    name: str
    device: torch.device


def _cached_tag_weights(arch: str, tag: str, cfg: dict) -> str | None:
    """Local file of an open_clip pretrained tag if a previous download left it in a cache, else None."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo_id=repo, filename=name)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url", "")
    if url:
        p = Path("~/.cache/clip").expanduser() / os.path.basename(url)  # open_clip's URL download cache
        if p.is_file():
            return str(p)
    return None


def load_clip(spec: str | ClipSpec = "embedded", device: str | torch.device = "cpu") -> ClipModel:
    """Load a CLIP model offline from a spec (see :func:`parse_clip_spec`).

    Args:
        spec: a spec string or :class:`ClipSpec`.
        device: where the model runs.

    Returns:
        A :class:`ClipModel` in eval mode. Raises :class:`ClipError` with the fix when the weights
        are not on this machine.
    """
    import open_clip

    sp = spec if isinstance(spec, ClipSpec) else parse_clip_spec(spec)
    device = torch.device(device)
    if sp.model.startswith("local-dir:"):
        d = Path(sp.model[len("local-dir:"):]).expanduser()
        if not (d / "open_clip_config.json").is_file():
            raise ClipError(f"{d} is not an open_clip model directory: missing open_clip_config.json")
        if not any(p.suffix in _WEIGHT_SUFFIXES for p in d.iterdir()):
            raise ClipError(f"{d} has no weights file (open_clip_model.safetensors or open_clip_pytorch_model.bin); "
                            f"open_clip would silently use random weights")
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}", device=device)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{d}")
        name = "embedded:tiny-clip" if d.resolve() == EMBEDDED_CLIP_DIR else f"local-dir:{d}"
        return ClipModel(model.eval(), tokenizer, preprocess, name, device)

    arch, ckpt = sp.model, sp.checkpoint
    if arch not in open_clip.list_models():
        raise ClipError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    kwargs = {}
    path = Path(ckpt).expanduser()
    if path.is_file():
        weights = str(path)
    else:
        tag_cfg = open_clip.get_pretrained_cfg(arch, ckpt)
        if not tag_cfg:
            raise ClipError(f"{ckpt!r} is neither an existing weights file nor a pretrained tag of {arch} "
                            f"(tags: {open_clip.list_pretrained_tags_by_model(arch)})")
        weights = _cached_tag_weights(arch, ckpt, tag_cfg)
        if weights is None:
            src = tag_cfg.get("hf_hub") or tag_cfg.get("url")
            raise ClipError(
                f"CLIP weights for {arch}:{ckpt} are not on this machine and this tool never downloads. Fetch them "
                f"where you have network ({src}; the file open_clip_pytorch_model.bin or open_clip_model.safetensors) "
                f"and pass --clip {arch}:/path/to/that/file")
        # A file path loses the tag's preprocessing and activation; restore them.
        kwargs = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)), "image_mean": tag_cfg.get("mean"),
                  "image_std": tag_cfg.get("std"), "image_interpolation": tag_cfg.get("interpolation"),
                  "image_resize_mode": tag_cfg.get("resize_mode")}
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights, device=device, **kwargs)
    return ClipModel(model.eval(), open_clip.get_tokenizer(arch), preprocess, f"{arch}:{ckpt}", device)


# --------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def encode_images(clip: ClipModel, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings ``[N, D]`` of uint8 ``[N, 3, H, W]`` images (model's eval preprocessing)."""
    from PIL import Image

    x = torch.stack([clip.preprocess(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images])
    return F.normalize(clip.model.encode_image(x.to(clip.device)).float(), dim=-1)


@torch.no_grad()
def encode_texts(clip: ClipModel, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm text embeddings ``[N, D]`` (the tokenizer truncates at the model's context length)."""
    return F.normalize(clip.model.encode_text(clip.tokenizer(list(texts)).to(clip.device)).float(), dim=-1)


def clip_score(
    images: Iterable,
    prompts: Iterable[str],
    clip: ClipModel,
    *,
    prefix: str = "",
    batch_size: int = 64,
    return_per_image: bool = False,
) -> dict:
    """Mean CLIP cosine between each image and its prompt, streaming.

    Args:
        images: iterable of images / batches (see :func:`eval.images.uint8_batches`).
        prompts: one prompt per image, same order.
        clip: from :func:`load_clip`.
        prefix: prepended to every prompt; DMD2 / SwiftBrush use "A photo depicts " with ViT-g/14,
            the embedded tiny CLIP was trained on bare captions (default "").
        batch_size: images per forward pass.
        return_per_image: also return the list of per-image cosines.

    Returns:
        ``{"clip_score_cosine", "clip_score_x100", "clip_score_std", "num_images", "clip_model",
        "prefix", "convention"}`` (+ ``"per_image"``).
    """
    prompt_iter = iter(prompts)
    scores: list[torch.Tensor] = []
    for batch in uint8_batches(images, batch_size):
        texts = []
        for _ in range(batch.shape[0]):
            try:
                texts.append(prefix + next(prompt_iter))
            except StopIteration:
                raise ValueError("fewer prompts than images") from None
        scores.append((encode_images(clip, batch) * encode_texts(clip, texts)).sum(-1).double().cpu())
    if next(prompt_iter, None) is not None:
        raise ValueError("more prompts than images")
    if not scores:
        raise ValueError("clip_score needs at least one image")
    s = torch.cat(scores)
    mean = float(s.mean())
    out = {
        "clip_score_cosine": mean,
        "clip_score_x100": 100.0 * mean,
        "clip_score_std": float(s.std()) if s.numel() > 1 else 0.0,
        "num_images": int(s.numel()),
        "clip_model": clip.name,
        "prefix": prefix,
        "convention": "mean over images of cos(image, prefix + prompt); x100 = 100 * cosine; not clamped at 0",
    }
    if return_per_image:
        out["per_image"] = s.tolist()
    return out


def retrieval_accuracy(clip: ClipModel, images: torch.Tensor, captions: Sequence[str], *, prefix: str = "",
                       batch_size: int = 256) -> dict:
    """Top-1 retrieval within a gallery of images whose captions are all distinct.

    Text -> image: for each caption, the most similar gallery image must be that caption's own
    image (with distinct captions, the only image with exactly the caption's attributes).
    Image -> text: for each image, the most similar caption must be its own.

    Returns:
        ``{"text_to_image_top1", "image_to_text_top1", "gallery_size", "chance"}``.
    """
    if len(set(captions)) != len(captions):
        raise ValueError("retrieval needs a gallery with distinct captions (several images per caption make top-1 ambiguous)")
    img = torch.cat([encode_images(clip, b) for b in uint8_batches(images, batch_size)])
    txt = torch.cat([encode_texts(clip, [prefix + c for c in captions[i:i + batch_size]])
                     for i in range(0, len(captions), batch_size)])
    sim = txt @ img.t()  # [caption, image]
    target = torch.arange(len(captions))
    return {
        "text_to_image_top1": float((sim.argmax(1).cpu() == target).float().mean()),
        "image_to_text_top1": float((sim.argmax(0).cpu() == target).float().mean()),
        "gallery_size": len(captions),
        "chance": 1.0 / len(captions),
    }
