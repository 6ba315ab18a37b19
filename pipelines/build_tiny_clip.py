"""Building the embedded tiny CLIP (``assets/tiny-clip/``) from ``configs/tiny_clip.yaml``.

``eval.tiny_clip`` holds the directory format and ``eval.clip`` loads and scores it; this module
trains a stock ``open_clip.CLIP`` contrastively on fresh procedural renders (split ``train_seed``),
writes it as one atomic folder, and records its retrieval accuracy on a gallery of the 576
distinct captions of split ``val_seed``, measured on the folder as written. The command::

    OMP_NUM_THREADS=1 fewstep build-tiny-clip --config configs/tiny_clip.yaml --out assets/tiny-clip

The shipped tiny CLIP was rebuilt with this module and the committed config (see its recorded build
record for the held-out score and time).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fewstep.distill.data.procedural import ProceduralDataset, all_captions
from fewstep.distill.files import atomic_dir
from fewstep.eval.clip import load_clip, retrieval_accuracy
from fewstep.eval.tiny_clip import CONFIG_FILE, normalise, tiny_clip_files
from fewstep.pipelines.judge_config import TinyClipBuildConfig, to_record
from fewstep.pipelines.judge_training import augment, lr_scheduler, procedural_batches


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                     captions: Sequence[str]) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021, Fig. 3) with every equal caption a positive.

    A batch of procedural scenes repeats captions (576 exist); as in UniCL (Yang et al. 2022), the
    targets spread uniformly over all pairs with the same caption. While equal captions get equal
    text embeddings (a deterministic text tower) this equals plain CLIP's one-hot loss in value and
    gradient (the duplicate columns and rows are identical); the soft targets say what a positive is
    without relying on that.
    """
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.exp() * img @ txt.t()
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions], device=img.device)
    pos = (cid[:, None] == cid[None, :]).float()
    target = pos / pos.sum(dim=1, keepdim=True)
    image_to_text = torch.sum(-target * logits.log_softmax(1), 1).mean()
    text_to_image = torch.sum(-target * logits.log_softmax(0).t(), 1).mean()
    return 0.5 * (image_to_text + text_to_image)


def fit_tiny_clip(
    batches: Iterable[tuple[torch.Tensor, Sequence[str]]],
    cfg: TinyClipBuildConfig,
    *,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> torch.nn.Module:
    """Train a fresh open_clip ``CLIP`` from ``cfg.model`` and return it in eval mode.

    Args:
        batches: yields ``(uint8 images [N, 3, H, W], captions)``; at least ``cfg.steps`` batches.
        cfg: steps, optimiser, schedule, architecture. AdamW as CLIP (betas 0.9/0.98, eps 1e-6), weight
            decay on matrices only (not gains, biases or the temperature); ``cfg.augment`` applies
            :func:`augment` (blur, noise, colour cast), so the model also scores slightly degraded
            generated samples sensibly; ``cfg.seed`` seeds initialisation and augmentation.
        on_step: called as ``on_step(step, loss)`` after every step.
        progress: show a tqdm bar.
    """
    import open_clip

    model_cfg = cfg.model.open_clip_cfg()
    torch.manual_seed(cfg.seed)
    model = open_clip.CLIP(**model_cfg).train()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model_cfg["text_cfg"]["context_length"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = lr_scheduler(opt, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    tokens: dict[str, torch.Tensor] = {}
    it = iter(batches)
    bar = tqdm(range(cfg.steps), desc="tiny-clip", disable=not progress, dynamic_ncols=True)
    for step in bar:
        try:
            images, captions = next(it)
        except StopIteration:
            raise ValueError(f"batches ran out after {step} of {cfg.steps} steps") from None
        for c in set(captions) - tokens.keys():
            tokens[c] = tokenizer([c])[0]
        x = augment(images, gen) if cfg.augment else images.float()
        img = model.encode_image(normalise(x))
        txt = model.encode_text(torch.stack([tokens[c] for c in captions]))
        loss = contrastive_loss(img, txt, model.logit_scale, captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP caps the temperature at 100
        if on_step is not None:
            on_step(step, float(loss.detach()))
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.detach().exp().item():.1f}")
    return model.eval()


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


def build_tiny_clip(cfg: TinyClipBuildConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Train, write ``out_dir`` atomically, and score retrieval on the written (float16) weights.

    Returns the record stored under ``fewstep_training``: config, seconds, ``val_retrieval``.
    """
    gallery = distinct_caption_gallery(ProceduralDataset(cfg.val_seed), len(all_captions()))
    t0 = time.time()
    model = fit_tiny_clip(procedural_batches(cfg.train_seed, cfg.batch_size, "caption"), cfg, progress=progress)
    record = {"config": to_record(cfg), "train_seconds": round(time.time() - t0, 1)}
    model_cfg = cfg.model.open_clip_cfg()
    with atomic_dir(out_dir) as tmp:
        for name, data in tiny_clip_files(model, model_cfg, record).items():
            (tmp / name).write_bytes(data)
        record["val_retrieval"] = retrieval_accuracy(load_clip(f"local-dir:{tmp}"), *gallery)
        (tmp / CONFIG_FILE).write_bytes(tiny_clip_files(model, model_cfg, record)[CONFIG_FILE])
    return record
