"""Building the embedded attribute classifier (``assets/classifier/``) from ``configs/classifier.yaml``.

``eval.classifier`` defines the model and loads and scores it; this module trains one on fresh
procedural renders and writes it, with its build record, as one atomic folder. The command::

    OMP_NUM_THREADS=1 fewstep build-classifier --config configs/classifier.yaml --out assets/classifier

The shipped classifier was rebuilt with this module and the committed config (see its recorded build
record for the held-out score and time).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fewstep.distill.data.procedural import ATTRIBUTES
from fewstep.distill.files import atomic_dir
from fewstep.eval.classifier import AttributeClassifier, HeadSpec, attribute_accuracy, classifier_files
from fewstep.pipelines.judge_config import ClassifierBuildConfig, to_record
from fewstep.pipelines.judge_training import augment, lr_scheduler, procedural_batches, procedural_slice


def fit_classifier(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    heads: HeadSpec,
    cfg: ClassifierBuildConfig,
    *,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> AttributeClassifier:
    """Train a fresh :class:`AttributeClassifier` (summed cross-entropy over the heads); return it in eval mode.

    Args:
        batches: yields ``(images, labels)``: raw uint8 images ``[N, 3, 32, 32]`` and labels
            ``[N, n_attr]`` with columns in ``heads`` order. At least ``cfg.steps`` batches are needed.
        heads: attribute -> num classes or class names (see :class:`AttributeClassifier`).
        cfg: steps, optimiser, schedule, architecture; ``cfg.seed`` seeds init and augmentation,
            so a run is reproducible given the batches.
        on_step: called as ``on_step(step, loss)`` after every step.
        progress: show a tqdm bar.
    """
    torch.manual_seed(cfg.seed)
    model = AttributeClassifier(heads, width=cfg.width, feature_dim=cfg.feature_dim).to(device).train()
    attrs = model.attributes
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = lr_scheduler(opt, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    it: Iterator = iter(batches)
    bar = tqdm(range(cfg.steps), desc="classifier", disable=not progress, dynamic_ncols=True)
    ema = None
    for step in bar:
        try:
            images, labels = next(it)
        except StopIteration:
            raise ValueError(f"batches ran out after {step} of {cfg.steps} steps") from None
        if labels.ndim != 2 or labels.shape[1] != len(attrs):
            raise ValueError(f"labels must be [N, {len(attrs)}] (columns {attrs}), got {tuple(labels.shape)}")
        if cfg.augment:
            images = augment(images, gen)
        labels = labels.to(device)
        logits = model(images)
        loss = sum(F.cross_entropy(logits[a], labels[:, j]) for j, a in enumerate(attrs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if on_step is not None:
            on_step(step, value)
        if progress and (step % 10 == 0 or step == cfg.steps - 1):
            bar.set_postfix(loss=f"{ema:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
    return model.eval()


def save_classifier(model: AttributeClassifier, out_dir: str | os.PathLike, extra: Mapping | None = None) -> Path:
    """Write the checkpoint folder (``eval.classifier.classifier_files``) atomically, replacing ``out_dir``."""
    with atomic_dir(out_dir) as tmp:
        for name, data in classifier_files(model, extra).items():
            (tmp / name).write_bytes(data)
    return Path(out_dir)


def build_classifier(cfg: ClassifierBuildConfig, out_dir: str | os.PathLike,
                     progress: bool = True) -> tuple[AttributeClassifier, dict]:
    """Train on split ``cfg.train_seed``, score ``cfg.val_size`` scenes of split ``cfg.val_seed``, save.

    Returns the model and the build record stored under ``"training"`` in ``config.json``.
    """
    val_images, val_labels = procedural_slice(cfg.val_seed, 0, cfg.val_size, "labels")
    t0 = time.time()
    model = fit_classifier(procedural_batches(cfg.train_seed, cfg.batch_size, "labels"), ATTRIBUTES, cfg,
                           progress=progress)
    record = {"config": to_record(cfg), "train_seconds": round(time.time() - t0, 1)}
    acc = attribute_accuracy(model, val_images, val_labels)
    record["val_accuracy"] = {k: round(v, 6) for k, v in acc.items()}
    record["val_size"] = cfg.val_size
    save_classifier(model, out_dir, record)
    return model, record
