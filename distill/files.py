"""Atomic writes for training, export and asset building: a reader never sees a half-written file or
folder, and a failure leaves what was there before.

The one file writer and the one folder writer of ``distill`` and ``pipelines`` (``eval`` keeps its own
file writer, ``eval.files``, because it imports nothing from training), the folder remover that never
shows a half-deleted folder under its name, and the check that an output path can be written at all.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without an error it
    replaces ``path`` (the old folder, if any, is moved aside first and removed after), otherwise it
    is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes owner-only folders
    old = None
    try:
        yield tmp
        if path.exists():
            # rename() cannot replace a non-empty folder: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".old-{path.name}.", dir=path.parent)) / path.name
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)


def move_aside(path: str | os.PathLike, tag: str = "del") -> Path:
    """Rename the folder ``path`` into a new hidden folder ``.<tag>-<name>.XXXX`` beside it (one atomic
    rename) and return that hidden folder. Deleting it afterwards can be killed at any moment: the
    name ``path`` is gone at once, so no reader ever finds a half-deleted folder there."""
    path = Path(path)
    trash = Path(tempfile.mkdtemp(prefix=f".{tag}-{path.name}.", dir=path.parent))
    os.replace(path, trash / path.name)
    return trash


def remove_dir(path: str | os.PathLike) -> None:
    """Delete the folder ``path`` without ever leaving it half-deleted under its own name."""
    shutil.rmtree(move_aside(path))


def unwritable(path: str | os.PathLike, folder: bool) -> str | None:
    """Why the output ``path`` (a file, or with ``folder`` a folder; missing parents are created when it
    is written) cannot be written, or None. Cheap and leaves nothing behind: a file under an existing
    file, a folder that is a file (or the reverse), and a place where no file can be created (a
    read-only or virtual file system, no permission: probed by creating and removing a temporary file,
    which also holds for root, whom permission bits do not stop)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        return f"{path} is {'a file, not a folder' if folder else 'a folder, not a file'}"
    probe = path if folder and path.is_dir() else path.parent
    nearest = next(p for p in (probe, *probe.parents) if p.exists() or p == Path(p.anchor or "."))
    if not nearest.is_dir():
        return f"{nearest} is a file, not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fewstep-probe-", dir=nearest)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"cannot write under {nearest} ({e.strerror or e})"
    return None
