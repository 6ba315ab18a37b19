"""Attribute accuracy of a pipeline on the embedded domain, judged by the shipped classifier.

Prompts are the captions of held-out procedural scenes (seed 777 by default, never used for
training); image i uses generator seed i, so every model and step count sees the same noise.

    OMP_NUM_THREADS=1 python bench/attribute_quality.py --pipeline assets/tiny-sd --steps 50 \
        --guidance 3 --num-images 1000 --out bench/results/teacher.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewstep.distill.data.procedural import ProceduralDataset  # noqa: E402
from fewstep.distill.sampling import Recipe, apply_recipe, generate, save_grid  # noqa: E402
from fewstep.eval.classifier import attribute_accuracy, load_classifier  # noqa: E402
from fewstep.pipelines.teacher import ASSETS, load_pipeline  # noqa: E402


def held_out(num: int, seed: int = 777) -> tuple[list[str], torch.Tensor]:
    ds = ProceduralDataset(seed)
    items = [ds[i] for i in range(num)]
    return [it["caption"] for it in items], torch.stack([it["labels"] for it in items])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="tiny-sd")
    p.add_argument("--lora", help="LoRA folder to load on top of the pipeline")
    p.add_argument("--scheduler", default="DDIMScheduler")
    p.add_argument("--scheduler-kwargs", default="{}", help="JSON overrides, e.g. '{\"timestep_spacing\": \"trailing\"}'")
    p.add_argument("--steps", type=int, nargs="+", default=[50])
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--out", required=True, help="JSON file for the results (a PNG grid goes beside it)")
    args = p.parse_args()

    pipe = load_pipeline(args.pipeline)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    clf = load_classifier(ASSETS / "classifier")
    prompts, labels = held_out(args.num_images, args.seed)
    rows = []
    for steps in args.steps:
        for g in args.guidance:
            apply_recipe(pipe, Recipe(args.scheduler, json.loads(args.scheduler_kwargs), steps, g))
            t0 = time.perf_counter()
            imgs = generate(pipe, prompts, steps, g, seed=0)
            secs = time.perf_counter() - t0
            acc = attribute_accuracy(clf, torch.from_numpy(imgs).permute(0, 3, 1, 2), labels)
            row = {"pipeline": str(args.pipeline), "lora": args.lora, "scheduler": args.scheduler, "steps": steps,
                   "guidance": g, "num_images": args.num_images, "sec_per_image": secs / len(prompts),
                   "accuracy": {k: round(v, 4) for k, v in acc.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            out = Path(args.out)
            save_grid(imgs[:32], out.with_name(f"{out.stem}-s{steps}-g{g:g}.png"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"held_out_seed": args.seed, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
