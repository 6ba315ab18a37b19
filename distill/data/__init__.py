"""Data sources for training: each a torch Dataset of {"image": uint8 CHW, "caption": str, ...}."""
from __future__ import annotations

import torch

from fewstep.distill.config import ConfigError, DataConfig
from fewstep.distill.data.imagefolder import ImageFolderDataset
from fewstep.distill.data.procedural import ProceduralDataset


def build_dataset(cfg: DataConfig, seed: int | None = None) -> torch.utils.data.Dataset:
    """The dataset a config names; ``seed`` overrides the procedural split (validation batches)."""
    if cfg.source == "procedural":
        return ProceduralDataset(cfg.seed if seed is None else seed)
    if cfg.source == "imagefolder":
        if not cfg.path:
            raise ConfigError("data.path: required for data.source 'imagefolder'")
        return ImageFolderDataset(cfg.path, cfg.caption_column, cfg.resolution)
    raise ConfigError(f"data.source: unknown source {cfg.source!r}")


def collate(items: list[dict]) -> dict:
    """Stack images to float pixels in [-1, 1]; keep captions as a list; stack labels if present."""
    batch = {
        "pixels": torch.stack([it["image"] for it in items]).float() / 127.5 - 1.0,
        "captions": [it["caption"] for it in items],
    }
    if "labels" in items[0]:
        batch["labels"] = torch.stack([it["labels"] for it in items])
    return batch
