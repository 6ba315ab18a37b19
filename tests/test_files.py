"""The atomic writers: success replaces the target; a failure midway leaves the old file or folder as
it was and no temporary litter beside it."""
from __future__ import annotations

import os

import pytest

from fewstep.distill import files as distill_files
from fewstep.eval import files as eval_files

# Both layers keep a file writer (eval imports nothing from training); both must behave the same.
FILE_WRITERS = [distill_files.atomic_write, eval_files.atomic_write]


@pytest.mark.parametrize("atomic_write", FILE_WRITERS)
def test_file_write_replaces_and_leaves_nothing_else(tmp_path, atomic_write):
    target = tmp_path / "sub" / "config.yaml"
    assert atomic_write(target, "first") == target  # creates the folder too
    atomic_write(target, b"second \x00 bytes")
    assert target.read_bytes() == b"second \x00 bytes"
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]
    assert target.stat().st_mode & 0o777 == 0o644  # readable like any file, not mkstemp's owner-only


@pytest.mark.parametrize("atomic_write", FILE_WRITERS)
def test_file_write_failing_midway_keeps_old_file(tmp_path, atomic_write):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    # A lone surrogate cannot be encoded: the writer fails after it has made its temporary file.
    with pytest.raises(UnicodeEncodeError):
        atomic_write(target, "new \udc80")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_dir_write_replaces_whole_folder(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    with distill_files.atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and not any(tmp.iterdir())
        (tmp / "model.safetensors").write_text("new")
        assert (target / "stale.bin").is_file()  # readers see the old folder until the block ends
    assert [p.name for p in target.iterdir()] == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    with distill_files.atomic_dir(tmp_path / "a" / "fresh") as tmp:  # no previous folder, no parent yet
        (tmp / "x").write_text("1")
    assert (tmp_path / "a" / "fresh" / "x").read_text() == "1"


def test_dir_write_failing_inside_block_keeps_old_folder(tmp_path):
    target = tmp_path / "classifier"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with distill_files.atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("killed while writing")
    assert [p.name for p in target.iterdir()] == ["model.safetensors"]
    assert (target / "model.safetensors").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["classifier"]


def test_dir_write_failing_at_the_swap_puts_old_folder_back(tmp_path, monkeypatch):
    # The riskiest moment: the old folder has been moved aside and the new one fails to move in.
    target = tmp_path / "tiny-clip"
    target.mkdir()
    (target / "weights").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(src).startswith(".tmp-") and str(dst) == str(target):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        with distill_files.atomic_dir(target) as tmp:
            (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-clip"]
