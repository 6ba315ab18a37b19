"""The embedded tiny CLIP: an open_clip model trained contrastively on the procedural domain.

The model is a stock ``open_clip.CLIP`` built from a custom config (a 32 px ``ModifiedResNet``
image tower and a small text transformer over open_clip's bundled BPE tokenizer), so the shipped
directory loads with plain open_clip, offline (``eval.clip.load_clip`` does this)::

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:assets/tiny-clip")
    tokenizer = open_clip.get_tokenizer("local-dir:assets/tiny-clip")

Directory layout: ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``, and our
``fewstep_training`` record: config, seconds, held-out retrieval accuracy) and
``open_clip_model.safetensors``, stored in float16 (2/3 of the parameters are the 49408-row BPE
token embedding, of which the captions use ~40 rows); open_clip casts it back to float32 on load,
and the recorded accuracy is measured on the reloaded model.

Why a conv tower: a 3-layer ViT with 4 px patches learned colour, background, size and position
quickly but was still wrong on 39% of shapes after 500 steps (61% retrieval); the small ResNet
(translation-equivariant, like the attribute classifier) passed 90% in 400 steps at a third of
the cost per step.

This module holds the directory format and the input convention; training the model is building
(``pipelines/build_tiny_clip.py``). The shipped model was built from ``configs/tiny_clip.yaml``
with this command, run from the repository root (the recorded time and accuracy are in
``assets/tiny-clip/open_clip_config.json``)::

    OMP_NUM_THREADS=1 fewstep build-tiny-clip --config configs/tiny_clip.yaml --out assets/tiny-clip
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import torch

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
# open_clip's defaults (OpenAI CLIP's normalisation); written out so the directory is self-contained.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_config(image_size: int) -> dict:
    """open_clip ``preprocess_cfg``: its eval transform (resize, centre crop, normalise) at ``image_size``."""
    return {"size": image_size, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
            "resize_mode": "shortest"}


def normalise(images: torch.Tensor) -> torch.Tensor:
    """[0, 255] images -> the model's input, exactly what open_clip's eval transform does at 32 px."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def tiny_clip_files(model: torch.nn.Module, model_cfg: Mapping, extra: Mapping | None = None) -> dict[str, bytes]:
    """An open_clip ``local-dir:`` model directory as ``{file name: contents}``.

    Weights in float16 (see module doc). ``extra`` (the build record) goes under ``fewstep_training``.
    Writing the files (atomically) is the builder's job, ``pipelines.build_tiny_clip``.
    """
    from safetensors.torch import save

    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    cfg = {"model_cfg": dict(model_cfg), "preprocess_cfg": preprocess_config(model_cfg["vision_cfg"]["image_size"])}
    if extra is not None:
        cfg["fewstep_training"] = dict(extra)
    return {WEIGHTS_FILE: save(state, metadata={"format": "pt"}),
            CONFIG_FILE: (json.dumps(cfg, indent=2) + "\n").encode()}
