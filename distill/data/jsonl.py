"""JSON-lines files of captions (image-folder metadata, prompt lists), read with one rule for errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from fewstep.distill.config import ConfigError


def jsonl_records(path: Path, lines: list[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line; a line that is not JSON is a ConfigError
    naming the file and the line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
