"""WebDataset tar shards (``data.source: webdataset``): captioned images streamed from local tar files.

A shard is a plain tar file whose members are grouped into samples by their name before the first
dot (``000017.jpg`` + ``000017.txt``), the WebDataset convention that img2dataset writes; the
``webdataset`` library expands brace patterns (``shard-{0000..0099}.tar``) and reads the tars.

Splitting: every reader (one per DataLoader worker of each rank) gets a disjoint part of each epoch.
With at least as many shards as readers, whole shards are dealt out (shard order reshuffled each
epoch with a seed every rank shares, shard ``i`` to reader ``i % readers``, as webdataset's
``split_by_node`` + ``split_by_worker`` do); with fewer shards every reader reads all of them and
keeps every ``readers``-th sample, which is still a partition, only slower. The split is done here,
so the loop must not let accelerate split the stream a second time (``data.prepare_loader``). The
stream is endless: epoch after epoch, so ranks whose parts differ in size never wait for each other.

Rejections and corrupt samples (the reference scripts hang at 0 % when a key is wrong): a sample
without the image or caption key, or outside ``data.min_size`` / ``data.max_aspect``, is rejected;
``REJECT_STREAK`` rejections in a row, or an epoch of a reader with nothing accepted, stop the run
with a ConfigError naming the key and the shard. A sample whose image does not decode is skipped and
counted (each item carries ``"corrupt"``: the samples skipped since the previous item, summed per
batch by ``collate``), until more than ``data.max_corrupt_fraction`` of the samples read are corrupt.
"""
from __future__ import annotations

import io
import os
import random
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from fewstep.distill.config import ConfigError, DataConfig
from fewstep.distill.data.imagefolder import center_crop

REJECT_STREAK = 1000  # rejected samples in a row that stop the run (bounded time to an error, never a hang)
MIN_SEEN = 100  # samples read before the corrupt fraction is judged (one bad first sample is no trend)
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises for a bad image


def expand_shards(pattern: str | None) -> list[str]:
    """The shard files of ``data.path``: brace patterns and ``::``-separated lists (webdataset's
    ``expand_urls``); every one must exist, so a typo fails before any model loads."""
    from webdataset.shardlists import expand_urls

    if not pattern:
        raise ConfigError("data.path: required for data.source 'webdataset' (e.g. data/shard-{0000..0099}.tar)")
    paths = expand_urls(pattern)
    if not paths:
        raise ConfigError(f"data.path: {pattern!r} names no shard files")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(paths)})" if len(missing) > 1 else ""
        raise ConfigError(f"data.path: shard {missing[0]} does not exist{more}")
    return paths


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed when it is initialised, else the ``RANK`` /
    ``WORLD_SIZE`` that torchrun and ``accelerate launch`` set (and DataLoader workers inherit)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def reader_parts(shards: list[str], epoch: int, seed: int, reader: int, readers: int) -> tuple[list[str], int]:
    """(the shards ``reader`` reads in ``epoch``, every how many samples it keeps one: 1 or ``readers``).
    Every reader computes the same shard order, so the parts partition the epoch."""
    order = list(shards)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    if len(order) >= readers:
        return order[reader::readers], 1
    return order, readers


class _Rejected(Exception):
    """A sample the filters or keys turn away: ``key`` is the config key to blame."""

    def __init__(self, key: str, why: str):
        super().__init__(why)
        self.key, self.why = key, why


