"""fewstep's procedural training data as WebDataset tar shards, for training scripts that read shards.

Sample i of the shards is item i of ``ProceduralDataset(seed)``, the item ``fewstep train`` draws as
the i-th training image with ``data.source: procedural`` (its sampler walks the indices in order), so
a script that reads these shards trains on the same scenes and captions. Each sample has three members:

- ``<key>.png``: the RGB image, PNG (lossless: decoding gives back the rendered uint8 pixels exactly);
- ``<key>.txt``: the caption (UTF-8);
- ``<key>.json``: metadata in the LAION field names some webdataset pipelines filter on
  (``original_width`` / ``original_height``: the image's true size; ``pwatermark``: 0, the images
  carry none), plus the procedural index and attribute labels.

    python bench/reference_shards.py --out DIR --num-samples 19200 [--seed 0] [--per-shard 1000]
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fewstep.distill.data.procedural import ProceduralDataset


def _member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def png_bytes(image_chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(out: str | Path, num_samples: int, seed: int = 0, per_shard: int = 1000) -> list[Path]:
    """Write items 0..num_samples-1 of ``ProceduralDataset(seed)`` to ``out/shard-NNNNN.tar``
    (``per_shard`` samples each, in index order). Returns the shard paths. Reuses a complete set
    written earlier with the same arguments (``out/shards.json``)."""
    out = Path(out)
    manifest = out / "shards.json"
    want = {"num_samples": num_samples, "seed": seed, "per_shard": per_shard, "format": "png+txt+json"}
    count = -(-num_samples // per_shard)
    paths = [out / f"shard-{k:05d}.tar" for k in range(count)]
    if manifest.is_file() and json.loads(manifest.read_text()).get("args") == want and all(p.is_file() for p in paths):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    data, now = ProceduralDataset(seed), time.time()
    for k, path in enumerate(paths):
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w") as tar:
            for i in range(k * per_shard, min(num_samples, (k + 1) * per_shard)):
                item = data[i]
                image = item["image"].numpy()
                png = png_bytes(image)
                if i == 0:  # lossless: the decoded PNG is the rendered image
                    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")),
                                          image.transpose(1, 2, 0)), "PNG round trip changed the pixels"
                key = f"{i:08d}"
                meta = {"original_width": int(image.shape[2]), "original_height": int(image.shape[1]),
                        "pwatermark": 0.0, "procedural_seed": seed, "index": i,
                        "labels": [int(v) for v in item["labels"]]}
                _member(tar, f"{key}.png", png, now)
                _member(tar, f"{key}.txt", item["caption"].encode(), now)
                _member(tar, f"{key}.json", json.dumps(meta).encode(), now)
        tmp.replace(path)
    manifest.write_text(json.dumps({"args": want, "shards": [p.name for p in paths]}, indent=1) + "\n")
    return paths


def brace_pattern(paths: list[Path]) -> str:
    """``dir/shard-{00000..00019}.tar`` for a contiguous set (what webdataset and braceexpand read)."""
    if len(paths) == 1:
        return str(paths[0])
    return str(paths[0].parent / f"shard-{{{paths[0].stem[6:]}..{paths[-1].stem[6:]}}}.tar")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--seed", type=int, default=0, help="procedural split (fewstep trains on 0)")
    p.add_argument("--per-shard", type=int, default=1000)
    args = p.parse_args()
    paths = write_shards(args.out, args.num_samples, args.seed, args.per_shard)
    print(brace_pattern(paths))


if __name__ == "__main__":
    main()
