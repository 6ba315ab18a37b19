"""``fewstep cache``: VAE posteriors and text embeddings of a data source, written once as sharded
safetensors (the layout and why the posterior is kept: ``distill.data.cache``).

Work is cut into units, one output shard each: ``--shard-size`` consecutive items of a map-style
source (procedural, imagefolder), or one input tar of a webdataset source (read in file order, with
the same filters and corrupt-sample rule as training). Under ``accelerate launch`` rank ``r`` does the
units ``k`` with ``k % world == r`` and writes their shards itself. Each shard is written atomically
(``distill.files.atomic_write``), so after a kill every shard present is whole; a rerun verifies the
shards present (framing and row count) and redoes only the missing or damaged ones.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
from safetensors.torch import save
from tqdm.auto import tqdm

from fewstep.distill.config import ConfigError, RunConfig
from fewstep.distill.data import build_dataset, collate
from fewstep.distill.data.cache import FORMAT, MANIFEST, shard_count, shard_name, teacher_record
from fewstep.distill.data.shards import ShardDataset
from fewstep.distill.files import atomic_write
from fewstep.distill.modelset import ModelSet

CACHEABLE = ("procedural", "imagefolder", "webdataset")  # sources with images
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Unit(NamedTuple):
    index: int  # output shard number
    expected: int | None  # rows it must hold (None: as many as the input tar yields)
    items: object  # () -> iterator of dataset items


def plan_units(cfg: RunConfig, shard_size: int, num_samples: int | None) -> list[Unit]:
    """The units of ``cfg.data``; a wrong source, a missing shard or an unbounded source fails here,
    before any model loads."""
    data = cfg.data
    if data.source not in CACHEABLE:
        raise ConfigError(f"data.source: {data.source!r} has no images to cache; use one of {', '.join(CACHEABLE)}")
    dataset = build_dataset(data)
    if isinstance(dataset, ShardDataset):
        if num_samples is not None:
            raise ConfigError("--num-samples: a webdataset source is cached whole (one output shard per tar)")
        one = lambda tar: ShardDataset(dataclasses.replace(data, path=tar, shuffle_buffer=0), epochs=1,  # noqa: E731
                                       rank=0, world_size=1)
        return [Unit(k, None, lambda tar=tar: iter(one(tar))) for k, tar in enumerate(dataset.shards)]
    n = len(dataset) if num_samples is None else min(num_samples, len(dataset))
    if n > 10**8:
        raise ConfigError(f"--num-samples: data.source {data.source!r} is endless; say how many images to cache")
    chunk = lambda start: (dataset[i] for i in range(start, min(start + shard_size, n)))  # noqa: E731
    return [Unit(k, min(shard_size, n - start), lambda start=start: chunk(start))
            for k, start in enumerate(range(0, n, shard_size))]


def manifest_for(cfg: RunConfig, units: list[Unit], shard_size: int, dtype: str) -> dict:
    """What a cache was made from: a rerun with other settings must not mix into it."""
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("num_workers", "shuffle_buffer")}
    # the teacher with its revision and variant: training from the cache checks it (data.cache.check_teacher)
    return {"format": FORMAT, "teacher": teacher_record(cfg.model, cfg.train.seed), "data": data,
            "shard_size": shard_size, "num_shards": len(units), "dtype": dtype}


def check_manifest(out: Path, manifest: dict) -> None:
    """An existing ``cache.json`` must describe the same cache (then its shards are resumed)."""
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return  # written atomically, so only a foreign file; it is replaced
    diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
    if diff:
        raise ConfigError(f"--out {out}: holds a cache made with other settings ({', '.join(diff)} differ); "
                          "choose another folder or delete it")


def batches(items: Iterator[dict], size: int) -> Iterator[dict]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield collate(chunk)
            chunk = []
    if chunk:
        yield collate(chunk)


@torch.no_grad()
def encode_unit(models: ModelSet, unit: Unit, batch_size: int, dtype: torch.dtype) -> bytes:
    """The safetensors bytes of one shard: posteriors, text embeddings, captions and the row count."""
    vae, moments, embeddings, captions = models.pipe.vae, [], [], []
    for batch in batches(unit.items(), batch_size):
        pixels = batch["pixels"].to(models.device, vae.dtype)
        moments.append(vae.encode(pixels).latent_dist.parameters.to("cpu", dtype))
        embeddings.append(models.encode_text(batch["captions"]).to("cpu", dtype))
        captions += [str(c) for c in batch["captions"]]
    if unit.expected is not None and len(captions) != unit.expected:
        raise ConfigError(f"data.path: shard {unit.index} expected {unit.expected} items, read {len(captions)}")
    if not captions:
        raise ConfigError(f"data.path: input {unit.index} holds no usable samples")
    tensors = {"moments": torch.cat(moments).contiguous(), "text_embeddings": torch.cat(embeddings).contiguous()}
    return save(tensors, metadata={"count": str(len(captions)), "captions": json.dumps(captions)})


def write_cache(cfg: RunConfig, pipe, out: str | Path, units: list[Unit], shard_size: int, batch_size: int = 32,
                dtype: str = "float32") -> dict:
    """Write this process's missing shards under ``out``; returns counts (this process's view)."""
    from accelerate import PartialState

    state, out = PartialState(), Path(out)
    manifest = manifest_for(cfg, units, shard_size, dtype)
    check_manifest(out, manifest)
    if state.is_main_process:
        atomic_write(out / MANIFEST, json.dumps(manifest, indent=1))
    models = ModelSet(pipe).to(state.device)
    mine = [u for u in units if u.index % state.num_processes == state.process_index]
    done = written = 0
    with tqdm(mine, desc=f"cache (rank {state.process_index})", disable=not state.is_local_main_process) as bar:
        for unit in bar:
            path = out / shard_name(unit.index)
            count = shard_count(path)
            if count is not None and (unit.expected is None or count == unit.expected):
                done += 1  # finished by an earlier run, verified
                continue
            atomic_write(path, encode_unit(models, unit, batch_size, DTYPES[dtype]))
            written += 1
    state.wait_for_everyone()
    return {"shards": len(units), "mine": len(mine), "kept": done, "written": written}
