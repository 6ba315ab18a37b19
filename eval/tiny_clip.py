"""The embedded tiny CLIP: an open_clip model trained contrastively on the procedural domain.

The model is a stock ``open_clip.CLIP`` built from a custom config (a 32 px ``ModifiedResNet``
image tower and a small text transformer over open_clip's bundled BPE tokenizer), so the shipped
directory loads with plain open_clip, offline::

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

Like ``eval/classifier.py`` this module knows nothing about how scenes are rendered: training
batches of ``(uint8 images [N, 3, 32, 32], captions)`` arrive from the caller. The shipped model
was built from ``configs/tiny_clip.yaml`` with this command, run from the repository root (the
recorded time and accuracy are in ``assets/tiny-clip/open_clip_config.json``)::

    OMP_NUM_THREADS=1 fewstep build-tiny-clip --config configs/tiny_clip.yaml --out assets/tiny-clip

which renders fresh batches with ``distill.data.procedural.ProceduralDataset`` (split
``train_seed``), scores a gallery of the 576 distinct captions from split ``val_seed`` with
:func:`distinct_caption_gallery`, and calls :func:`train_from_config`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
# open_clip's defaults (OpenAI CLIP's normalisation); written out so the directory is self-contained.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def model_config(arch: Mapping) -> dict:
    """open_clip ``model_cfg`` for the tiny CLIP from the ``model`` section of ``configs/tiny_clip.yaml``.

    ``vision_layers`` as a list of 4 block counts selects open_clip's ``ModifiedResNet`` image tower
    (conv stem, 4 bottleneck stages, attention pooling); as an int, a ViT with ``patch_size``.
    """
    layers = arch["vision_layers"]
    if isinstance(layers, (list, tuple)):
        vision = {"image_size": int(arch["image_size"]), "layers": [int(n) for n in layers],
                  "width": int(arch["vision_width"]), "head_width": int(arch["vision_head_width"])}
    else:
        vision = {"image_size": int(arch["image_size"]), "patch_size": int(arch["patch_size"]),
                  "width": int(arch["vision_width"]), "layers": int(layers),
                  "head_width": int(arch["vision_head_width"]), "mlp_ratio": float(arch["mlp_ratio"])}
    return {
        "embed_dim": int(arch["embed_dim"]),
        "vision_cfg": vision,
        "text_cfg": {
            "context_length": int(arch["context_length"]), "vocab_size": 49408,  # open_clip's BPE vocabulary
            "width": int(arch["text_width"]), "heads": int(arch["text_heads"]), "layers": int(arch["text_layers"]),
            "mlp_ratio": float(arch["mlp_ratio"]),
        },
    }


def preprocess_config(image_size: int) -> dict:
    return {"size": image_size, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest"}


def normalise(images: torch.Tensor) -> torch.Tensor:
    """[0, 255] images -> the model's input, exactly what open_clip's eval transform does at 32 px."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021, Fig. 3) with every equal caption a positive.

    A batch of procedural scenes repeats captions (576 exist), so the one-hot targets of plain CLIP
    would push apart an image and its own caption whenever the caption occurs twice. As in
    UniCL (Yang et al. 2022), targets spread uniformly over all pairs with the same caption.
    """
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.exp() * img @ txt.t()
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions], device=img.device)
    pos = (cid[:, None] == cid[None, :]).float()
    target = pos / pos.sum(dim=1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.log_softmax(0).t(), 1).mean())


def fit_tiny_clip(
    batches: Iterable[tuple[torch.Tensor, Sequence[str]]],
    model_cfg: Mapping,
    steps: int,
    lr: float = 1e-3,
    *,
    weight_decay: float = 0.05,
    warmup_steps: int = 50,
    augment_images: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> torch.nn.Module:
    """Train a fresh open_clip ``CLIP`` from ``model_cfg`` and return it in eval mode.

    Args:
        batches: yields ``(uint8 images [N, 3, H, W], captions)``; at least ``steps`` batches.
        model_cfg: from :func:`model_config`.
        steps, lr: AdamW steps and peak learning rate (linear warm-up, cosine decay to 0).
        weight_decay: on matrices only (not gains, biases, embeddings' scale or the temperature).
        augment_images: apply :func:`eval.classifier.augment` (blur, noise, colour cast), so the
            model also scores slightly degraded generated samples sensibly.
        seed: seeds initialisation and augmentation.
        progress: show a tqdm bar.
    """
    import open_clip

    from fewstep.eval.classifier import augment

    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg).train()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model_cfg["text_cfg"]["context_length"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, min(warmup_steps, steps // 5 or 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    gen = torch.Generator().manual_seed(seed)
    tokens: dict[str, torch.Tensor] = {}
    it = iter(batches)
    bar = tqdm(range(steps), desc="tiny-clip", disable=not progress, dynamic_ncols=True)
    for step in bar:
        try:
            images, captions = next(it)
        except StopIteration:
            raise ValueError(f"batches ran out after {step} of {steps} steps") from None
        for c in set(captions) - tokens.keys():
            tokens[c] = tokenizer([c])[0]
        x = augment(images, gen) if augment_images else images.float()
        img = model.encode_image(normalise(x))
        txt = model.encode_text(torch.stack([tokens[c] for c in captions]))
        loss = contrastive_loss(img, txt, model.logit_scale, captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP caps the temperature at 100
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}", scale=f"{float(model.logit_scale.exp()):.1f}")
    return model.eval()


def save_tiny_clip(model: torch.nn.Module, model_cfg: Mapping, out_dir: str | os.PathLike, extra: Mapping | None = None) -> Path:
    """Write an open_clip ``local-dir:`` model directory atomically (temp dir, then rename)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # float16 on disk halves the file (see module doc); open_clip casts back to float32 on load.
        state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        cfg = {"model_cfg": dict(model_cfg), "preprocess_cfg": preprocess_config(model_cfg["vision_cfg"]["image_size"])}
        if extra is not None:
            cfg["fewstep_training"] = dict(extra)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        for p in [tmp, tmp / WEIGHTS_FILE, tmp / CONFIG_FILE]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def distinct_caption_gallery(dataset, num: int, max_scan: int = 100_000) -> tuple[torch.Tensor, list[str]]:
    """The first ``num`` items of ``dataset`` whose captions are all different: ``(images, captions)``.

    The retrieval gallery: with one image per caption, "the retrieved image has exactly the
    query's attributes" is the same as "the retrieved image is the query's own image".
    """
    images, captions, seen = [], [], set()
    for i in range(max_scan):
        item = dataset[i]
        if item["caption"] not in seen:
            seen.add(item["caption"])
            images.append(item["image"])
            captions.append(item["caption"])
            if len(captions) == num:
                return torch.stack(images), captions
    raise ValueError(f"only {len(captions)} distinct captions in the first {max_scan} items, wanted {num}")


def train_from_config(
    cfg: Mapping,
    batches_fn: Callable[[int, int], Iterable[tuple[torch.Tensor, Sequence[str]]]],
    out_dir: str | os.PathLike,
    val_data: tuple[torch.Tensor, Sequence[str]] | None = None,
    progress: bool = True,
) -> dict:
    """Train the tiny CLIP from ``configs/tiny_clip.yaml`` (as a dict), save it, score it held out.

    Args:
        cfg: keys ``seed``, ``train_seed``, ``steps``, ``batch_size``, ``lr``, ``weight_decay``,
            ``warmup_steps``, ``augment`` and ``model`` (see :func:`model_config`).
        batches_fn: ``batches_fn(train_seed, batch_size)`` -> iterator of (images, captions).
        out_dir: model directory to write.
        val_data: distinct-caption gallery ``(images, captions)`` scored with
            :func:`eval.clip.retrieval_accuracy` after saving (on the reloaded model).

    Returns:
        The record stored under ``fewstep_training``: config, seconds, accuracy.
    """
    from fewstep.eval.clip import load_clip, retrieval_accuracy

    model_cfg = model_config(cfg["model"])
    t0 = time.time()
    model = fit_tiny_clip(batches_fn(int(cfg["train_seed"]), int(cfg["batch_size"])), model_cfg, int(cfg["steps"]),
                          float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.05)),
                          warmup_steps=int(cfg.get("warmup_steps", 50)), augment_images=bool(cfg.get("augment", True)),
                          seed=int(cfg["seed"]), progress=progress)
    extra = {"config": dict(cfg), "train_seconds": round(time.time() - t0, 1)}
    save_tiny_clip(model, model_cfg, out_dir, extra)
    if val_data is not None:
        extra["val_retrieval"] = retrieval_accuracy(load_clip(str(out_dir)), *val_data)
        save_tiny_clip(model, model_cfg, out_dir, extra)
    return extra
