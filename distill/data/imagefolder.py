"""A user's own captioned images: a folder with images and a ``metadata.jsonl``.

Same layout as the Hugging Face ``imagefolder`` convention: one JSON object per line with
``file_name`` and a caption column (``text`` by default). Every listed file is checked when the
dataset is built (it exists, and PIL recognises it as an image from its header: an empty or non-image
file fails before training, naming the line and file); an image that is damaged further in (e.g. a
truncated PNG, whose header is intact) fails when it is first decoded, naming the file. Decoding every
image up front would cost a full read of the dataset at each start.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewstep.distill.config import ConfigError
from fewstep.distill.data.jsonl import jsonl_records


UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises for a bad file


def _header_problem(path: Path) -> str | None:
    """Why PIL cannot even identify ``path`` as an image (empty, not an image, unreadable), or None."""
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        with Image.open(path):
            return None
    except UNREADABLE as e:
        return f"is not a readable image ({e})"


class ImageFolderDataset(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, caption_column: str = "text", resolution: int = 512):
        self.root = Path(root)
        meta = self.root / "metadata.jsonl"
        if not meta.is_file():
            raise ConfigError(f"data.path: {meta} not found (one JSON line per image: "
                              f'{{"file_name": ..., "{caption_column}": ...}})')
        self.items: list[tuple[Path, str]] = []
        for n, rec in jsonl_records(meta, meta.read_text().splitlines()):
            if not isinstance(rec, dict) or "file_name" not in rec or caption_column not in rec:
                raise ConfigError(f"{meta}:{n}: needs keys 'file_name' and '{caption_column}'")
            path = self.root / rec["file_name"]
            if not path.is_file():
                raise ConfigError(f"{meta}:{n}: image {path} does not exist")
            problem = _header_problem(path)
            if problem:
                raise ConfigError(f"{meta}:{n}: image {path} {problem}")
            self.items.append((path, str(rec[caption_column])))
        if not self.items:
            raise ConfigError(f"{meta}: no images listed")
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, text = self.items[index]
        try:
            with Image.open(path) as f:
                img = f.convert("RGB")
        except UNREADABLE as e:
            raise ConfigError(f"data.path: image {path} cannot be decoded ({e}); replace it or remove its line from "
                              f"{self.root / 'metadata.jsonl'}") from None
        img = center_crop(img, self.resolution)
        return {"image": torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), "caption": text}


def center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` (bicubic), then crop the centre square: SD's preprocessing."""
    s = resolution / min(img.size)
    img = img.resize((max(resolution, round(img.width * s)), max(resolution, round(img.height * s))), Image.BICUBIC)
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))
