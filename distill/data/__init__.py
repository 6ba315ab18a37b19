"""Data sources for training: each a torch Dataset of {"caption": str, "image": uint8 CHW?, "labels"?}.

Image sources ("procedural", "imagefolder") give every item an "image"; the "prompts" source gives
none, so image-free methods never decode or even own images.
"""
from __future__ import annotations

import torch

from fewstep.distill.config import ConfigError, DataConfig
from fewstep.distill.data.imagefolder import ImageFolderDataset
from fewstep.distill.data.procedural import ProceduralDataset
from fewstep.distill.data.prompts import ProceduralPromptDataset, PromptDataset

IMAGE_FREE_SOURCES = frozenset({"prompts"})  # sources whose batches carry captions only, no "pixels"


def has_images(cfg: DataConfig) -> bool:
    """Whether batches of this source carry ``"pixels"`` (a phase that needs a full batch needs them)."""
    return cfg.source not in IMAGE_FREE_SOURCES


def build_dataset(cfg: DataConfig, seed: int | None = None) -> torch.utils.data.Dataset:
    """The dataset a config names; ``seed`` overrides the procedural split (validation batches), also
    for the prompts source without a file, whose prompts are the procedural captions."""
    if cfg.source == "procedural":
        return ProceduralDataset(cfg.seed if seed is None else seed)
    if cfg.source == "imagefolder":
        if not cfg.path:
            raise ConfigError("data.path: required for data.source 'imagefolder'")
        return ImageFolderDataset(cfg.path, cfg.caption_column, cfg.resolution)
    if cfg.source == "prompts":
        if not cfg.path:
            return ProceduralPromptDataset(cfg.seed if seed is None else seed)
        return PromptDataset.from_file(cfg.path, cfg.caption_column)
    raise ConfigError(f"data.source: unknown source {cfg.source!r}")


def collate(items: list[dict]) -> dict:
    """Captions as a list; images (when the source has them) stacked to float pixels in [-1, 1];
    labels stacked if present."""
    batch: dict = {"captions": [it["caption"] for it in items]}
    if "image" in items[0]:
        batch["pixels"] = torch.stack([it["image"] for it in items]).float() / 127.5 - 1.0
    if "labels" in items[0]:
        batch["labels"] = torch.stack([it["labels"] for it in items])
    return batch
