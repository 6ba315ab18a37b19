"""Data sources for training: each a torch Dataset of {"caption": str, "image": uint8 CHW?, "labels"?}.

Image sources ("procedural", "imagefolder", "webdataset") give every item an "image"; the "prompts"
source gives none, so image-free methods never decode or even own images. The "cache" source gives
precomputed latents and text embeddings in their place (``data.cache``). "webdataset" is an endless
IterableDataset that splits itself per rank and worker (``data.shards``); the others are map-style,
split by the loop's sampler.
"""
from __future__ import annotations

import torch

from fewstep.distill.config import ConfigError, DataConfig
from fewstep.distill.data.cache import CacheDataset, LatentMoments
from fewstep.distill.data.imagefolder import ImageFolderDataset
from fewstep.distill.data.procedural import ProceduralDataset
from fewstep.distill.data.prompts import ProceduralPromptDataset, PromptDataset
from fewstep.distill.data.shards import ShardDataset

IMAGE_FREE_SOURCES = frozenset({"prompts"})  # sources whose batches carry captions only, no "pixels"


def has_images(cfg: DataConfig) -> bool:
    """Whether batches of this source carry ``"pixels"`` (a phase that needs a full batch needs them)."""
    return cfg.source not in IMAGE_FREE_SOURCES


def build_dataset(cfg: DataConfig, seed: int | None = None) -> torch.utils.data.Dataset:
    """The dataset a config names; ``seed`` overrides the procedural split (validation batches), also
    for the prompts source without a file, whose prompts are the procedural captions (and the shuffle
    seed of webdataset shards)."""
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
    if cfg.source == "webdataset":
        shards = ShardDataset(cfg, seed)  # every shard file must exist
        if seed is None:
            shards.probe()  # a wrong key or filter fails now, before the teacher loads (bounded read)
        return shards
    if cfg.source == "cache":
        return CacheDataset(cfg.path)
    raise ConfigError(f"data.source: unknown source {cfg.source!r}")


def collate(items: list[dict]) -> dict:
    """Captions as a list; images (when the source has them) stacked to float pixels in [-1, 1];
    labels stacked if present."""
    batch: dict = {"captions": [it["caption"] for it in items]}
    if "image" in items[0] and isinstance(items[0]["image"], LatentMoments):  # cache: encode_images samples these
        batch["pixels"] = LatentMoments.stack([it["image"] for it in items])
    elif "image" in items[0]:
        batch["pixels"] = torch.stack([it["image"] for it in items]).float() / 127.5 - 1.0
    if "labels" in items[0]:
        batch["labels"] = torch.stack([it["labels"] for it in items])
    if "corrupt" in items[0]:
        batch[CORRUPT] = sum(it["corrupt"] for it in items)
    return batch


CORRUPT = "corrupt"  # batch key: corrupt samples a streaming source skipped to make this batch (data.shards)


def take_corrupt(batch: dict) -> int:
    """Remove and return the batch's count of skipped corrupt samples (0 for sources without one): the
    loop sums it into its logs, and the methods never see it."""
    return int(batch.pop(CORRUPT, 0))


def first_items(dataset: torch.utils.data.Dataset, n: int) -> list[dict]:
    """``n`` items from the start of ``dataset`` (cycling a short map-style one): validation grids."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return dataset.head(n)
    return [dataset[i % len(dataset)] for i in range(n)]


def prepare_loader(accelerator, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """``accelerator.prepare`` for a map-style source (it shards the sampler per process). A streaming
    source already splits itself per rank and worker; accelerate would split it a second time (by
    default rank 0 reads every batch and dispatches slices; without dispatching, every rank reads the
    whole stream and keeps a slice), so it is only wrapped to move batches to the device."""
    if not isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return accelerator.prepare(loader)
    from accelerate.data_loader import prepare_data_loader

    return prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True,
                               dispatch_batches=False)
