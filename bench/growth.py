"""Growth: LCM-LoRA step time and memory vs batch and resolution on the SD1.5 architecture, and
``fewstep eval`` time and memory vs the number of images (issue 13, target 5).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/growth.py --out bench/results/growth

Writes <out>/growth.json and <out>/growth.md and prints the tables. ``--parts steps,eval`` reruns
some parts only (the others are kept from an existing growth.json).

1. **Training step** (``steps``): bench/lcm_memory.py's worker, one subprocess per point: SD1.5's UNet
   (random weights, fp32) with a frozen tiny text encoder and a one- or two-block VAE (its latents resized
   above 32x32), configs/sd15/lcm_lora.yaml's method and student (rank 64), the real ``Trainer``,
   procedural data; ``--warmup`` + ``--iterations`` steps, fewstep's malloc thresholds on (as
   ``fewstep train`` runs). Batch grid ``--batches`` at ``--latent`` (32: 256 px), resolution grid
   ``--latents`` at batch 1. Per point: seconds per step (mean of the timed steps; wall and process
   CPU, the latter robust to other jobs), and the peak RSS of the timed steps above the baseline
   (imports and the frozen parts). A point whose predicted memory (a line through the measured
   batches, else a generous formula) does not fit in MemAvailable, or whose predicted time would
   overrun ``--budget-s``, is not run (or, if one timed step fits, runs with one); its prediction is
   written instead. Batch 1 at every resolution runs first, then the batches in order.
2. **Eval** (``eval``): ``fewstep eval`` of the embedded teacher (DDIM, 4 steps, CFG 3; default
   metrics, bootstrap and diversity settings; reference statistics of 5,000 procedural scenes,
   computed once by a warm-up run and cached) at ``--eval-images``, each in a subprocess whose peak
   RSS comes from ``wait4`` (bench/sd15_smoke.py's ``run_child``, with its memory watchdog).

Growth: the least-squares slope of log(cost) on log(size) (cost ~ size^k), and each doubling's own
ratio, where a cliff shows; for eval also a line a + b N (fixed cost and cost per image).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
MACHINE_GIB = 24  # this CPU machine's memory


# ---- arithmetic (tests/test_growth_bench.py) -----------------------------------------------------
def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """k of the least-squares fit log y = log a + k log x: cost grows as size^k."""
    return line_fit([math.log(x) for x in xs], [math.log(y) for y in ys])[1]


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (xs, ys)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def step_ratios(xs: list[float], ys: list[float]) -> list[float]:
    """Each step's own exponent log(y_i+1 / y_i) / log(x_i+1 / x_i): constant for a power law, a jump
    at a cliff."""
    return [math.log(ys[i + 1] / ys[i]) / math.log(xs[i + 1] / xs[i]) for i in range(len(xs) - 1)]


def largest_fitting(intercept: float, slope: float, limit: float) -> float:
    """The size at which the line intercept + slope x reaches ``limit`` (memory: the cliff)."""
    return (limit - intercept) / slope


# ---- 1. training steps ---------------------------------------------------------------------------
def step_point(batch: int, latent: int, args, done: list[dict]) -> dict:
    """Measure one point, unless its predicted memory does not fit or its predicted time would take the
    grid past ``--budget-s`` (then it runs with one timed step if that fits the budget)."""
    from lcm_memory import need_bytes, spawn
    from score_cost import mem_available

    spec = {"setup": "sd15", "variant": "lcm", "batch": batch, "latent": latent, "warmup": args.warmup,
            "iterations": args.iterations, "retain": True, "min_free_gb": args.min_free_gb}
    same = sorted((r for r in done if "skipped" not in r and r["latent"] == latent), key=lambda r: r["batch"])
    if len(same) >= 2:  # a line through the measured batches at this resolution
        a, b = line_fit([r["batch"] for r in same], [r["max_net_peak"] for r in same])
        need = a + b * batch
        k = loglog_slope([r["batch"] for r in same], [r["wall_s"] for r in same])
        per = same[-1]["wall_s"] * (batch / same[-1]["batch"]) ** k
    else:
        need, per = need_bytes("sd15", "lcm", batch, latent), None
    free = mem_available()
    left = args.budget_s - sum(r.get("process_s", 0) for r in done)
    if need + args.min_free_gb * GIB > free:
        return {**spec, "skipped": "memory", "predicted_net_gib": round(need / GIB, 1),
                "free_gib": round(free / GIB, 1), "predicted_s": per and round(per, 1)}
    if per is not None and per * (args.warmup + args.iterations) > left:
        if per * (args.warmup + 1) > left:
            return {**spec, "skipped": "time", "predicted_net_gib": round(need / GIB, 1), "predicted_s": round(per, 1)}
        spec["iterations"] = 1
    return spawn(spec, args.worker_timeout)


def measure_steps(args) -> dict:
    from score_cost import mem_available

    points, free = [], mem_available()
    # batch 1 at every resolution first, then the larger batches (the budget cuts the largest first)
    grid = [(1, args.latent)] * (1 in args.batches) + [(1, lat) for lat in args.latents if lat != args.latent]
    grid += [(b, args.latent) for b in args.batches if b != 1]
    for batch, latent in grid:
        r = step_point(batch, latent, args, points)
        points.append(r)
        print(f"step b{batch} latent {latent}: " + (f"not run ({r['skipped']})" if "skipped" in r else
              f"{r['wall_s']:.1f} s ({r['cpu_s']:.1f} CPU s), {r['max_net_peak'] / GIB:.2f} GiB, "
              f"{r['iterations']} timed"), flush=True)
    return {"latent": args.latent, "free_at_start_gib": round(free / GIB, 1), "points": points,
            **step_growth(points, args.latent, free)}


def step_growth(points: list[dict], latent: int, free: int | None = None) -> dict:
    out = {}
    by_batch = sorted((r for r in points if "skipped" not in r and r["latent"] == latent), key=lambda r: r["batch"])
    if len(by_batch) >= 2:
        xs = [r["batch"] for r in by_batch]
        a, b = line_fit(xs, [r["max_net_peak"] for r in by_batch])
        base = max(r["base_rss"] for r in by_batch)
        k = loglog_slope(xs, [r["wall_s"] for r in by_batch])
        out["batch"] = {"k_wall": round(k, 3), "k_cpu": round(loglog_slope(xs, [r["cpu_s"] for r in by_batch]), 3),
                        "k_memory": round(loglog_slope(xs, [r["max_net_peak"] for r in by_batch]), 3),
                        "doubling_k_wall": [round(v, 3) for v in step_ratios(xs, [r["wall_s"] for r in by_batch])],
                        "memory_line_gib": [round(a / GIB, 3), round(b / GIB, 3)],
                        "s_per_sample": [round(r["wall_s"] / r["batch"], 2) for r in by_batch],
                        "base_gib": round(base / GIB, 2),
                        "largest_batch_24gib": math.floor(largest_fitting(a + base, b, MACHINE_GIB * GIB)),
                        "predicted_64": {"net_gib": round((a + 64 * b) / GIB, 1),
                                         "s": round(by_batch[-1]["wall_s"] * (64 / xs[-1]) ** k)}}
        if free:
            out["batch"]["largest_batch_free"] = math.floor(largest_fitting(a + base, b, free))
    by_res = sorted((r for r in points if "skipped" not in r and r["batch"] == 1), key=lambda r: r["latent"])
    if len(by_res) >= 2:
        xs = [r["latent"] * 8 for r in by_res]
        out["resolution"] = {"k_wall_side": round(loglog_slope(xs, [r["wall_s"] for r in by_res]), 3),
                             "k_cpu_side": round(loglog_slope(xs, [r["cpu_s"] for r in by_res]), 3),
                             "k_memory_side": round(loglog_slope(xs, [r["max_net_peak"] for r in by_res]), 3),
                             "doubling_k_wall_side": [round(v, 3) for v in
                                                      step_ratios(xs, [r["wall_s"] for r in by_res])]}
    return out


# ---- 2. eval -------------------------------------------------------------------------------------
def eval_command(n: int, work: Path, args) -> list[str]:
    return [str(Path(sys.executable).parent / "fewstep"), "eval", "--pipeline", "tiny-sd", "--scheduler",
            "DDIMScheduler", "--steps", "4", "--guidance", "3", "--num-images", str(n), "--reference-images",
            str(args.reference_images), "--cache-dir", str(work / "cache"), "--out", str(work / f"eval-{n}")]


def measure_eval(args) -> dict:
    from sd15_smoke import run_child

    work = args.work / "eval"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    warm = run_child(eval_command(args.eval_images[0], work, args), env, work / "warmup.log", args.min_free_gb,
                     args.worker_timeout)  # fills the reference-statistics cache
    print(f"eval warm-up ({args.eval_images[0]} images, reference statistics computed): {warm}", flush=True)
    points = []
    for n in args.eval_images:
        shutil.rmtree(work / f"eval-{n}", ignore_errors=True)
        r = run_child(eval_command(n, work, args), env, work / f"eval-{n}.log", args.min_free_gb, args.worker_timeout)
        points.append({"images": n, **r})
        print(f"eval {n} images: {r}", flush=True)
    ok = [p for p in points if p["rc"] == 0]
    out = {"warmup": warm, "points": points, "command": " ".join(eval_command(0, Path("WORK"), args)[1:])}
    if len(ok) >= 2:
        xs = [p["images"] for p in ok]
        for key in ("wall_s", "cpu_s", "peak_rss_gib"):
            a, b = line_fit(xs, [p[key] for p in ok])
            out[key] = {"k": round(loglog_slope(xs, [p[key] for p in ok]), 3),
                        "doubling_k": [round(v, 3) for v in step_ratios(xs, [p[key] for p in ok])],
                        "fixed": round(a, 3), "per_1000_images": round(1000 * b, 3)}
    return out


# ---- report --------------------------------------------------------------------------------------
def step_table(steps: dict) -> str:
    lines = ["| batch | px | s / step (CPU s) | s / sample | peak above baseline (GiB) | timed steps | status |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in steps["points"]:
        px = r["latent"] * 8
        if "skipped" in r:
            pred = f"predicted {r['predicted_net_gib']} GiB" + (f", {r['predicted_s']:.0f} s/step"
                                                                 if r.get("predicted_s") else "")
            why = {"memory": f"does not fit ({r.get('free_gib')} GiB free)", "time": "over the time budget"}.get(
                r["skipped"], r["skipped"])
            lines.append(f"| {r['batch']} | {px} | - | - | - | 0 | not run: {why}; {pred} |")
            continue
        lines.append(f"| {r['batch']} | {px} | {r['wall_s']:.1f} ({r['cpu_s']:.1f}) | {r['wall_s'] / r['batch']:.1f} | "
                     f"{r['max_net_peak'] / GIB:.2f} | {r['iterations']} | ok |")
    return "\n".join(lines)


def eval_table(ev: dict) -> str:
    lines = ["| images | wall s (CPU s) | peak RSS (GiB) |", "| --- | --- | --- |"]
    for p in ev["points"]:
        lines.append(f"| {p['images']} | {p['wall_s']} ({p['cpu_s']}) | {p['peak_rss_gib']} |"
                     + ("" if p["rc"] == 0 else f" failed: {p['stopped']} |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "growth")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fewstep-growth"), help="eval reports and cache")
    ap.add_argument("--parts", default="steps,eval")
    ap.add_argument("--batches", default="1,2,4,8,16", help="batch grid at --latent")
    ap.add_argument("--latent", type=int, default=32, help="latent side of the batch grid (32: 256 px)")
    ap.add_argument("--latents", default="16,32,48", help="latent sides of the resolution grid, batch 1")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=2300, help="step points whose predicted time would take "
                                                                  "the grid past this are not run")
    ap.add_argument("--eval-images", default="64,128,256,512,1024,2048")
    ap.add_argument("--reference-images", type=int, default=5000)
    ap.add_argument("--min-free-gb", type=float, default=2.0)
    ap.add_argument("--worker-timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    for name in ("batches", "latents", "eval_images"):
        setattr(args, name, [int(x) for x in getattr(args, name).split(",") if x])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "growth.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    t0 = time.time()
    if "steps" in args.parts:
        results["steps"] = measure_steps(args)
    if "eval" in args.parts:
        results["eval"] = measure_eval(args)
    results["command"] = "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/growth.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    results["seconds"] = round(time.time() - t0)
    path.write_text(json.dumps(results, indent=1) + "\n")
    md = [f"# Growth (issue 13, target 5)\n\n`{results['command']}`\n"]
    if "steps" in results:
        md += ["## LCM-LoRA step, SD1.5 architecture\n", step_table(results["steps"]),
               "\n```json\n" + json.dumps({k: v for k, v in results["steps"].items() if k != "points"}, indent=1)
               + "\n```\n"]
    if "eval" in results:
        md += ["## fewstep eval, embedded teacher, 4 DDIM steps\n", eval_table(results["eval"]),
               "\n```json\n" + json.dumps({k: v for k, v in results["eval"].items()
                                          if k not in ("points", "warmup")}, indent=1) + "\n```\n"]
    (args.out / "growth.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
