"""Prompts without images, for image-free methods (VSD, DMD without its GAN term, SiD).

Those methods learn from the teacher alone, so decoding images they never look at would only cost
time and force users to own an image dataset. A prompt source is one of:

* a ``.txt`` file: one prompt a line; blank lines and lines starting with ``#`` are skipped;
* a ``.jsonl`` file: one JSON object a line with a caption column (``data.caption_column``);
* no file: the embedded procedural domain's captions for the split's seed, the same caption at each
  index as :class:`ProceduralDataset` (plus its attribute labels, which come from the caption's
  scene, not from pixels), so a tiny config trains on exactly the training distribution's prompts.

Items are ``{"caption": str}`` (and ``"labels"`` for the embedded domain): the caption key of every
other source and no ``"image"``, so ``collate`` yields a batch without ``"pixels"`` and a method
that needs images fails at once instead of training on something else. Files are read and checked
whole when the dataset is built, so a bad line fails before any training step, naming its number.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fewstep.distill.config import ConfigError
from fewstep.distill.data.jsonl import jsonl_records
from fewstep.distill.data.procedural import caption, sample_scene

SUFFIXES = (".txt", ".jsonl")
# Size of the embedded domain's prompt list. Finite because the loop reshuffles every source but
# "procedural" each epoch (a permutation of 2**31 indices would take ~16 GB); 65,536 prompts are
# >100x the domain's 576 distinct captions, and each epoch draws a new order.
PROCEDURAL_PROMPTS = 2**16


def read_prompt_file(path: str | Path, caption_column: str = "text") -> list[str]:
    """Every prompt in a ``.txt`` or ``.jsonl`` file; any problem is one ConfigError naming the file
    (and the line, for a bad ``.jsonl`` line)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"data.path: prompt file {path} {what}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"data.path: {path}: unsupported prompt file type {path.suffix or '(none)'!r}; "
                          f"expected {' or '.join(SUFFIXES)}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.path: {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = _txt_prompts(lines) if suffix == ".txt" else _jsonl_prompts(lines, path, caption_column)
    if not prompts:
        hint = "one prompt a line" if suffix == ".txt" else f'one {{"{caption_column}": ...}} object a line'
        raise ConfigError(f"data.path: {path}: no prompts in it ({hint})")
    return prompts


def _txt_prompts(lines: list[str]) -> list[str]:
    """Stripped non-blank lines, ``#`` comments dropped (so prompt lists can carry notes)."""
    stripped = (line.strip() for line in lines)
    return [s for s in stripped if s and not s.startswith("#")]


def _jsonl_prompts(lines: list[str], path: Path, column: str) -> list[str]:
    """The caption column of every non-blank line (the imagefolder metadata convention)."""
    out = []
    for n, rec in jsonl_records(path, lines):
        if not isinstance(rec, dict) or column not in rec:
            keys = ", ".join(map(repr, rec)) if isinstance(rec, dict) else f"a JSON {type(rec).__name__}"
            raise ConfigError(f"{path}:{n}: no caption key '{column}' (data.caption_column); found {keys or 'no keys'}")
        if not isinstance(rec[column], str):
            raise ConfigError(f"{path}:{n}: caption '{column}' must be a string, got {type(rec[column]).__name__}")
        out.append(rec[column].strip())
    return out


class PromptDataset(torch.utils.data.Dataset):
    """Prompts from a file, in file order (the loop's sampler shuffles them by the run's seed)."""

    def __init__(self, prompts: list[str]):
        if not prompts:
            raise ConfigError("data: a prompt source needs at least one prompt")
        self.prompts = list(prompts)

    @classmethod
    def from_file(cls, path: str | Path, caption_column: str = "text") -> "PromptDataset":
        return cls(read_prompt_file(path, caption_column))

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict:
        return {"caption": self.prompts[index]}


class ProceduralPromptDataset(torch.utils.data.Dataset):
    """The embedded domain's captions for split ``seed``, rendering nothing.

    Index ``i`` has the caption and labels of ``ProceduralDataset(seed)[i]``: both are drawn from
    ``sample_scene(seed, i)``, which is cheap; only ``render`` (skipped here) costs time.
    """

    def __init__(self, seed: int = 0, length: int = PROCEDURAL_PROMPTS):
        if length < 1:
            raise ConfigError(f"data: the procedural prompt list needs length >= 1, got {length}")
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} prompts")
        scene = sample_scene(self.seed, index)
        return {"caption": caption(scene), "labels": torch.tensor(scene.labels())}
