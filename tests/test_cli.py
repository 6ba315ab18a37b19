"""Bad input ends in one clear line and a non-zero exit, before any expensive work."""
import subprocess
import sys

import pytest
import yaml

from tests.conftest import run_dict


def fewstep(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def one_clear_line(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("fewstep: error:") and needle in lines[-1], proc.stderr


def test_missing_config_file(tmp_path):
    one_clear_line(fewstep("train", str(tmp_path / "nope.yaml")), "config file not found")


def test_unknown_key(tmp_path):
    raw = run_dict(tmp_path)
    raw["train"]["lerning_rate"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep("train", str(path)), "unknown key 'train.lerning_rate'")


@pytest.mark.parametrize("make", ["empty_dir", "missing_unet"])
def test_teacher_that_is_not_a_pipeline(tmp_path, make):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    if make == "missing_unet":
        (teacher / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "vae": ["x", "y"]}')
    raw = run_dict(tmp_path)
    raw["model"] = {"pretrained": str(teacher)}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = fewstep("train", str(path))
    one_clear_line(proc, str(teacher))
    assert ("model_index.json is missing" if make == "empty_dir" else "unet") in proc.stderr


def test_help_lists_commands():
    proc = fewstep("--help")
    assert proc.returncode == 0
    for word in ("train", "sample", "build-classifier"):
        assert word in proc.stdout
