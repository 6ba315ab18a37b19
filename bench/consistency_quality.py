"""Quality of the consistency-family students against the teacher at 50 DDIM steps (issue targets).

Each student is evaluated with the user-facing ``fewstep eval`` on the same held-out prompts and
seeds as the teacher sweep (procedural seed 777, image i = generator seed i), then its attribute
accuracy is divided by the teacher's at 50 DDIM steps, CFG 3, from that sweep's metrics.json:

    OMP_NUM_THREADS=1 python bench/consistency_quality.py \
        --student lcm-lora=runs/tiny-lcm-lora --student tscd-lora=runs/tiny-tscd-lora \
        --student lcm-full=runs/tiny-lcm-full --num-images 1000 --out bench/results/consistency

Writes <out>/<label>/ (the eval report of each student) and <out>/summary.json + summary.md with
the ratios for both readings of "attribute accuracy": the mean over the five attributes and the
stricter "all five right at once".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Targets of the consistency issue: steps -> minimum ratio to the teacher's accuracy.
TARGETS = {
    "lcm-lora": {4: 0.95, 2: 0.85},
    "tscd-lora": {4: 0.95, 2: 0.90, 1: 0.75},
    "lcm-full": {4: 0.97},
}
BETTER_THAN = {"tscd-lora": ("lcm-lora", (1, 2))}  # TSCD must beat LCM-LoRA at 1 and 2 steps
READINGS = ("mean", "all")


def teacher_row(metrics: Path, steps: int) -> dict:
    rows = [r for r in json.loads(metrics.read_text())["rows"] if r["family"].startswith("teacher") and
            r["steps"] == steps]
    if not rows:
        sys.exit(f"{metrics}: no teacher row at {steps} steps")
    return rows[0]


def evaluate(run: str, steps: list[int], num_images: int, out: Path) -> list[dict]:
    fewstep = Path(sys.executable).with_name("fewstep")
    cmd = [str(fewstep), "eval", "--run", run, "--teacher-steps", "", "--steps", ",".join(map(str, steps)),
           "--num-images", str(num_images), "--out", str(out)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / "metrics.json").read_text())["rows"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", action="append", required=True, metavar="KIND=RUN_DIR",
                   help=f"kind one of {sorted(TARGETS)}; repeatable")
    p.add_argument("--teacher-metrics", default="bench/results/teacher-sweep/metrics.json")
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--steps", default="1,2,4,8")
    p.add_argument("--reuse", action="store_true", help="read <out>/<kind>/metrics.json instead of evaluating")
    p.add_argument("--out", default="bench/results/consistency")
    args = p.parse_args()

    out = Path(args.out)
    teacher = teacher_row(Path(args.teacher_metrics), args.teacher_steps)
    if teacher["num_images"] != args.num_images:
        sys.exit(f"teacher metrics hold {teacher['num_images']} images, not --num-images {args.num_images}")
    results: dict[str, dict[int, dict]] = {}
    runs = {}
    for spec in args.student:
        kind, _, run = spec.partition("=")
        if kind not in TARGETS or not run:
            sys.exit(f"--student {spec!r}: expected KIND=RUN_DIR with KIND in {sorted(TARGETS)}")
        runs[kind] = run
        steps = sorted({int(s) for s in args.steps.split(",")} | set(TARGETS[kind]))
        metrics = out / kind / "metrics.json"
        rows = (json.loads(metrics.read_text())["rows"] if args.reuse and metrics.is_file()
                else evaluate(run, steps, args.num_images, out / kind))
        results[kind] = {r["steps"]: r for r in rows if not r["family"].startswith("teacher")}

    checks, lines = [], []
    t_acc = teacher["attribute_accuracy"]
    lines.append(f"Teacher: DDIM {args.teacher_steps} steps, CFG {teacher['guidance']:g}: attribute mean "
                 f"{t_acc['mean']:.3f}, all {t_acc['all']:.3f}, FID {teacher['fid']:.1f} ({args.num_images} prompts)\n")
    lines.append("| student | steps | FID | CLIP | attr. mean | ratio | attr. all | ratio | target | met (mean / all) |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, rows in results.items():
        for steps, r in sorted(rows.items()):
            acc = r["attribute_accuracy"]
            ratio = {k: acc[k] / t_acc[k] for k in READINGS}
            target = TARGETS[kind].get(steps)
            met = {k: target is None or ratio[k] >= target for k in READINGS}
            if target is not None:
                checks.append({"student": kind, "steps": steps, "target": target,
                               **{f"ratio_{k}": ratio[k] for k in READINGS}, **{f"met_{k}": met[k] for k in READINGS}})
            lines.append(f"| {kind} | {steps} | {r['fid']:.1f} | {r['clip_score']:.3f} | {acc['mean']:.3f} | "
                         f"{ratio['mean']:.3f} | {acc['all']:.3f} | {ratio['all']:.3f} | "
                         f"{'>= %.2f' % target if target else '-'} | "
                         f"{'/'.join('yes' if met[k] else 'NO' for k in READINGS) if target else '-'} |")
    for kind, (other, steps_list) in BETTER_THAN.items():
        if kind in results and other in results:
            for steps in steps_list:
                a, b = results[kind][steps]["attribute_accuracy"], results[other][steps]["attribute_accuracy"]
                checks.append({"student": kind, "steps": steps, "better_than": other,
                               **{f"met_{k}": a[k] > b[k] for k in READINGS}})
                lines.append(f"\n{kind} vs {other} at {steps} steps: mean {a['mean']:.3f} vs {b['mean']:.3f}, "
                             f"all {a['all']:.3f} vs {b['all']:.3f}")
    summary = {"teacher": {"metrics": args.teacher_metrics, "steps": args.teacher_steps,
                           "attribute_accuracy": t_acc, "fid": teacher["fid"]},
               "runs": runs, "checks": checks,
               "all_met": {k: all(c[f"met_{k}"] for c in checks) for k in READINGS}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("all targets met:", summary["all_met"])


if __name__ == "__main__":
    main()
