"""A user's own captioned images: a folder with images and a ``metadata.jsonl``.

Same layout as the Hugging Face ``imagefolder`` convention: one JSON object per line with
``file_name`` and a caption column (``text`` by default). Every listed file is checked to exist
when the dataset is built, so a broken dataset fails before training, naming the line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewstep.distill.config import ConfigError
from fewstep.distill.data.jsonl import jsonl_records


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
            self.items.append((path, str(rec[caption_column])))
        if not self.items:
            raise ConfigError(f"{meta}: no images listed")
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, text = self.items[index]
        img = Image.open(path).convert("RGB")
        # Resize the short side, then centre-crop: SD's usual preprocessing.
        s = self.resolution / min(img.size)
        img = img.resize((max(self.resolution, round(img.width * s)), max(self.resolution, round(img.height * s))),
                         Image.BICUBIC)
        left, top = (img.width - self.resolution) // 2, (img.height - self.resolution) // 2
        img = img.crop((left, top, left + self.resolution, top + self.resolution))
        return {"image": torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), "caption": text}
