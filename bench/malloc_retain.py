"""A/B: training steps with and without glibc keeping freed memory (distill/memory.py), side by side.

    OMP_NUM_THREADS=1 python bench/malloc_retain.py --config configs/tiny/lcm_lora.yaml --steps 40 --pairs 3

Each pair starts two training processes at once (one thread each), one with the thresholds raised and
one without, on the same config and seed; each reports seconds per step after warm-up (median of the
logged ``sec_per_step`` from step 6 on), minor page faults per step and peak RSS. The ratio is taken
within a pair (both ran under the same load) and summarised over pairs as median [min, max].
Results: bench/results/malloc-retain/.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 5


def worker(config: str, steps: int, retain: bool, out: Path) -> None:
    from fewstep.distill.memory import retain_freed_memory
    if retain:
        assert retain_freed_memory(), "mallopt had no effect (not glibc?)"
    from fewstep.distill.loop import Trainer
    from fewstep.distill.run_config import load_config
    from fewstep.distill.runlog import read_logs
    from fewstep.pipelines.teacher import load_teacher

    cfg = load_config(config)
    cfg.output_dir, cfg.name = str(out.parent), out.stem
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.validation_every = steps, 0, 0
    cfg.train.log_every = 1
    cfg.eval.enabled = False
    trainer = Trainer(cfg, load_teacher(cfg.model))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    trainer.train()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    secs = [r["sec_per_step"] for r in read_logs(out.parent / out.stem) if r["step"] > WARMUP]
    result = {"retain": retain, "sec_per_step": statistics.median(secs), "faults_per_step": faults / steps,
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    out.write_text(json.dumps(result))


def pair(config: str, steps: int, folder: Path, index: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs, outs = [], {}
    for retain in (True, False):
        out = folder / f"pair{index}-{'on' if retain else 'off'}.json"
        outs[retain] = out
        cmd = [sys.executable, __file__, "--worker", "on" if retain else "off", "--config", config,
               "--steps", str(steps), "--out", str(out)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed:\n{err[-2000:]}")
    on, off = (json.loads(outs[r].read_text()) for r in (True, False))
    return {"on": on, "off": off, "speedup": off["sec_per_step"] / on["sec_per_step"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny" / "lcm_lora.yaml"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--worker", choices=["on", "off"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "malloc-retain"))
    args = ap.parse_args()
    if args.worker:
        return worker(args.config, args.steps, args.worker == "on", Path(args.out))
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [pair(args.config, args.steps, Path(tmp), i) for i in range(args.pairs)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    speed = [p["speedup"] for p in pairs]
    summary = {"config": args.config, "steps": args.steps, "pairs": pairs,
               "speedup_median": statistics.median(speed), "speedup_min": min(speed), "speedup_max": max(speed)}
    (out / "malloc_retain.json").write_text(json.dumps(summary, indent=1))
    lines = [f"`OMP_NUM_THREADS=1 python bench/malloc_retain.py --config {Path(args.config).relative_to(ROOT)} "
             f"--steps {args.steps} --pairs {args.pairs}`", "",
             "| pair | s/step on | s/step off | off / on | faults/step on | faults/step off | peak RSS on / off (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for i, p in enumerate(pairs):
        on, off = p["on"], p["off"]
        lines.append(f"| {i} | {on['sec_per_step']:.3f} | {off['sec_per_step']:.3f} | {p['speedup']:.3f} | "
                     f"{on['faults_per_step']:.0f} | {off['faults_per_step']:.0f} | "
                     f"{on['peak_rss_gib']:.2f} / {off['peak_rss_gib']:.2f} |")
    lines.append(f"\nsteps/s with / without: median {summary['speedup_median']:.3f} "
                 f"[{summary['speedup_min']:.3f}, {summary['speedup_max']:.3f}] over {len(pairs)} pairs")
    (out / "malloc_retain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