class ShardDataset(torch.utils.data.IterableDataset):
    """Endless stream of ``{"caption", "image" (uint8 CHW), "corrupt"}`` from WebDataset shards.

    ``rank``/``world_size`` default to the process's own (``process_rank``); ``epochs`` None streams forever.
    """

    def __init__(self, cfg: DataConfig, seed: int | None = None, epochs: int | None = None,
                 rank: int | None = None, world_size: int | None = None):
        self.shards = expand_shards(cfg.path)
        self.cfg, self.seed, self.epochs = cfg, cfg.seed if seed is None else seed, epochs
        self.rank, self.world_size = rank, world_size
        self.image_keys = [k.strip().lower() for k in cfg.image_key.split(";") if k.strip()]

    def readers(self) -> tuple[int, int]:
        """(this reader's index, number of readers): ranks x DataLoader workers."""
        rank, world = process_rank() if self.rank is None else (self.rank, self.world_size or 1)
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[dict]:
        reader, readers = self.readers()
        epoch = 0
        self.seen, self.corrupt, self.streak = 0, 0, Counter()
        while self.epochs is None or epoch < self.epochs:
            shards, stride = reader_parts(self.shards, epoch, self.seed, reader, readers)
            # (never empty: with fewer shards than readers each reader reads all of them)
            yield from self._epoch(shards, stride, reader, random.Random(f"{self.seed}:{epoch}:{reader}"))
            epoch += 1

    def head(self, n: int) -> list[dict]:
        """The first ``n`` items of one reader that reads everything (validation grids, probes)."""
        whole = ShardDataset(self.cfg, self.seed, None, rank=0, world_size=1)
        it = iter(whole)
        return [next(it) for _ in range(n)]

    def probe(self) -> None:
        """Read until the first accepted sample: a wrong key or filter fails here, before any model loads."""
        self.head(1)

    # ---- one epoch of one reader ------------------------------------------------------------------
    def _samples(self, shards: list[str], stride: int, reader: int, rng: random.Random) -> Iterator[dict]:
        """Raw samples (bytes per member) of this reader's part, through the shuffle buffer."""
        from webdataset.filters import _shuffle
        from webdataset.tariterators import tarfile_samples

        raw = tarfile_samples({"url": s} for s in shards)
        mine = raw if stride == 1 else (s for i, s in enumerate(raw) if i % stride == reader)
        if self.cfg.shuffle_buffer <= 1:
            return mine
        # Shuffle compressed samples, not decoded ones: a 1000-sample buffer of 512 px RGB would hold 0.8 GB.
        return _shuffle(iter(mine), bufsize=self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=rng)

    def _epoch(self, shards: list[str], stride: int, reader: int, rng: random.Random) -> Iterator[dict]:
        accepted, corrupt_since, last, url = 0, 0, None, shards[0]
        reasons: Counter = Counter()
        for sample in self._samples(shards, stride, reader, rng):
            url, self.seen = sample.get("__url__", "?"), self.seen + 1
            try:
                item = self._decode(sample)
            except _Rejected as r:
                reasons[(r.key, r.why)] += 1
                last = (r.key, r.why, url)
                self.streak[r.key] += 1
                if sum(self.streak.values()) >= REJECT_STREAK:
                    raise self._all_rejected(*last, f"{REJECT_STREAK} samples in a row") from None
                continue
            except UNREADABLE as e:
                self.corrupt += 1
                corrupt_since += 1
                if self.seen >= MIN_SEEN:
                    self._check_corrupt(url, sample.get("__key__"), e)
                continue
            self.streak.clear()
            accepted += 1
            yield {**item, "corrupt": corrupt_since}
            corrupt_since = 0
        if self.seen and self.corrupt:
            self._check_corrupt(url, None, None)
        if not accepted:
            if reasons:
                (key, why), _ = reasons.most_common(1)[0]
                raise self._all_rejected(key, why, last[2], "every sample of an epoch")
            if self.corrupt:
                raise ConfigError(f"data.path: every sample read from shard {url} is corrupt")
            raise ConfigError(f"data.path: shard(s) {', '.join(shards[:3])} hold no samples (not WebDataset tars?)")

    def _all_rejected(self, key: str, why: str, shard: str, span: str) -> ConfigError:
        return ConfigError(f"{key}: rejected {span}, e.g. in shard {shard}: {why}")

    def _check_corrupt(self, shard: str, key: str | None, error: Exception | None) -> None:
        limit = self.cfg.max_corrupt_fraction
        if self.corrupt > limit * self.seen:
            what = f" (sample {key}: {error})" if key is not None else ""
            raise ConfigError(f"data.max_corrupt_fraction: {self.corrupt} of {self.seen} samples read are corrupt "
                              f"(more than {limit}), the latest in shard {shard}{what}")

    def _decode(self, sample: dict) -> dict:
        """The item of a raw sample; _Rejected for a missing key or a filter, PIL's errors for a bad image."""
        cfg = self.cfg
        image_key = next((k for k in self.image_keys if k in sample), None)
        members = ", ".join(sorted(k for k in sample if not k.startswith("__"))) or "none"
        if image_key is None:
            raise _Rejected("data.image_key", f"sample {sample['__key__']} has no {cfg.image_key!r} member "
                                              f"(it has: {members})")
        if cfg.caption_key not in sample:
            raise _Rejected("data.caption_key", f"sample {sample['__key__']} has no {cfg.caption_key!r} member "
                                                f"(it has: {members})")
        caption = sample[cfg.caption_key].decode("utf-8", errors="replace").strip()
        with Image.open(io.BytesIO(sample[image_key])) as f:  # the header only: filters run before decoding
            w, h = f.size
            if cfg.min_size is not None and min(w, h) < cfg.min_size:
                raise _Rejected("data.min_size", f"sample {sample['__key__']} is {w}x{h}, under {cfg.min_size} px")
            if cfg.max_aspect is not None and max(w, h) > cfg.max_aspect * min(w, h):
                raise _Rejected("data.max_aspect", f"sample {sample['__key__']} is {w}x{h}, more elongated than "
                                                   f"{cfg.max_aspect}")
            img = f.convert("RGB")  # decodes: a damaged image raises here
        img = center_crop(img, cfg.resolution)
        return {"image": torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), "caption": caption}
