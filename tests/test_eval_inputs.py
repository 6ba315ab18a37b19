"""What a sweep compares and against what: trailing-spacing teacher rows that state their timesteps, the
real-images floor row, and re-scoring rows of separate reports as one paired sweep."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fewstep.distill.config import EvalConfig
from fewstep.pipelines import eval_inputs as I


def scheduler(name, **kwargs):
    import diffusers

    from fewstep.pipelines.teacher import resolve

    config = json.loads((__import__("pathlib").Path(resolve("tiny-sd")) / "scheduler" / "scheduler_config.json").read_text())
    return SimpleNamespace(scheduler=getattr(diffusers, name).from_config(config, **kwargs))


def test_teacher_rows_use_trailing_spacing_and_say_so():
    from fewstep.distill.sampling import apply_recipe
    from fewstep.pipelines.eval_entries import LEADING_NAME, build_entries
    from fewstep.pipelines.evaluate import sampler_info

    entries = build_entries("tiny-sd", EvalConfig(steps=[1], teacher_steps=[1, 2, 4]), teacher="tiny-sd",
                            leading_baseline=True)
    teacher, leading, student = entries
    assert teacher.recipe.scheduler_kwargs["timestep_spacing"] == "trailing" and teacher.family.startswith("teacher")
    assert (leading.name, leading.recipe.scheduler_kwargs["timestep_spacing"]) == (LEADING_NAME, "leading")
    pipe = scheduler("DDIMScheduler")  # the stock SD1.5 config: leading spacing, steps_offset 1
    apply_recipe(pipe, teacher.recipe)
    assert sampler_info(pipe, 1)["timesteps"] == [999] and sampler_info(pipe, 2)["timesteps"] == [999, 499]
    info = sampler_info(pipe, 4)
    assert info["timesteps"] == [999, 749, 499, 249] and info["sampler"] == "DDIM trailing [999,749,499,249]"
    apply_recipe(pipe, leading.recipe)
    assert sampler_info(pipe, 2)["timesteps"] == [501, 1]  # where a default pipeline starts: not pure noise
    lcm = sampler_info(scheduler("LCMScheduler"), 2)
    assert lcm["timestep_spacing"] is None and lcm["sampler"].startswith("LCM [")  # its own grid, no spacing claim
    assert [e.name for e in build_entries("tiny-sd", EvalConfig(steps=[1]), teacher="tiny-sd")] == ["teacher", "tiny-sd"]


def test_floor_images_depict_their_prompts_with_held_out_jitter():
    from fewstep.distill.data.procedural import ProceduralDataset
    from fewstep.eval.classifier import load_classifier, predict
    from fewstep.eval.features import DEFAULT_CLASSIFIER_DIR
    from fewstep.eval.objects import count_objects

    prompts = I.procedural_prompts(200)
    floor = I.floor_images(prompts, procedural=True)
    labels = I.prompt_labels(prompts)
    clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
    assert (predict(clf, floor) == labels).all() and (count_objects(floor) == 1).all()
    prompt_scenes = torch.stack([ProceduralDataset(I.PROMPT_SEED)[i]["image"] for i in range(200)])
    reference = torch.stack([ProceduralDataset(I.REFERENCE_SEED)[i]["image"] for i in range(200)])
    assert not (floor == prompt_scenes).all((1, 2, 3)).any()  # same captions, other jitter: held out
    assert not (floor == reference).all((1, 2, 3)).any()
    div = I.floor_diversity_images(prompts[:3], 4)
    assert div.shape == (12, 3, 32, 32) and len({bytes(x.numpy()) for x in div[:4]}) == 4  # seeds differ
    assert len(set(I.floor_images(["not a caption"] * 3, procedural=False).sum((1, 2, 3)).tolist())) == 3


def test_reports_rescored_together_match_one_sweep(tmp_path):
    """Two reports (a teacher sweep, a student alone) re-scored by compare_reports give the student the
    paired difference a joint sweep gives it; a report with other prompts is refused."""
    from fewstep.distill.data.procedural import ProceduralDataset
    from fewstep.eval.metrics import compute_reference_stats, extract_features, load_feature_net
    from fewstep.eval.report import write_report
    from fewstep.eval.scoring import Bootstrap, Reference, RowSamples, score, versus
    from fewstep.pipelines.eval_compare import compare_reports
    from fewstep.pipelines.evaluate import save_per_image
    from fewstep.pipelines.errors import EvalError

    n, net = 150, load_feature_net("embedded")
    key = "procedural:test:seed=12345:n=600"
    stats = compute_reference_stats((ProceduralDataset(12345)[i]["image"] for i in range(600)), net, tmp_path / "c", key)
    prompts = I.procedural_prompts(n)
    teacher = torch.stack([I.real_image(p, i) for i, p in enumerate(prompts)])
    student = (teacher.int() + 70).clamp(0, 255).to(torch.uint8)  # a brighter "student"
    rows_samples = {name: RowSamples(extract_features(x, net), clip=np.linspace(0, 1, n) + (name == "s"))
                    for name, x in (("t", teacher), ("s", student))}
    protocol = {"num_images": n, "prompts_sha256": "p", "seeds": "i", "reference": key, "features": net.identity,
                "bootstrap_resamples": 100, "diversity": "none"}
    for name, fam, folder in (("t", "teacher (DDIM, trailing)", "a"), ("s", "student", "b")):
        row = {"model": name, "family": fam, "steps": 4, "sec_per_image": 1.0}
        save_per_image(tmp_path / folder / "per_image", [row], [rows_samples[name]], None, None)
        write_report(tmp_path / folder, [row], protocol)
    out = compare_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "joint", cache_dir=tmp_path / "c")
    rows = json.loads(out["metrics_json"].read_text())["rows"]
    ref = Reference.build(stats, n)
    boot = Bootstrap.create(n, n, 0, num=100)
    expect = versus(score(rows_samples["s"], ref, boot), score(rows_samples["t"], ref, boot))
    got = rows[1]["vs_teacher"]
    assert set(got) == set(expect) and "vs_teacher" not in rows[0]
    assert all(got[m] == pytest.approx(expect[m]) for m in expect)
    assert rows[1]["vs_teacher"]["clip_score"]["diff"] == pytest.approx(1.0)
    assert rows[1]["vs_teacher"]["fid"]["lo"] > 0  # the brighter student is resolved as worse
    write_report(tmp_path / "b", [{"model": "s", "steps": 4}], {**protocol, "prompts_sha256": "other"})
    with pytest.raises(EvalError, match="prompts_sha256"):
        compare_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "joint2", cache_dir=tmp_path / "c")
