"""Does a full LCM student's embedded guidance scale still act like the teacher's CFG scale?

For each guidance g the student (its recipe's scheduler and steps) and the teacher (DDIM, CFG g)
generate the same prompts with the same seeds. Reported per g: attribute accuracy of both, and
the response to g relative to the lowest g, as mean absolute pixel change (0..1 scale):

    response_student(g) = mean |S(g) - S(g_0)|,   response_teacher(g) = mean |T(g) - T(g_0)|

A working knob has a student response of the same order as the teacher's; a student that ignores
its guidance input has a response near 0.

    OMP_NUM_THREADS=1 python bench/guidance_knob.py --student runs/tiny-lcm-full/export \
        --guidance 1.5,3,6 --num-images 256 --out bench/results/guidance_knob.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.attribute_quality import held_out  # noqa: E402
from fewstep.distill.sampling import Recipe, apply_recipe, generate  # noqa: E402
from fewstep.eval.classifier import attribute_accuracy, load_classifier  # noqa: E402
from fewstep.pipelines.teacher import ASSETS, load_pipeline  # noqa: E402


def images(pipe, recipe: Recipe, prompts: list[str], guidance: float) -> torch.Tensor:
    """[N, 3, H, W] uint8, image i from generator seed i."""
    apply_recipe(pipe, recipe)
    return torch.from_numpy(generate(pipe, prompts, recipe.steps, guidance, seed=0)).permute(0, 3, 1, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True, help="full-pipeline export with a guidance embedding")
    p.add_argument("--teacher", default="tiny-sd")
    p.add_argument("--teacher-steps", type=int, default=25)
    p.add_argument("--guidance", default="1.5,3,6")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--out", default="bench/results/guidance_knob.json")
    args = p.parse_args()

    student = load_pipeline(args.student)
    if not student.unet.config.time_cond_proj_dim:
        sys.exit(f"{args.student}: the UNet has no guidance embedding (time_cond_proj_dim)")
    recipe = Recipe(**json.loads((Path(args.student) / "fewstep_recipe.json").read_text()))
    teacher = load_pipeline(args.teacher)
    t_recipe = Recipe("DDIMScheduler", {}, args.teacher_steps, 3.0)
    prompts, labels = held_out(args.num_images)
    clf = load_classifier(ASSETS / "classifier")
    rows, base = [], {}
    for g in [float(x) for x in args.guidance.split(",")]:
        row = {"guidance": g}
        for name, pipe, rec in (("student", student, recipe), ("teacher", teacher, t_recipe)):
            imgs = images(pipe, rec, prompts, g)
            base.setdefault(name, imgs)
            row[name] = {"attribute_accuracy": attribute_accuracy(clf, imgs, labels),
                         "response": (imgs.float() - base[name].float()).abs().mean().item() / 255}
        row["response_ratio"] = (row["student"]["response"] / row["teacher"]["response"]
                                 if row["teacher"]["response"] > 0 else None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"student": args.student, "student_recipe": recipe.__dict__, "teacher": args.teacher,
                               "teacher_steps": args.teacher_steps, "num_images": args.num_images,
                               "prompts": "procedural seed 777", "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
