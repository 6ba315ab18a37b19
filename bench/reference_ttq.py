"""Time to quality of fewstep's LCM-LoRA and diffusers' script (issue 13, target 1): the wall time from
launch until a run's 2-step "all" first reaches 0.95x the teacher's, read from the checkpoints a
``bench/reference_lcm.py --checkpoint-every N`` run kept on both sides.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reference_ttq.py \
        --results bench/results/reference-lcm-compiled/seed3 --num-images 1000

Each checkpoint becomes a LoRA folder (fewstep: ``fewstep export RUN --step N``; the script's:
``reference_lcm.convert_reference_lora`` on its ``checkpoint-N``) and is judged by ``fewstep eval`` at 2
steps on the first ``--num-images`` held-out prompts (the two sides in two processes, one thread each).
Step 0 is the untrained student (``untrained``: the teacher with the export's LCM recipe), judged on
each side and timed at the side's first progress-bar update.
The time of step N is the run's own progress-bar timestamp (seconds since its process started, so it
includes loading and any compile: ``results.json`` of the training run, written while both ran side by
side). The teacher's "all" is its 50-step DDIM row in ``bench/results/teacher-sweep`` (same prompts and
seeds). Writes ``ttq.json``, ``ttq.md`` and ``ttq.png`` into ``--results``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from reference_lcm import _first, convert_reference_lora  # noqa: E402  (_first: when a progress list shows a step)

EVAL_STEPS = 2  # the criterion's step count
ALSO = 1  # judged too, for the curve: on the embedded teacher 1 step is where training shows


def first_reaching(curve: list[dict], threshold: float) -> dict | None:
    """The first checkpoint (in step order) whose "all" is >= ``threshold``."""
    return next((c for c in sorted(curve, key=lambda c: c["step"]) if c["all"] >= threshold), None)


def lora_folders(work: Path, side: str, steps: list[int], fewstep_run: Path, env: dict) -> dict[int, Path]:
    folders = {}
    for k in steps:
        dest = work / "ttq" / side / f"step-{k}"
        if side == "fewstep":
            if dest.exists():
                shutil.rmtree(dest)
            subprocess.run([str(Path(sys.executable).with_name("fewstep")), "export", str(fewstep_run), "--step",
                            str(k), "--out", str(dest)], check=True, env=env, cwd=REPO)
        else:
            convert_reference_lora(work / "diffusers-reference" / f"checkpoint-{k}", fewstep_run / "export", dest)
        folders[k] = dest
    return folders


def untrained(first: Path, dest: Path) -> Path:
    """The student before its first step: the LoRA folder ``first`` with every up-projection (lora_B) at
    zero, as peft initialises it, so the model is the teacher sampled with the export's LCM recipe."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(first, dest)
    path = dest / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    up = [k for k in tensors if ".lora_B." in k or ".lora.up." in k]
    if not up:
        raise SystemExit(f"reference_ttq: {path}: no lora_B / lora.up tensors to zero")
    save_file({k: torch.zeros_like(v) if k in up else v for k, v in tensors.items()}, str(path), metadata=meta)
    return dest


def eval_script(teacher: Path, folders: dict[int, Path], out: Path, num_images: int) -> list[list[str]]:
    fewstep = str(Path(sys.executable).with_name("fewstep"))
    return [[fewstep, "eval", "--pipeline", str(teacher), "--lora", str(folder), "--steps", f"{ALSO},{EVAL_STEPS}",
             "--num-images", str(num_images), "--no-floor", "--out", str(out / f"step-{k}")]
            for k, folder in folders.items()]


def run_side(cmds: list[list[str]], log: Path, env: dict) -> subprocess.Popen:
    """One process that runs ``cmds`` one after another (stops at the first failure)."""
    script = " && ".join(shlex.join(cmd) for cmd in cmds)
    return subprocess.Popen(["bash", "-c", script], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=REPO)


