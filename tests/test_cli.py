"""Bad input ends in one clear line and a non-zero exit, before any expensive work."""
import subprocess
import sys

import pytest
import yaml

from tests.conftest import run_dict


def fewstep(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fewstep.pipelines.cli", *args], capture_output=True, text=True,
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


def test_lora_on_the_wrong_base_is_refused(tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (lora / "fewstep_base.json").write_text('{"base_model": "some-other-base", "fingerprint": "0000000000000000"}')
    proc = fewstep("sample", "--pipeline", "tiny-sd", "--lora", str(lora), "--prompt", "x", "--steps", "1",
                   "--out", str(tmp_path / "x.png"))
    one_clear_line(proc, "trained on base 'some-other-base'")
    assert not (tmp_path / "x.png").exists()


def test_export_of_a_run_without_finished_checkpoint(tmp_path):
    run = tmp_path / "runs" / "r"
    (run / "checkpoints" / ".tmp-checkpoint-5").mkdir(parents=True)  # killed mid-save
    (run / "config.yaml").write_text(yaml.safe_dump(run_dict(tmp_path)))
    proc = fewstep("export", str(run))
    one_clear_line(proc, "no finished checkpoint")
    assert not (run / "export").exists()


def test_method_settings_are_checked_before_any_work():
    """A method's own constraints (TSCD: segments within the skip grid) fail at config time."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = fewstep("train", "configs/tiny/tscd_lora.yaml", "--set", "method.num_ddim_timesteps=4",
                   "--set", "name=test-never-written", cwd=root)
    one_clear_line(proc, "method.stages: 8 segments")
    assert not (root / "runs" / "test-never-written").exists()
