"""Precomputed VAE latents and text embeddings (``data.source: cache``), written by ``fewstep cache``.

What is stored per image is the VAE posterior, not one sample of it: diffusers'
``DiagonalGaussianDistribution.parameters`` (mean and log-variance stacked on the channel axis). SD's
training draws a fresh latent from the posterior at every step (``ModelSet.encode_images``); keeping
the posterior keeps that augmentation, and because the draw has the same shape, dtype and device as
on the image path, a run from the cache consumes the random stream exactly as a run from images and
gives the same losses (tests/test_cache.py). A single stored sample would freeze one draw forever.

Layout of a cache folder::

    cache.json                 what it was made from (teacher, resolution, shard size, shard count)
    shard-000000.safetensors   "moments" [n, 2C, h, w], "text_embeddings" [n, L, D]; metadata: captions, count

Items carry the tensors in place of what they replace, so methods need no branch: ``"image"`` is a
:class:`LatentMoments` (``collate`` stacks it into ``batch["pixels"]``, which ``encode_images`` samples
instead of running the VAE) and ``"caption"`` is a :class:`CachedCaption` (a ``str`` that carries its
embedding, which ``encode_text`` uses instead of running the text encoder; an empty caption from
caption dropout is still encoded).
"""
from __future__ import annotations

import bisect
import json
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from fewstep.distill.config import ConfigError

MANIFEST = "cache.json"
FORMAT = 1  # bump when the layout changes: an older cache is then refused, not misread


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.safetensors"


class LatentMoments:
    """A batch's (or one image's) VAE posterior parameters, standing in for its pixels."""

    def __init__(self, moments: torch.Tensor):
        self.moments = moments  # [B, 2C, h, w] or [2C, h, w]: mean and log-variance (diffusers' order)

    def to(self, *args, **kwargs) -> LatentMoments:  # accelerate moves batch values with .to(device)
        return LatentMoments(self.moments.to(*args, **kwargs))

    def __len__(self) -> int:
        return len(self.moments)

    @staticmethod
    def stack(items: list[LatentMoments]) -> LatentMoments:
        return LatentMoments(torch.stack([it.moments for it in items]))


class CachedCaption(str):
    """A caption with its text-encoder embedding [L, D]; compares, hashes and prints as the plain text."""

    embedding: torch.Tensor

    def __new__(cls, text: str, embedding: torch.Tensor):
        obj = super().__new__(cls, text)
        obj.embedding = embedding
        return obj

    def __reduce__(self):  # DataLoader workers pickle items
        return CachedCaption, (str(self), self.embedding)


# Run configs, model cards and logs are written with yaml.safe_dump, which refuses str subclasses.
yaml.SafeDumper.add_representer(CachedCaption, yaml.representer.SafeRepresenter.represent_str)


def read_manifest(root: Path) -> dict:
    """``cache.json`` of the cache folder ``root``; a missing or foreign one names ``data.path``."""
    path = root / MANIFEST
    if not path.is_file():
        raise ConfigError(f"data.path: {root} is not a fewstep cache ({MANIFEST} missing; write one with "
                          "`fewstep cache CONFIG --out DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"data.path: {path} is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"data.path: {path} has cache format {manifest.get('format')!r}, this fewstep reads "
                          f"{FORMAT}; write the cache again")
    return manifest


def shard_count(path: Path) -> int | None:
    """Rows in a finished shard, or None when it is missing or damaged (its header or framing)."""
    from safetensors import SafetensorError

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            count = int(meta.get("count", -1))
            shapes = {k: f.get_slice(k).get_shape()[0] for k in ("moments", "text_embeddings")}
    except (SafetensorError, OSError, ValueError, KeyError):
        return None
    return count if count >= 0 and set(shapes.values()) == {count} else None


class CacheDataset(torch.utils.data.Dataset):
    """Items ``{"caption": CachedCaption, "image": LatentMoments}`` of a finished cache, in shard order."""

    def __init__(self, root: str | Path | None):
        if not root:
            raise ConfigError("data.path: required for data.source 'cache' (the folder `fewstep cache --out` wrote)")
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.shards: list[tuple[Path, int]] = []
        missing = []
        for k in range(self.manifest["num_shards"]):
            path = self.root / shard_name(k)
            n = shard_count(path)
            if n is None:
                missing.append(path.name)
            else:
                self.shards.append((path, n))
        if missing:
            raise ConfigError(f"data.path: cache {self.root} is unfinished or damaged ({len(missing)} of "
                              f"{self.manifest['num_shards']} shards missing, e.g. {missing[0]}); run the same "
                              "`fewstep cache` command again to complete it")
        self.starts = torch.tensor([0] + [n for _, n in self.shards]).cumsum(0).tolist()
        self._open: dict[Path, object] = {}  # safe_open handles, per process (they cannot be pickled)

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def _handle(self, path: Path) -> tuple[object, list[str]]:
        """The open shard and its captions (read once per process)."""
        if path not in self._open:
            f = safe_open(str(path), "pt")
            self._open[path] = (f, json.loads(f.metadata()["captions"]))
        return self._open[path]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self.starts, index) - 1
        path, row = self.shards[k][0], index - self.starts[k]
        f, captions = self._handle(path)
        moments = f.get_slice("moments")[row:row + 1][0].float()
        embedding = f.get_slice("text_embeddings")[row:row + 1][0].float()
        return {"image": LatentMoments(moments), "caption": CachedCaption(captions[row], embedding)}
