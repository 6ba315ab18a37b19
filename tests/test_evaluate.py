"""The evaluation sweep end to end through ``fewstep eval`` on a very small fresh pipeline and LoRA,
and its clear failures (missing Inception weights, untrained step counts) before any generation.
The command runs in-process through ``main()`` (tests/test_cli.py runs the entry point itself)."""
import hashlib
import json
import os

import pytest
import torch
from PIL import Image

from fewstep.distill.config import ConfigError, EvalConfig
from fewstep.distill.run_config import parse_config
from fewstep.distill.sampling import Recipe
from tests.conftest import SMALL_ARCH, fewstep, run_dict

TRAINED = [1, 2]  # the step counts the test LoRA claims to be trained for
EMBEDDED_CLIP = os.path.join(os.path.dirname(__file__), "..", "assets", "tiny-clip")


def one_clear_line(result, needle):
    code, err = result
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fewstep: error:") and needle in lines[0], err


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A fresh very small pipeline (the "teacher") and a LoRA export on it, trained for 1 and 2 steps."""
    from peft import LoraConfig

    from fewstep.distill.config import TinyArch
    from fewstep.pipelines.export import export_lora
    from fewstep.pipelines.teacher import load_pipeline
    from fewstep.pipelines.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("models")
    base = root / "base"
    build_tiny_pipeline(TinyArch(**SMALL_ARCH), seed=5).save_pretrained(base)
    pipe = load_pipeline(str(base))
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    with torch.no_grad():  # peft starts B at zero; make the student really differ from its base
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    recipe = Recipe("TCDScheduler", {"original_inference_steps": 50}, 2, 1.0, trained_steps=TRAINED)
    export_lora(pipe, recipe, root / "lora", title="test student", base_model=str(base), base_unet=pipe.unet)
    return base, root / "lora"


@pytest.mark.slow
def test_sweep_writes_consistent_report(models, tmp_path, capsys):
    base, lora = models
    out = tmp_path / "eval"
    n = 8
    code, err = fewstep(capsys, "eval", "--pipeline", base, "--lora", lora, "--steps", "1,2", "--teacher", base,
                        "--teacher-steps", "4", "--teacher-guidance", "3", "--num-images", n, "--batch-size", "4",
                        "--latency-batch", "2", "--reference-images", "64", "--cache-dir", tmp_path / "cache",
                        "--clip", EMBEDDED_CLIP, "--device", "cpu", "--out", out)
    assert code == 0, err[-3000:]
    data = json.loads((out / "metrics.json").read_text())
    rows, protocol = data["rows"], data["protocol"]
    assert [(r["model"], r["steps"]) for r in rows] == [("teacher", 4), ("lora", 1), ("lora", 2)]
    for r in rows:
        for key in ("family", "guidance", "scheduler", "fid", "kid_mean", "kid_std", "clip_score", "clip_score_x100",
                    "sec_per_image", "latency_batch_size", "speedup"):
            assert r[key] is not None, (key, r)
        assert r["num_images"] == n and r["latency_batch_size"] == 2
        assert r["fid"] >= 0 and r["sec_per_image"] > 0
        assert -1 <= r["clip_score"] <= 1 and r["clip_score_x100"] == pytest.approx(100 * r["clip_score"])
        acc = r["attribute_accuracy"]
        assert set(acc) == {"color", "shape", "background", "size", "position", "mean", "all"}
        assert all(0 <= v <= 1 for v in acc.values()) and acc["all"] <= min(acc[a] for a in acc if a != "all")
    teacher, one, two = rows
    assert (teacher["scheduler"], teacher["guidance"], teacher["speedup"]) == ("DDIMScheduler", 3.0, 1.0)
    assert (one["scheduler"], one["guidance"], one["family"]) == ("TCDScheduler", 1.0, "lora")
    assert one["speedup"] == pytest.approx(teacher["sec_per_image"] / one["sec_per_image"])
    assert one["fid"] != two["fid"]  # different samples, same reference

    # One prompt list and one seed rule for every row, recorded in the protocol.
    from fewstep.pipelines.evaluate import procedural_prompts

    prompts = (out / "prompts.txt").read_text().splitlines()
    assert prompts == procedural_prompts(n) and len(set(prompts)) > 1
    assert protocol["prompts_sha256"] == hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    assert "manual_seed(i)" in protocol["seeds"] and protocol["num_images"] == n and protocol["resolution"] == "32x32"
    assert protocol["reference"] == "procedural:renderer=1:seed=12345:n=64" and protocol["reference_images"] == 64
    assert protocol["features"].startswith("embedded:") and protocol["clip_model"] == "embedded:tiny-clip"
    assert protocol["models"]["lora"]["recipe"]["trained_steps"] == TRAINED
    assert len(list((tmp_path / "cache").glob("ref-*.safetensors"))) == 1

    report = (out / "report.md").read_text()
    for text in ("## Protocol", "| model |", "quality_vs_steps.png", "samples.png", "lora"):
        assert text in report
    for name in ("quality_vs_steps.png", "quality_vs_latency.png", "samples.png"):
        with Image.open(out / name) as im:
            im.verify()
    with Image.open(out / "samples.png") as grid:  # 3 rows of 8 samples, upscaled to >= 96 px, with labels
        assert grid.height >= 3 * 96 and grid.width >= n * 96


def test_missing_inception_weights_fail_before_generation(models, tmp_path, capsys, monkeypatch):
    base, lora = models
    out = tmp_path / "eval"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = fewstep(capsys, "eval", "--pipeline", base, "--lora", lora, "--steps", "1", "--num-images", "4",
                     "--features", "inception", "--cache-dir", tmp_path / "cache", "--out", out)
    one_clear_line(result, "weights-inception-2015-12-05-6726825d.pth")
    assert " @ " not in result[1] and not out.exists()  # no progress bar, no report: nothing was generated


def test_untrained_step_count_is_refused(models, tmp_path, capsys):
    base, lora = models
    result = fewstep(capsys, "eval", "--pipeline", base, "--lora", lora, "--steps", "1,3", "--num-images", "4",
                     "--out", tmp_path / "eval")
    one_clear_line(result, "trained for [1, 2] steps, not 3")
    assert not (tmp_path / "eval").exists()


def test_run_dir_resolves_export_lora_and_teacher(models, tmp_path):
    """--run: the export is a LoRA on model.pretrained, which is also the teacher; defaults from eval:."""
    import shutil

    import yaml

    from fewstep.pipelines.evaluate import SweepSpec, check_entries
    from fewstep.pipelines.eval_entries import EvalError, run_entries

    base, lora = models
    run = tmp_path / "runs" / "r"
    shutil.copytree(lora, run / "export")
    raw = run_dict(tmp_path, method="lcm")
    raw.update(name="r", model={"pretrained": str(base)}, student={"kind": "lora"},
               eval={"enabled": True, "steps": [2], "teacher_steps": [8, 4], "num_images": 16})
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    src = run_entries(run)
    teacher, student = src.entries
    assert (teacher.pipeline, teacher.steps, teacher.teacher) == (str(base), [4, 8], True)
    assert (student.name, student.family, student.lora, student.steps) == ("r", "lcm-lora", str(run / "export"), [2])
    assert student.recipe.scheduler == "TCDScheduler" and src.config.num_images == 16 and src.out == run / "eval"
    check_entries(src.entries, SweepSpec(num_images=16))
    alone = run_entries(run, EvalConfig(steps=[2], teacher_steps=[])).entries  # --teacher-steps ''
    assert [e.name for e in alone] == ["r"]
    with pytest.raises(EvalError, match="not 4"):
        check_entries(run_entries(run, EvalConfig(steps=[4])).entries, SweepSpec())
    with pytest.raises(EvalError, match="config.yaml missing"):
        run_entries(tmp_path)
    shutil.rmtree(run / "export")
    with pytest.raises(EvalError, match="no finished export"):
        run_entries(run)


@pytest.mark.slow
def test_train_ends_with_eval_report(tmp_path, monkeypatch, capsys):
    """eval.enabled: fewstep train exports, then evaluates the export (a teacher run: alone, DDIM)."""
    import yaml

    from fewstep.pipelines.cli import main

    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    raw = run_dict(tmp_path, steps=2, checkpoint_every=0)
    raw["eval"] = {"enabled": True, "steps": [1], "teacher_steps": [2], "num_images": 4, "batch_size": 4}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    out = tmp_path / "runs" / "t" / "eval"
    assert f"evaluation report {out / 'report.md'}" in capsys.readouterr().err
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [(r["model"], r["steps"], r["scheduler"], r["speedup"] is not None) for r in rows] == \
        [("t", 1, "DDIMScheduler", True), ("t", 2, "DDIMScheduler", True)]
    assert (out / "samples.png").is_file()


def test_eval_config_section():
    raw = run_dict(__import__("pathlib").Path("/tmp"))
    assert parse_config(raw).eval == EvalConfig()  # existing configs keep parsing, evaluation off
    raw["eval"] = {"enabled": True, "steps": [1, 2], "guidance": 1, "features": "inception"}
    cfg = parse_config(raw).eval
    assert cfg.enabled and cfg.steps == [1, 2] and cfg.guidance == 1.0 and cfg.teacher_steps == [25, 50]
    raw["eval"] = {"stepz": [1]}
    with pytest.raises(ConfigError, match="unknown key 'eval.stepz'"):
        parse_config(raw)
