"""bench/sampling_speed.py counts what it claims: K UNet evaluations for a K-step student, 2K for the
teacher with CFG (one batched call per step), whatever the batch; its wrappers leave the images
bit-identical; and its breakdown arithmetic adds up (the two decompositions of a miss are exact)."""
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewstep.pipelines.teacher import load_pipeline

BENCH = Path(__file__).resolve().parents[1] / "bench" / "sampling_speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("bench_sampling_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sampler(speed):
    return speed.Sampler(load_pipeline("tiny-sd"), speed.PRESETS["tiny-sd"], with_lora=True)


@pytest.mark.parametrize("batch", [1, 3])
def test_counts_one_evaluation_per_student_step_and_two_per_cfg_step(speed, sampler, batch):
    for steps in (1, 2, 4):
        for row, evals in ((speed.Row("s", steps, False), steps), (speed.Row("t", steps, True), 2 * steps),
                           (speed.Row("l", steps, False, lora=True), steps)):
            rec = sampler.call(row, batch, output_type="np")
            assert (rec["unet_calls"], rec["evals_per_image"]) == (steps, evals), row
            assert rec["finite"] and len(rec["images"]) == batch
            assert all(rec[p] > 0 for p in speed.PARTS), rec
            assert sum(rec[p] for p in speed.PARTS) < rec["total"]
            assert 0 < rec["cpu"]["unet"] <= rec["cpu"]["total"] <= rec["total"] * 1.05  # one thread
    assert sampler.pipe.unet is sampler.unets[False]  # the LoRA UNet was put back


def test_instrumented_pipeline_samples_the_same_images(speed, sampler):
    """The wrappers keep ``scheduler.step``'s signature: the pipeline passes the seeded generator to
    LCMScheduler's re-noising only when the signature names it, so a bare wrapper changes the images."""
    plain = load_pipeline("tiny-sd")
    scheds = speed.schedulers(plain, speed.PRESETS["tiny-sd"].student_config)
    for row in (speed.Row("s", 3, False), speed.Row("t", 2, True)):
        got = sampler.call(row, 2, output_type="np")["images"]
        plain.scheduler = scheds["teacher" if row.teacher else "student"]
        want = plain(list(speed.prompts(2)), num_inference_steps=row.steps, height=sampler.size, width=sampler.size,
                     guidance_scale=sampler.bench.guidance if row.teacher else 1.0, output_type="np",
                     generator=[torch.Generator().manual_seed(i) for i in range(2)]).images
        assert np.array_equal(got, want), row


def test_schedulers_follow_the_export_recipe_and_trailing_ddim(speed, sampler):
    student, teacher = sampler.schedulers["student"], sampler.schedulers["teacher"]
    assert type(student).__name__ == "LCMScheduler" and student.config.original_inference_steps == 10
    assert type(teacher).__name__ == "DDIMScheduler" and teacher.config.timestep_spacing == "trailing"
    teacher.set_timesteps(2)
    assert teacher.timesteps.tolist() == [999, 499]


def rep(total, evals, **parts):
    base = {**dict.fromkeys(("text", "unet", "scheduler", "vae", "postprocess"), 0.0), **parts}
    cpu = {k: v / 2 for k, v in {"total": total, **base}.items()}  # as if the process had half a core
    return {"total": total, **base, "cpu": cpu, "evals_per_image": evals, "unet_calls": evals, "finite": True}


def test_summary_parts_add_up_and_evaluations_must_agree(speed):
    reps = [rep(4.0, 2, unet=3.0, vae=0.4), rep(6.0, 2, unet=5.0, vae=0.6), rep(5.0, 2, unet=3.5, vae=0.5)]
    s = speed.summarize(reps, images=2)
    assert (s["total"], s["min"], s["max"], s["repeats"]) == (2.5, 2.0, 3.0, 3)
    assert s["unet"] == 1.75 and s["vae"] == 0.25 and math.isclose(s["rest"], 0.5)
    assert math.isclose(s["unet_per_eval"], 0.875)
    c = speed.summarize(reps, images=2, clock="cpu")
    assert (c["total"], c["unet"], c["evals"]) == (1.25, 0.875, 2) and math.isclose(c["rest"], 0.25)
    with pytest.raises(ValueError, match="differ"):
        speed.summarize(reps + [rep(5.0, 4, unet=3.0)], images=2)


def test_miss_decompositions_are_exact(speed):
    ref = speed.summarize([rep(101.0, 100, unet=100.0, text=0.5, vae=0.4)], images=1)
    row = speed.summarize([rep(2.9, 1, unet=1.6, text=0.2, vae=0.4, scheduler=0.1)], images=1)
    c = speed.compare(row, ref)
    assert c["ideal"] == 100 and math.isclose(c["speedup"], 101 / 2.9)
    assert math.isclose(c["ratio"], c["per_eval_factor"] * c["unet_share"] / c["ref_unet_share"])
    assert math.isclose(sum(c["gap"].values()), row["total"] - c["ideal_total"])
    assert math.isclose(c["gap"]["vae"], 0.4 - 0.004) and math.isclose(c["per_eval_factor"], 1 / 1.6)
    assert not c["reaches"]
    fast = speed.summarize([rep(1.2, 1, unet=1.0, text=0.1)], images=1)
    assert speed.compare(fast, ref)["reaches"]  # 101 / 1.2 / 100 = 0.84
    assert math.isclose(speed.fixed_share(row), 0.6 / 2.9)
