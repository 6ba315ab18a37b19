"""Bad input ends in one clear line and a non-zero exit, before any expensive work.

The commands run in-process through ``main()`` (a subprocess would spend seconds importing
diffusers for each case); one test runs the installed ``fewstep`` entry point itself."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fewstep.pipelines.cli import main
from tests.conftest import fewstep, run_dict

REPO = Path(__file__).resolve().parents[1]


def one_clear_line(result, needle):
    code, err = result
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("fewstep: error:") and needle in lines[-1], err


def test_entry_point_exits_2_with_one_line(tmp_path):
    """The installed console script (``fewstep``) turns main()'s status into the process exit status."""
    script = Path(sys.executable).with_name("fewstep")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "fewstep.pipelines.cli"]
    proc = subprocess.run([*cmd, "train", "nope.yaml"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["fewstep: error: config file not found: nope.yaml"], proc.stderr


def test_missing_config_file(tmp_path, capsys):
    one_clear_line(fewstep(capsys, "train", tmp_path / "nope.yaml"), "config file not found")


def test_unknown_key(tmp_path, capsys):
    raw = run_dict(tmp_path)
    raw["train"]["lerning_rate"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep(capsys, "train", path), "unknown key 'train.lerning_rate'")


@pytest.mark.parametrize("make", ["empty_dir", "missing_unet"])
def test_teacher_that_is_not_a_pipeline(tmp_path, capsys, make):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    if make == "missing_unet":
        (teacher / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "vae": ["x", "y"]}')
    raw = run_dict(tmp_path)
    raw["model"] = {"pretrained": str(teacher)}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = fewstep(capsys, "train", path)
    one_clear_line(result, str(teacher))
    assert ("model_index.json is missing" if make == "empty_dir" else "unet") in result[1]
    assert not (tmp_path / "runs" / "t").exists()


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("train", "sample", "export", "eval", "build-classifier", "build-tiny-clip"):
        assert re.search(rf"^ {{4}}{word}\s", out, re.M), word  # listed as a sub-command, not only in an example


def test_lora_on_the_wrong_base_is_refused(tmp_path, capsys):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (lora / "fewstep_base.json").write_text('{"base_model": "some-other-base", "fingerprint": "0000000000000000"}')
    result = fewstep(capsys, "sample", "--pipeline", "tiny-sd", "--lora", lora, "--prompt", "x", "--steps", "1",
                     "--out", tmp_path / "x.png")
    one_clear_line(result, "trained on base 'some-other-base'")
    assert not (tmp_path / "x.png").exists()


def test_export_of_a_run_without_finished_checkpoint(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    (run / "checkpoints" / ".tmp-checkpoint-5").mkdir(parents=True)  # killed mid-save
    (run / "config.yaml").write_text(yaml.safe_dump(run_dict(tmp_path)))
    one_clear_line(fewstep(capsys, "export", run), "no finished checkpoint")
    assert not (run / "export").exists()


def test_export_of_an_earlier_checkpoint(tmp_path, capsys):
    """``fewstep export --step N`` writes the student of checkpoint N: the same files as the newest-checkpoint
    export of a run whose later checkpoints are gone, and not the final student; a step without a
    checkpoint is one line naming the steps there are, before anything is written."""
    from safetensors.torch import load_file

    raw = run_dict(tmp_path, method="lcm", steps=6, checkpoint_every=3)
    raw["student"] = {"kind": "lora", "lora_rank": 4}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "runs" / "t"
    assert fewstep(capsys, "train", cfg, "--no-export")[0] == 0
    code, err = fewstep(capsys, "export", run, "--step", "3", "--out", tmp_path / "at3")
    assert code == 0 and "exported step 3 " in err, err
    assert fewstep(capsys, "export", run, "--out", tmp_path / "final")[0] == 0
    one_clear_line(fewstep(capsys, "export", run, "--step", "4", "--out", tmp_path / "at4"),
                   "no checkpoint at step 4 (checkpoints at: 3, 6)")
    assert not (tmp_path / "at4").exists()
    one_clear_line(fewstep(capsys, "export", run, "--step", "-1", "--out", tmp_path / "neg"), "--step")
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    assert fewstep(capsys, "export", run, "--out", tmp_path / "newest3")[0] == 0

    def lora(folder):
        return load_file(str(tmp_path / folder / "pytorch_lora_weights.safetensors"))

    at3, final, newest3 = lora("at3"), lora("final"), lora("newest3")
    assert at3.keys() == final.keys() == newest3.keys() and at3
    assert all(torch.equal(at3[k], newest3[k]) for k in at3)
    assert any(not torch.equal(at3[k], final[k]) for k in at3)


def test_method_settings_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """A method's own constraints (TSCD: segments within the skip grid) fail at config time."""
    monkeypatch.chdir(tmp_path)  # the shipped config writes to ./runs/<name>
    result = fewstep(capsys, "train", REPO / "configs" / "tiny" / "tscd_lora.yaml",
                     "--set", "method.num_ddim_timesteps=4", "--set", "name=test-never-written")
    one_clear_line(result, "method.stages: 8 segments")
    assert not (tmp_path / "runs").exists()


def test_shipped_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    """A wheel install has no configs/ folder beside the user: shipped configs resolve by name."""
    from fewstep.pipelines.cli import SHIPPED_CONFIGS, config_path

    monkeypatch.chdir(tmp_path)
    want = SHIPPED_CONFIGS / "tiny" / "lcm_lora.yaml"
    assert want.is_file()
    for name in ("tiny/lcm_lora", "tiny/lcm_lora.yaml", "configs/tiny/lcm_lora.yaml"):
        assert config_path(name) == want
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "lcm_lora.yaml").write_text("name: mine\n")  # a user's own file wins
    assert config_path("tiny/lcm_lora.yaml") == Path("tiny/lcm_lora.yaml")
    assert config_path("tiny/nothing") == Path("tiny/nothing")


@pytest.mark.parametrize("flag", ["--bootstrap", "--diversity-prompts", "--diversity-seeds"])
def test_eval_sampling_knobs_reject_non_positive_values(capsys, flag):
    one_clear_line(fewstep(capsys, "eval", "--pipeline", "tiny-sd", "--steps", "25", flag, "0"), flag)


def test_prompt_only_source_for_a_method_that_needs_images_fails_before_loading(capsys, tmp_path):
    """A phase that trains on image batches cannot run on a prompts file: one line, before any model."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a large red circle on the left, gray background\n")
    raw = run_dict(tmp_path, method="lcm")
    raw["model"] = {"pretrained": str(tmp_path / "no-such-teacher")}  # never reached
    raw["data"] = {"source": "prompts", "path": str(prompts)}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep(capsys, "train", cfg), "data.source")
    raw["data"] = {"source": "prompts", "path": str(tmp_path / "missing.txt")}
    cfg.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep(capsys, "train", cfg), "missing.txt")


def test_eval_steps_the_student_is_not_trained_for_fail_before_training(capsys, tmp_path):
    """A wrong eval step list is reported up front, not after training and export."""
    raw = run_dict(tmp_path, method="tscd")
    raw["model"] = {"pretrained": str(tmp_path / "no-such-teacher")}  # never reached
    raw["method"].update({"num_ddim_timesteps": 10, "stages": [{"segments": 2, "steps": 3}]})
    raw["eval"] = {"enabled": True, "steps": [2, 3]}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep(capsys, "train", cfg), "eval.steps")
    raw["eval"]["steps"] = [2]  # trained: gets past preflight to the (missing) teacher
    cfg.write_text(yaml.safe_dump(raw))
    one_clear_line(fewstep(capsys, "train", cfg), "no-such-teacher")
