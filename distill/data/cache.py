"""Precomputed VAE latents and text embeddings (``data.source: cache``), written by ``fewstep cache``.

What is stored per image is the VAE posterior, not one sample of it: diffusers'
``DiagonalGaussianDistribution.parameters`` (mean and log-variance stacked on the channel axis). SD's
training draws a fresh latent from the posterior at every step (``ModelSet.encode_images``); keeping
the posterior keeps that augmentation, and because the draw has the same shape, dtype and device as
on the image path, a run from the cache consumes the random stream exactly as a run from images and
gives the same losses (tests/test_cache.py). A single stored sample would freeze one draw forever.

Layout of a cache folder::

    cache.json                 what it was made from (teacher with revision and variant, data settings,
                               shard size, shard count)
    shard-000000.safetensors   "moments" [n, 2C, h, w], "text_embeddings" [n, L, D]; metadata: captions, count

Items carry the tensors in place of what they replace, so methods need no branch: ``"image"`` is a
:class:`LatentMoments` (``collate`` stacks it into ``batch["pixels"]``, which ``encode_images`` samples
instead of running the VAE) and ``"caption"`` is a :class:`CachedCaption` (a ``str`` that carries its
embedding, which ``encode_text`` uses instead of running the text encoder; an empty caption from
caption dropout is still encoded).

A run trains from a cache only with the teacher that made it (``check_teacher``, in preflight, before any
weight loads): latents of another VAE and embeddings of another text encoder would train without an error,
on the wrong inputs.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from fewstep.distill.config import ConfigError, ModelConfig

MANIFEST = "cache.json"
FORMAT = 1  # bump when the layout changes: an older cache is then refused, not misread
RESIZED = ("imagefolder", "webdataset")  # sources whose images are resized to data.resolution (procedural's are not)


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


def teacher_record(model: ModelConfig, seed: int) -> dict:
    """What ``cache.json`` records of the teacher whose VAE and text encoder made a cache: a fresh tiny
    pipeline by its architecture and ``train.seed`` (which draw its weights), a pretrained one by its id and
    the revision and variant that pick its files (a local folder by its absolute path, however spelt)."""
    if model.tiny is not None:
        return {"tiny": dataclasses.asdict(model.tiny), "seed": seed}
    return {"pretrained": _where(model.pretrained), "revision": model.revision, "variant": model.variant}


def _where(name: str) -> str:
    """A local teacher folder by its absolute path; a hub id or embedded name as it is."""
    return str(Path(name).expanduser().resolve()) if Path(name).expanduser().exists() else name


def describe_teacher(record) -> str:
    """A teacher record (``teacher_record``, or an older cache's bare name) as an error message names it."""
    if not isinstance(record, dict):
        return repr(record)
    if "tiny" in record:
        return f"a fresh model.tiny pipeline (train.seed {record.get('seed')})"
    pins = [f"{k} {record[k]!r}" for k in ("revision", "variant") if record.get(k) is not None]
    return repr(record.get("pretrained")) + (f" ({', '.join(pins)})" if pins else "")


def check_teacher(root: Path, manifest: dict, model: ModelConfig, seed: int, resolution: int) -> None:
    """The cache at ``root`` must have been made by the run's teacher (``teacher_record``) and, for sources
    that resize, at the run's ``data.resolution``; raises ConfigError (one line, naming data.path and both).
    A cache written before revision and variant were recorded (its teacher a bare name) cannot be told
    apart from one of another revision, so it is refused with how to rebuild it."""
    rebuild = f"rebuild it with `fewstep cache CONFIG --out {root}` for this run's model"
    ours = json.loads(json.dumps(teacher_record(model, seed)))  # as cache.json holds it (lists, not tuples)
    theirs = manifest.get("teacher")
    if isinstance(theirs, str) and ours.get("pretrained") == _where(theirs):
        raise ConfigError(f"data.path: cache {root} records its teacher {theirs!r} without revision and variant "
                          f"(written by an older fewstep), so it may be another revision's; {rebuild}")
    if theirs != ours:
        what, mine = describe_teacher(theirs), describe_teacher(ours)
        if what == mine and isinstance(theirs, dict) and "tiny" in theirs:
            diff = sorted(k for k in set(theirs["tiny"]) | set(ours["tiny"])
                          if theirs["tiny"].get(k) != ours["tiny"].get(k))
            what += f" with other model.tiny {', '.join(diff)}"
        raise ConfigError(f"data.path: cache {root} was made with teacher {what}, this run's is {mine} (its latents "
                          f"and text embeddings are another VAE's and text encoder's); {rebuild}, or train with "
                          "the teacher that made it")
    data = manifest.get("data") or {}
    made = data.get("resolution")
    if data.get("source") in RESIZED and made is not None and made != resolution:
        raise ConfigError(f"data.resolution: {resolution}, but cache {root} (data.path) holds images resized to "
                          f"{made} px; set data.resolution={made}, or {rebuild}")


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

    def check_teacher(self, model: ModelConfig, seed: int, resolution: int) -> None:
        """``check_teacher`` of this cache against a run's ``model``, ``train.seed`` and ``data.resolution``."""
        check_teacher(self.root, self.manifest, model, seed, resolution)

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
