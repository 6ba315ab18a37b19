"""A built wheel is a complete fewstep (DESIGN.md, Package): installed into a fresh venv outside the
repo, it adds one import name (``fewstep``), carries the embedded default, and ``fewstep sample
--pipeline tiny-sd`` works from any directory, drawing the same image as the editable install.

Nothing is downloaded: the wheel is built with the setuptools already installed (no build
isolation; torch requires setuptools >= 77, which builds wheels without the ``wheel`` package), and the fresh venv reuses this venv's dependencies through a ``.pth`` path line (a
plain path is added to ``sys.path`` without running that folder's own ``.pth`` hooks, so the
editable install's finder stays out and ``fewstep`` can only come from the wheel).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a large red circle on the left, gray background"
ENV = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FEWSTEP_ASSETS", "PYTHONHOME")},
       "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def source_copy(dest: Path) -> Path:
    """The files pyproject.toml builds from (its package folders and readme), so the build writes its
    build/ and egg-info into the copy, not into the repo other processes are reading."""
    dest.mkdir()
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(meta["tool"]["setuptools"]["package-dir"].values())
    for name in ["pyproject.toml", meta["project"]["readme"], *sorted(folders)]:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def build_wheel(out: Path, tmp: Path) -> Path:
    src = source_copy(tmp / "src")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out,
         src], cwd=tmp)
    wheels = list(out.glob("fewstep-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def fresh_venv(path: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a new venv with nothing installed, not even pip."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path)
                .stdout.strip())
    assert site.is_dir() and site.is_relative_to(path)
    return python, site


LOCATE = """
import json, sys
import fewstep.pipelines, fewstep.distill, fewstep.eval
from fewstep.eval.assets import assets_dir
print(json.dumps({"modules": [m.__file__ for m in (fewstep.pipelines, fewstep.distill, fewstep.eval)],
                  "fewstep_path": list(fewstep.__path__), "assets": str(assets_dir()),
                  "editable_finder": any("editable" in str(f).lower() for f in sys.meta_path)
                                     or any(m.startswith("__editable__") for m in sys.modules)}))
"""


@pytest.mark.slow
def test_wheel_installs_one_name_with_the_embedded_default(tmp_path, capsys):
    wheel = build_wheel(tmp_path / "dist", tmp_path)
    env_dir = tmp_path / "venv"
    python, site = fresh_venv(env_dir)
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=tmp_path)

    # One distinctive name in site-packages, with the assets and configs as package data.
    names = sorted(p.name for p in site.iterdir())
    assert len(names) == 2 and names[0] == "fewstep" and names[1].startswith("fewstep-"), names  # + its dist-info
    pkg = site / "fewstep"
    assert {"distill", "pipelines", "eval", "assets", "configs"} <= {p.name for p in pkg.iterdir()}
    for name in ("tiny-sd/model_index.json", "tiny-sd/unet", "classifier", "tiny-clip"):
        assert (pkg / "assets" / name).exists(), name
    assert (pkg / "configs" / "tiny" / "teacher.yaml").is_file()

    # Dependencies from this venv, by a plain path line: no editable-install hook comes with them.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "fewstep_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = json.loads(run([python, "-c", LOCATE], cwd=elsewhere).stdout.strip().splitlines()[-1])
    assert not where["editable_finder"]
    assert all(Path(f).is_relative_to(pkg) for f in where["modules"]), where
    assert [Path(p) for p in where["fewstep_path"]] == [pkg], where
    assert Path(where["assets"]) == pkg / "assets", where

    # The console script, from another directory, on the embedded teacher.
    script = env_dir / ("Scripts/fewstep.exe" if os.name == "nt" else "bin/fewstep")
    run([script, "sample", "--pipeline", "tiny-sd", "--prompt", PROMPT, "--steps", "2", "--out", "x.png"], cwd=elsewhere)
    with Image.open(elsewhere / "x.png") as im:
        wheel_image = np.asarray(im.convert("RGB"))
    assert wheel_image.shape == (32, 32, 3) and wheel_image.std() > 5  # an image, not a blank

    # The same command through the editable install draws the same picture.
    from fewstep.pipelines.cli import main

    assert main(["sample", "--pipeline", "tiny-sd", "--prompt", PROMPT, "--steps", "2",
                 "--out", str(tmp_path / "editable.png")]) == 0
    with Image.open(tmp_path / "editable.png") as im:
        np.testing.assert_array_equal(wheel_image, np.asarray(im.convert("RGB")))
