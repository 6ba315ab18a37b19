"""``runs/<name>/logs.jsonl``: one JSON record a line, appended by the loop, read back by ``read_logs``.

A resumed run goes back to its checkpoint's step and redoes the steps after it, so the file can hold
the same step twice: once from the attempt that was interrupted, once from the resumed one. The loop
writes a marker record ``{"event": "resumed", "step": N, "from": "<checkpoint path>"}`` when it
resumes, and ``read_logs`` is the one reader that turns the file back into one history, each step's
records once: the records of the latest attempt. Read logs through it, never line by line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

LOG_FILE = "logs.jsonl"
RESUMED = "resumed"  # the "event" of a resume marker


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one line. A line torn by a kill (no final newline) is closed first, so it
    stays one bad line instead of swallowing the next record."""
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
            f.seek(0, os.SEEK_END)
            if torn:
                f.write(b"\n")
        f.write((json.dumps(record) + "\n").encode())


def _refuse(name: str):
    raise ValueError(f"non-finite {name}")


def read_logs(path: str | os.PathLike, strict: bool = False) -> list[dict]:
    """The records of ``logs.jsonl`` (a file, or a run folder holding one) in the order written, each
    step's records once: a resume marker at step N drops the records of steps after N written before
    it, and a record written after a marker replaces the earlier attempts' records of its step and the
    later steps. Markers themselves are left out. A line that is not JSON is skipped where a kill tore
    it (the last line, or the line just before a resume marker), else it is an error naming the file
    and line; ``strict`` also refuses NaN and Infinity, which fewstep never writes."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    kept: list[tuple[int, dict]] = []  # (attempt, record)
    attempt, seen = 0, set()  # steps the current attempt has already written
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line, **({"parse_constant": _refuse} if strict else {}))
        except json.JSONDecodeError:
            if i + 1 == len(lines) or _is_marker(lines[i + 1][1]):
                continue  # torn by a kill
            raise ValueError(f"{path}:{n}: not a JSON record") from None
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: not a JSON record")
        step = record.get("step")
        if record.get("event") == RESUMED:
            attempt, seen = attempt + 1, set()
            if isinstance(step, int):
                kept = [(a, r) for a, r in kept if not isinstance(r.get("step"), int) or r["step"] <= step]
            continue
        if attempt and isinstance(step, int) and step not in seen:
            seen.add(step)
            kept = [(a, r) for a, r in kept if a == attempt or not isinstance(r.get("step"), int) or r["step"] < step]
        kept.append((attempt, record))
    return [r for _, r in kept]


def _is_marker(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("event") == RESUMED