def read_curve(out: Path, steps: list[int], progress: list) -> list[dict]:
    """``out``/step-K/metrics.json for each K (0: the untrained student, timed at the bar's first update)."""
    curve = []
    for k in [0, *steps]:
        rows = json.loads((out / f"step-{k}" / "metrics.json").read_text())["rows"]
        r = next(r for r in rows if r["steps"] == EVAL_STEPS)
        one = next(r for r in rows if r["steps"] == ALSO)
        curve.append({"step": k, "seconds": _first(progress, k) if k else progress[0][0],
                      "all": r["attribute_accuracy"]["all"], "all_ci": r["ci"]["attribute_accuracy.all"],
                      "fid_infinity": r["fid_infinity"], f"all@{ALSO}": one["attribute_accuracy"]["all"],
                      f"fid_infinity@{ALSO}": one["fid_infinity"]})
    return curve


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax1) = plt.subplots(1, 2, figsize=(11, 4.0))
    for side, color in (("reference", "tab:orange"), ("fewstep", "tab:blue")):
        c = result["curves"][side]
        x = [p["seconds"] / 60 for p in c]
        ax.plot(x, [p["all"] for p in c], "o-", color=color, label=side)
        ax.fill_between(x, [p["all_ci"][0] for p in c], [p["all_ci"][1] for p in c], color=color, alpha=0.15)
        ax1.plot(x, [p[f"all@{ALSO}"] for p in c], "o-", color=color, label=side)
    ax.axhline(result["threshold"], color="gray", ls="--", label=f"{result['fraction']}x teacher")
    for a, k in ((ax, EVAL_STEPS), (ax1, ALSO)):
        a.set_xlabel("wall time since launch (min), both runs side by side")
        a.set_ylabel(f'"all" at {k} step{"s" if k > 1 else ""}')
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(r: dict) -> str:
    lines = [f"# Time to quality ({EVAL_STEPS}-step \"all\" >= {r['fraction']}x teacher = {r['threshold']:.4f})", "",
             f"Command: `{r['command']}`", "", f"Training run: `{r['training_command']}`", "",
             f"{r['num_images']} prompts; intervals 95 % bootstrap over prompts (fewstep eval).", "",
             "| side | first checkpoint reaching it | wall time since launch | \"all\" there |",
             "| --- | --- | --- | --- |"]
    for side in ("reference", "fewstep"):
        hit = r["reached"][side]
        if hit:
            lo, hi = hit["all_ci"]
            lines.append(f"| {side} | step {hit['step']} | {hit['seconds']:.0f} s | {hit['all']:.3f} [{lo:.3f}, {hi:.3f}] |")
        else:
            lines.append(f"| {side} | none | - | - |")
    ratio = r.get("ratio_fewstep_over_reference")
    lines += ["", f"Time to quality, fewstep / reference: **{ratio:.2f}x**." if ratio else
              "Time to quality, fewstep / reference: - (a side never reached it).", "",
              f"| step | reference: s since launch | reference: all@{EVAL_STEPS} (all@{ALSO}) | "
              f"fewstep: s since launch | fewstep: all@{EVAL_STEPS} (all@{ALSO}) |", "| --- " * 5 + "|"]
    ref, fs = ({c["step"]: c for c in r["curves"][s]} for s in ("reference", "fewstep"))
    one = f"all@{ALSO}"
    for k in sorted(set(ref) | set(fs)):
        a, b = ref.get(k), fs.get(k)
        lines.append(f"| {k} | {a['seconds']:.0f} | {a['all']:.3f} ({a[one]:.3f}) | {b['seconds']:.0f} | "
                     f"{b['all']:.3f} ({b[one]:.3f}) |" if a and b else f"| {k} | - | - | - | - |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, help="--out of a bench/reference_lcm.py --checkpoint-every run")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--fraction", type=float, default=0.95, help="of the teacher's 50-step \"all\"")
    args = p.parse_args()
    if args.num_images < 1 or not 0 < args.fraction <= 1:
        raise SystemExit(f"reference_ttq: --num-images must be >= 1 and --fraction in (0, 1], "
                         f"got {args.num_images} and {args.fraction}")
    results_dir = (REPO / args.results).resolve()
    train = json.loads((results_dir / "results.json").read_text())
    if not train.get("checkpoint_every"):
        raise SystemExit(f"reference_ttq: {results_dir / 'results.json'}: the run kept no checkpoints "
                         "(run bench/reference_lcm.py with --checkpoint-every N)")
    sweep = json.loads((REPO / "bench/results/teacher-sweep/metrics.json").read_text())
    if sweep["protocol"]["num_images"] < args.num_images:
        raise SystemExit(f"reference_ttq: --num-images {args.num_images}: the teacher sweep has only "
                         f"{sweep['protocol']['num_images']} images")
    teacher_all = next(r for r in sweep["rows"] if r["model"] == "teacher" and r["steps"] == 50)
    teacher_all = teacher_all["attribute_accuracy"]["all"]
    work, teacher = Path(train["work"]), Path(train["teacher"])
    fewstep_run = work / "fewstep-lcm-lora"
    every = train["checkpoint_every"]
    steps = list(range(every, train["steps"] + 1, every))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs, outs = {}, {}
    for side in ("reference", "fewstep"):
        folders = lora_folders(work, side, steps, fewstep_run, env)
        if side == "reference":  # the same untrained student on both sides (the converted folders carry fewstep's recipe)
            zero = untrained(folders[steps[0]], work / "ttq" / "untrained")
        outs[side] = work / "ttq" / f"eval-{side}"
        folders = {0: zero, **folders}
        procs[side] = run_side(eval_script(teacher, folders, outs[side], args.num_images), work / f"ttq-{side}.log", env)
    for side, proc in procs.items():
        if proc.wait():
            raise SystemExit(f"reference_ttq: the {side} evals failed; see {work / f'ttq-{side}.log'}")
    threshold = args.fraction * teacher_all
    curves = {side: read_curve(outs[side], steps, train["speed"][side]["progress"]) for side in outs}
    reached = {side: first_reaching(c, threshold) for side, c in curves.items()}
    ratio = (reached["fewstep"]["seconds"] / reached["reference"]["seconds"]
             if reached["fewstep"] and reached["reference"] else None)
    result = {"command": " ".join(["OMP_NUM_THREADS=1 .venv/bin/python bench/reference_ttq.py", *sys.argv[1:]]),
              "training_command": train["command"], "num_images": args.num_images, "eval_steps": EVAL_STEPS,
              "fraction": args.fraction, "teacher_all_50_steps": teacher_all, "threshold": threshold,
              "checkpoint_every": every, "curves": curves, "reached": reached, "ratio_fewstep_over_reference": ratio}
    (results_dir / "ttq.json").write_text(json.dumps(result, indent=2) + "\n")
    (results_dir / "ttq.md").write_text(markdown(result))
    plot(result, results_dir / "ttq.png")
    print((results_dir / "ttq.md").read_text())


if __name__ == "__main__":
    main()
